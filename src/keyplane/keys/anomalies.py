"""Anomaly alerts (BRIEF C7): a key used from a network it was never used from, and a key spending
far faster than it usually does. Each is emailed to the organization's Owners, written to the
audit log and sent to the webhooks subscribed to it, once (dedupe keys).

The gateway counts each key's client addresses and hourly spend as its settlements are stored
(``gateway/meter.py``, off the request path); every minute this watcher adds them to the database
(``key_networks``, ``key_spend_hours``: sums across every gateway process) and looks:

- **new network**: an address outside every /24 (IPv4) or /48 (IPv6) the key was used from before
  (a key's first network is its baseline, not an alert): each is audited and sent to webhooks,
  and emailed at most once a key a day.
- **spend spike**: this hour's spend of a key is at least ``SPIKE_FACTOR`` times its average hour
  over the week before, and at least ``SPIKE_FLOOR``, for a key with a day of history or more.

(A burst of failed authentications from one address is throttled and counted, not emailed: its
keys belong to nobody, see ``keys/authenticator.py`` and ``keyplane_errors_total``.)"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from keyplane.audit.models import Actor, ActorType
from keyplane.audit.service import AuditService
from keyplane.clock import Clock
from keyplane.keys.format import KeyKind
from keyplane.keys.links import key_page
from keyplane.keys.models import ApiKey
from keyplane.keys.ports import KeyStore
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish, publish_nowhere

SPIKE_FACTOR = 10
SPIKE_FLOOR = 5_000_000  # $5 in an hour
BASELINE_HOURS = 7 * 24
HISTORY_HOURS = 24  # a key needs this much history before its spend can spike
WATCHER = Actor(ActorType.SYSTEM, "anomaly detection")

Addresses = Mapping[tuple[str, str, str], None]  # (org, key, address)
Spend = Mapping[tuple[str, str, int], int]  # (org, key, hour) → micro-dollars


class ActivityStore(Protocol):
    def add_networks(
        self, seen: Sequence[tuple[str, str, str]], at: int
    ) -> list[tuple[str, str, str]]:
        """Records (org, key, network) rows; returns those that were new for a key that had
        another network already (a key's first network is not news)."""
        ...

    def add_spend(self, spent: Mapping[tuple[str, str, int], int]) -> None:
        """Adds to each (org, key, hour)'s spend."""
        ...

    def spend_history(self, key_id: str, since_hour: int) -> Mapping[int, int]:
        """The key's spend per hour from ``since_hour`` on."""
        ...

    def first_hour(self, key_id: str) -> int | None: ...

    def forget_spend_before(self, hour: int) -> None: ...


def network_of(address: str) -> str | None:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return None
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


class AnomalyWatcher:
    def __init__(
        self,
        store: ActivityStore,
        keys: KeyStore,
        audit: AuditService,
        outbox: Outbox,
        clock: Clock,
        *,
        owner_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        public_url: str,
        publish: Publish = publish_nowhere,
    ) -> None:
        self._store = store
        self._keys = keys
        self._audit = audit
        self._outbox = outbox
        self._clock = clock
        self._owner_emails = owner_emails
        self._org_name = org_name
        self._public_url = public_url.rstrip("/")
        self._publish = publish
        self._pruned_at = 0

    def check(self, addresses: Addresses, spend: Spend) -> int:
        """Records the activity and alerts on what is new; returns how many alerts. Blocking
        (database I/O); raises StoreUnavailable."""
        now = int(self._clock.now())
        seen = sorted(
            {(org, key, net) for org, key, ip in addresses if (net := network_of(ip)) is not None}
        )
        news: dict[str, list[str]] = {}
        for _, key_id, network in self._store.add_networks(seen, now):
            news.setdefault(key_id, []).append(network)
        alerts = sum(self._alert_networks(k, nets, addresses, now) for k, nets in news.items())
        if spend:
            self._store.add_spend(spend)
            hour = now // 3600
            for org_id, key_id in sorted({(o, k) for o, k, h in spend if h == hour}):
                alerts += self._check_spend(org_id, key_id, hour, now)
        if now // 3600 - self._pruned_at > 24:
            self._store.forget_spend_before(now // 3600 - BASELINE_HOURS - 1)
            self._pruned_at = now // 3600
        return alerts

    def _alert_networks(
        self, key_id: str, networks: list[str], addresses: Addresses, now: int
    ) -> int:
        """Each new network is audited and sent to webhooks; the Owners get one email a key a
        day (a key that many people use, an app that ships it, would send one per network)."""
        key = self._keys.get(key_id)
        if key is None:
            return 0
        for network in networks:
            address = next(
                ip for _, k, ip in addresses if k == key_id and network_of(ip) == network
            )
            what = f"used from {address} ({network}), where it was never used before"
            self._notify(
                key, "api_key.new_network", {"address": address, "network": network}, what, now,
                dedupe=f"new-network:{key_id}:{network}",
                email_dedupe=f"new-network:{key_id}:{now // 86400}", always_audit=True,
            )  # fmt: skip
        return len(networks)

    def _check_spend(self, org_id: str, key_id: str, hour: int, now: int) -> int:
        first = self._store.first_hour(key_id)
        if first is None or hour - first < HISTORY_HOURS:
            return 0
        history = self._store.spend_history(key_id, hour - BASELINE_HOURS)
        current = history.get(hour, 0)
        before = sum(v for h, v in history.items() if h < hour)
        hours = min(BASELINE_HOURS, hour - first)
        baseline = before / hours
        if current < SPIKE_FLOOR or current < SPIKE_FACTOR * baseline:
            return 0
        key = self._keys.get(key_id)
        if key is None:
            return 0
        what = (
            f"spent ${current / 1e6:,.2f} this hour, {current / max(baseline, 1):,.0f} times its "
            f"average hour over the last {hours // 24} days (${baseline / 1e6:,.2f})"
        )
        dedupe = f"spend-spike:{key_id}:{hour}"
        self._notify(
            key, "api_key.spend_spike",
            {"hour_start": hour * 3600, "spend_micro_usd": current,
             "average_hour_micro_usd": round(baseline)}, what, now,
            dedupe=dedupe, email_dedupe=dedupe,
        )  # fmt: skip
        return 1

    def _notify(
        self, key: ApiKey, event: str, data: dict[str, object], what: str, now: int, *,
        dedupe: str, email_dedupe: str, always_audit: bool = False,
    ) -> None:  # fmt: skip
        """The webhook event (once per ``dedupe``), the Owners' email (once per
        ``email_dedupe``) and the audit entry (with the email, or ``always_audit``)."""
        details = {"api_key_id": key.id, "name": key.name, "redacted_value": key.redacted_value,
                   "project_id": key.project_id, **data}  # fmt: skip
        self._publish(key.org_id, event, details, dedupe)
        recipients = list(self._owner_emails(key.org_id))
        emailed = not recipients or self._email(key, what, email_dedupe, recipients, now)
        if emailed or always_audit:
            self._audit.notice(  # (a key's use noticed: no change to write it with)
                key.org_id, WATCHER, event, target_id=key.id, project_id=key.project_id,
                details={"data": data, "reason": what},
            )  # fmt: skip

    def _email(
        self, key: ApiKey, what: str, dedupe: str, recipients: Sequence[str], now: int
    ) -> bool:
        """Queues the Owners' email (plain text and HTML) once per ``dedupe``. Its links open the
        key's Revoke page in the dashboard (API keys, or Admin keys for an admin key) and a
        project key's project usage, in ``key.org_id``."""
        org = self._org_name(key.org_id)
        subject = f"[keyplane] Unusual use of the API key {key.name!r}"
        revoke_url = key_page(self._public_url, key, "revoke")
        usage_url = None
        if key.project_id is not None:
            usage_url = f"{self._public_url}/usage?project={key.project_id}&org={key.org_id}"
        admin = key.kind is KeyKind.ADMIN
        listing = "Admin keys" if admin else "API keys"
        # (an admin key spends nothing: what it did is in the audit log)
        check = "the audit log for changes you do not recognize" if admin else "the usage page"
        text = (
            f"The API key {key.name!r} ({key.redacted_value}, {key.id}) of "
            f"{org} was {what}.\n\n"
            "If that was not you or your apps, revoke the key now (keyplane keys revoke "
            f"{key.id}, or {listing} in the dashboard) and check {check}. More of the "
            "same today is in the audit log, not emailed again.\n"
            f"\nRevoke the key: {revoke_url}\n"
        )
        if usage_url is not None:
            text += f"Usage of its project: {usage_url}\n"
        page = render_html(
            "key_anomaly.html", subject=subject, org=org, key_name=repr(key.name),
            redacted=key.redacted_value, key_id=key.id, what=what, revoke_url=revoke_url,
            usage_url=usage_url, listing=listing, check=check,
        )  # fmt: skip
        return self._outbox.enqueue(dedupe, recipients, subject, text, page, now=now)
