"""Webhooks (BRIEF C6, C7): an organization's endpoints get a signed POST for the events they
subscribe to (a spend threshold crossed, a leaked key revoked, an auto-recharge that failed, a
credit balance fallen below its low-balance alert, a credit purchase refunded or disputed, a
usage tier reached), through an outbox as emails are: each event is stored once per endpoint
(a dedupe key), delivered by the gateways' background work with retries, never lost to a restart.

A delivery is ``{"id", "object": "event", "type", "created", "data"}``, signed as Stripe signs:
``Keyplane-Signature: t=<unix time>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>`` with the
endpoint's secret (``whsec_…``, shown once; kept sealed, as keyplane must read it to sign). A 2xx
answer delivers it; anything else, or no answer in 10 s, is tried again after 1, 5, 30 minutes,
2, 5, 10 hours, then daily, for three days."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from keyplane.clock import Clock
from keyplane.errors import InvalidRequest, NotFound
from keyplane.ids import new_id, ordered_id
from keyplane.text import refuse_control_characters

log = logging.getLogger("keyplane.webhooks")

EVENT_TYPES = {
    "spend_alert.triggered": "spend this month crossed a notification threshold",
    "api_key.leaked": "a key found in public was revoked",
    "billing.auto_recharge_failed": "an auto-recharge payment was declined",
    "billing.auto_recharge_disabled": "auto-recharge was turned off after failed payments",
    "billing.low_balance": "the credit balance fell below the low-balance alert's amount",
    "billing.payment_refunded": "a credit purchase was refunded (or its refund failed)",
    "billing.payment_disputed": "a credit purchase was disputed, or its dispute closed",
    "organization.tier_promoted": "the organization reached a higher usage tier",
    "api_key.new_network": "a key was used from a network it was never used from",
    "api_key.spend_spike": "a key spent far faster than its usual hour",
}
MAX_ENDPOINTS = 16
MAX_URL = 2000
RETRIES_S = (60, 300, 1800, 7200, 18000, 36000, 86400, 86400, 86400)  # then it gives up
LEASE_S = 60
TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    org_id: str
    url: str
    events: tuple[str, ...]
    description: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    endpoint_id: str
    url: str
    secret: str
    event_type: str
    body: str  # the event, as JSON
    attempts: int


DeliveryStatus = Literal["queued", "retrying", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What became of one event sent to one endpoint (its body and the secret left out)."""

    id: str
    endpoint_id: str
    event_type: str
    created_at: int
    attempts: int
    delivered_at: int | None
    next_attempt_at: int | None  # None once delivered or given up
    last_error: str | None

    @property
    def status(self) -> DeliveryStatus:
        if self.delivered_at is not None:
            return "delivered"
        if self.next_attempt_at is None:
            return "failed"  # (given up after the last retry)
        return "retrying" if self.attempts else "queued"


class WebhookStore(Protocol):
    def add_endpoint(self, endpoint: WebhookEndpoint, secret: str) -> None: ...

    def endpoints(self, org_id: str) -> Sequence[WebhookEndpoint]: ...

    def delete_endpoint(self, org_id: str, endpoint_id: str) -> bool:
        """Removes it, and its deliveries not made yet."""
        ...

    def enqueue(self, org_id: str, dedupe_key: str, event_type: str, body: str, at: int) -> int:
        """Stores a delivery of ``body`` for each of the organization's endpoints subscribed to
        ``event_type``, unless one with this dedupe key exists for it; returns how many."""
        ...

    def claim_due(self, now: int, limit: int, lease_s: int) -> Sequence[Delivery]: ...

    def recent_deliveries(
        self, org_id: str, per_endpoint: int
    ) -> Mapping[str, Sequence[DeliveryReport]]:
        """The newest ``per_endpoint`` deliveries of each of the organization's endpoints, newest
        first, by endpoint id (an endpoint with none is left out)."""
        ...

    def delivered(self, delivery_id: str, at: int, status: int) -> None: ...

    def failed(self, delivery_id: str, at: int, error: str, retry_at: int | None) -> None:
        """Counts a failed attempt; ``retry_at`` None: given up."""
        ...


# Queues an event for an organization's webhooks: (org_id, type, data, dedupe key) → how many.
Publish = Callable[[str, str, Mapping[str, Any], str], int]


def publish_nowhere(org_id: str, event_type: str, data: Mapping[str, Any], dedupe: str) -> int:
    return 0


_ERRNO = re.compile(r"^\[Errno -?\d+\] ")


def failure_text(exc: OSError | TimeoutError) -> str:
    """Why a delivery got no answer, as the webhooks page shows it: in words, not as Python's
    exception ("gaierror: [Errno -2] …")."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_S:g} s"
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror or exc})"
    text = _ERRNO.sub("", exc.strerror or str(exc)) or type(exc).__name__
    return text if text.startswith("refused: ") else f"could not connect: {text}"


# POST ``body`` to ``url`` with ``headers``; returns the status, or raises OSError (no answer).
Poster = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def check_url(url: str, *, allow_private: bool) -> str:
    """Refuses what can never be delivered; names that resolve to private addresses are caught
    when delivering (the answer may change), literal ones and local names here already."""
    bad = InvalidRequest("A webhook URL is an http:// or https:// address.", param="url")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # (a port that is no number raises ValueError)
    except ValueError:
        raise bad from None
    if len(url) > MAX_URL:
        raise InvalidRequest(f"A webhook URL has at most {MAX_URL} characters.", param="url")
    if parts.scheme not in ("https", "http") or not host:
        raise bad
    if parts.username or parts.password:
        raise InvalidRequest("A webhook URL carries no user name or password.", param="url")
    if not allow_private:
        try:
            public = public_host(host)
        except ValueError:
            raise InvalidRequest(f"{host} is not a valid host name.", param="url") from None
        if not public:
            raise InvalidRequest(
                f"{host} is not a public address: webhooks are not delivered to this machine or "
                "private networks (the operator may allow it).",
                param="url",
            )
    return url


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # (deprecated, but some stacks still route it)
# Names that never lead to the public internet: RFC 6761 (localhost), 6762 (local: mDNS), 8375
# (home.arpa), ICANN's internal, and the localdomain of many /etc/hosts.
_LOCAL_SUFFIXES = ("localhost", "local", "internal", "localdomain", "home.arpa")


def is_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A public address, including the IPv4 one an IPv6 address may wrap (NAT64, 6to4, Teredo,
    IPv4-mapped, IPv4-compatible): Python counts 64:ff9b::7f00:1 and ::7f00:1 as global, and a
    NAT64 gateway takes the first to 127.0.0.1."""
    if not addr.is_global:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if inner is None and (addr in _NAT64 or addr in _IPV4_COMPATIBLE):
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None and not inner.is_global:
            return False
    return True


def normalize_host(host: str) -> str:
    """``host`` as the resolver looks it up: lower case, international names in their ASCII
    (IDNA) form, as ``getaddrinfo`` encodes them (so ``ｌｏｃａｌｈｏｓｔ`` is ``localhost``),
    without the trailing dot of a fully qualified name (``localhost.`` is ``localhost``).

    Raises ValueError for what is no host name (an empty label, say)."""
    if host.startswith("[") or ":" in host:  # an IPv6 literal (with its brackets or without)
        return host.strip("[]").lower()
    try:
        name = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"not a host name: {host!r}") from None
    name = name.removesuffix(".")
    if not name or "" in name.split("."):
        raise ValueError(f"not a host name: {host!r}")
    return name


def public_host(host: str) -> bool:
    """Whether ``host`` (a URL's, as ``urlsplit`` gives it) may be public: False for a literal
    address that is not (in every form an HTTP client or the resolver reads as one: 127.1,
    2130706433, 0x7f000001, 0, [::ffff:127.0.0.1]) and for local names (localhost, *.localhost,
    *.local, *.internal…, and single-label names, which the resolver completes with the
    machine's own search domains). A public-looking name must still resolve to public addresses
    only, which only delivery can check. Raises ValueError for what is no host name."""
    name = normalize_host(host)
    try:
        return is_public(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:  # the shorthand forms an HTTP client may read as an address: 127.1, 2130706433, 0x7f.1
        return is_public(ipaddress.ip_address(socket.inet_aton(name)))
    except OSError:
        pass
    if "." not in name:
        return False
    return not any(name == s or name.endswith("." + s) for s in _LOCAL_SUFFIXES)


class Webhooks:
    def __init__(self, store: WebhookStore, clock: Clock, *, allow_private: bool = False) -> None:
        self._store = store
        self._clock = clock
        self._allow_private = allow_private

    def create(
        self, org_id: str, url: str, events: Sequence[str], description: str = ""
    ) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its signing secret (shown once). Raises InvalidRequest."""
        # (urlsplit drops tabs and newlines before checking: the URL kept would still hold them)
        refuse_control_characters(url, "A webhook URL", "url")
        check_url(url, allow_private=self._allow_private)
        unknown = sorted(set(events) - set(EVENT_TYPES))
        if not events or unknown:
            raise InvalidRequest(
                f"Unknown event types {unknown}: choose from {sorted(EVENT_TYPES)}."
                if unknown
                else "Subscribe to at least one event type.",
                param="events",
            )
        if len(description) > 200:
            raise InvalidRequest("A description has at most 200 characters.", param="description")
        refuse_control_characters(description, "A description", "description")
        if len(self._store.endpoints(org_id)) >= MAX_ENDPOINTS:
            raise InvalidRequest(f"An organization has at most {MAX_ENDPOINTS} webhooks.")
        endpoint = WebhookEndpoint(
            id=new_id("we_"), org_id=org_id, url=url, events=tuple(sorted(set(events))),
            description=description, created_at=int(self._clock.now()),
        )  # fmt: skip
        secret = "whsec_" + secrets.token_urlsafe(32)
        self._store.add_endpoint(endpoint, secret)
        return endpoint, secret

    def endpoints(self, org_id: str) -> Sequence[WebhookEndpoint]:
        return self._store.endpoints(org_id)

    def recent_deliveries(
        self, org_id: str, per_endpoint: int = 5
    ) -> Mapping[str, Sequence[DeliveryReport]]:
        """Each endpoint's newest deliveries, newest first (see ``WebhookStore``)."""
        return self._store.recent_deliveries(org_id, per_endpoint)

    def delete(self, org_id: str, endpoint_id: str) -> WebhookEndpoint:
        found = next((e for e in self._store.endpoints(org_id) if e.id == endpoint_id), None)
        if found is None or not self._store.delete_endpoint(org_id, endpoint_id):
            raise NotFound(f"No webhook '{endpoint_id}'.", param="webhook_id")
        return found

    def publish(self, org_id: str, event_type: str, data: Mapping[str, Any], dedupe: str) -> int:
        """Queues the event for the organization's subscribed endpoints, once per ``dedupe``.
        Blocking; raises StoreUnavailable."""
        assert event_type in EVENT_TYPES, event_type
        now = int(self._clock.now())
        event = {"id": ordered_id("evt_"), "object": "event", "type": event_type,
                 "created": now, "organization_id": org_id, "data": dict(data)}  # fmt: skip
        return self._store.enqueue(org_id, dedupe, event_type, json.dumps(event), now)


class WebhookDispatcher:
    def __init__(
        self, store: WebhookStore, post: Poster, clock: Clock, *, batch_size: int = 20
    ) -> None:
        self._store = store
        self._post = post
        self._clock = clock
        self._batch_size = batch_size

    async def run_once(self) -> int:
        """Delivers the due events (concurrently, each within TIMEOUT_S); returns how many were
        delivered. Raises StoreUnavailable."""
        now = int(self._clock.now())
        due = await asyncio.to_thread(self._store.claim_due, now, self._batch_size, LEASE_S)
        results = await asyncio.gather(*(self._deliver(d) for d in due))
        return sum(results)

    async def _deliver(self, d: Delivery) -> int:
        body = d.body.encode()
        now = int(self._clock.now())
        headers = {
            "content-type": "application/json",
            "user-agent": "keyplane-webhooks/1",
            "keyplane-signature": sign(d.secret, now, body),
            "keyplane-event-type": d.event_type,
        }
        error: str
        try:
            async with asyncio.timeout(TIMEOUT_S):
                status = await self._post(d.url, body, headers)
        except (OSError, TimeoutError) as exc:
            error = failure_text(exc)[:500]
        else:
            if 200 <= status < 300:
                await asyncio.to_thread(self._store.delivered, d.id, int(self._clock.now()), status)
                return 1
            error = f"HTTP {status}"
        retry_at = now + RETRIES_S[d.attempts] if d.attempts < len(RETRIES_S) else None
        # (the host only: a path may carry the receiver's own secret, as Slack's URLs do)
        log.warning("webhook %s to %s failed (%s)", d.id, urlsplit(d.url).hostname, error)
        await asyncio.to_thread(self._store.failed, d.id, int(self._clock.now()), error, retry_at)
        return 0
