"""Upstreams: which server serves a model, one pooled HTTP client, retries and failover."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from keyplane.gateway.meter import Meter
from keyplane.gateway.transport import (
    AnswerTooLarge,
    ClosedBeforeAnswer,
    ConnectFailed,
    InvalidAnswer,
    PoolBusy,
    ReadTimedOut,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)

log = logging.getLogger("keyplane.upstreams")

RETRY_STATUSES = frozenset({500, 502, 503, 504})
# The upstream refused keyplane's own credentials (its provider key): not the client's doing, so
# never passed on as the client's 401 (with part of the provider key in OpenAI's message); the
# next upstream is tried, as for an outage.
REFUSED_STATUSES = frozenset({401, 403})
MODEL_LIST_TTL_S = 60.0
# Headers a client may send that the upstream must not see: credentials (the upstream's key is
# ours to set; api-key and x-api-key are Azure's and Anthropic's), claims about the client's
# address, and what describes this hop only (the body sent is the JSON keyplane read: identity).
_DROP_REQUEST = frozenset(
    {
        b"authorization", b"api-key", b"x-api-key", b"proxy-authorization", b"cookie",
        b"openai-organization", b"openai-project", b"x-forwarded-for", b"x-forwarded-host",
        b"x-forwarded-proto", b"forwarded", b"x-real-ip", b"host", b"content-length",
        b"content-encoding", b"connection", b"keep-alive", b"transfer-encoding", b"accept-encoding",
        b"te", b"upgrade", b"expect", b"proxy-connection", b"trailer",
    }
)  # fmt: skip


@dataclass
class Upstream:
    name: str
    base_url: str
    api_key: str | None = field(repr=False)
    models: frozenset[str]  # empty = whatever the upstream's /v1/models lists
    _listed: frozenset[str] | None = field(default=None, repr=False)
    _listed_at: float = field(default=0.0, repr=False)
    auth_headers: list[tuple[bytes, bytes]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Sent with every request to this upstream: built once.
        self.auth_headers = (
            [(b"authorization", f"Bearer {self.api_key}".encode())] if self.api_key else []
        )

    @property
    def wildcard(self) -> bool:
        return not self.models

    def fresh_list(self, now: float) -> frozenset[str] | None:
        """The model list read from the upstream, if read less than MODEL_LIST_TTL_S ago."""
        if self._listed is not None and now - self._listed_at < MODEL_LIST_TTL_S:
            return self._listed
        return None


_IDENTITY = (b"accept-encoding", b"identity")


_NOTHING: frozenset[bytes] = frozenset()


def _forwarded(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's headers the upstream may see (keyplane's own credentials are added after)."""
    named = _connection_named(headers)
    out = [(k, v) for k, v in headers if k not in _DROP_REQUEST and k not in named]
    out.append(_IDENTITY)
    return out


def _connection_named(headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The fields the client's ``Connection`` header names: they describe its hop to keyplane
    only, and are not forwarded (RFC 9110 7.6.1)."""
    named = [v for k, v in headers if k == b"connection"]
    if not named:
        return _NOTHING
    return frozenset(t.strip().lower() for v in named for t in v.split(b","))


class UpstreamUnavailable(Exception):
    """No upstream serving the model answered (connection failures or timeouts on every try)."""

    def __init__(
        self, message: str, *, timed_out: bool = False, reached: bool = False, partial: bytes = b"",
        busy: bool = False, refused: bool = False, too_large: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.timed_out = timed_out
        self.busy = busy  # every connection to it was busy: nothing sent, worth a retry soon
        self.refused = refused  # it refused keyplane's credentials: a retry cannot help
        self.reached = reached or timed_out or too_large  # it may have processed (and billed) it
        self.partial = partial  # what had arrived of a successful answer that broke off
        # It answered more than the client reads whole (max_answer_bytes): not read, dropped.
        self.too_large = too_large


class UpstreamRouter:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        client: UpstreamClient,
        *,
        retries: int = 2,
        backoff_s: float = 0.05,
        meter: Meter | None = None,
    ) -> None:
        self.upstreams = list(upstreams)
        self.meter = meter if meter is not None else Meter()  # failures, by upstream and reason
        self.client = client
        self._retries = retries
        self._backoff_s = backoff_s

    async def candidates(self, model: str) -> list[Upstream]:
        """Returns the upstreams that serve ``model``, in configured order."""
        out = []
        now = time.monotonic()
        for up in self.upstreams:
            if up.wildcard:
                listed = up.fresh_list(now)
                if listed is None:  # (read it again: no await while it is fresh)
                    listed = await self._listed(up)
                if listed is None or model in listed:
                    out.append(up)
            elif model in up.models:
                out.append(up)
        return out

    async def models(self) -> list[str]:
        names: set[str] = set()
        for up in self.upstreams:
            names |= (await self._listed(up) or set()) if up.wildcard else up.models
        return sorted(names)

    async def _listed(self, up: Upstream) -> frozenset[str] | None:
        """The upstream's own model list, cached; None when it cannot be read (then it may serve any)."""
        now = time.monotonic()
        fresh = up.fresh_list(now)
        if fresh is not None:
            return fresh
        try:
            resp = await self.client.request("GET", f"{up.base_url}/models", up.auth_headers)
            try:
                content = await resp.read()
            finally:
                await resp.aclose()
            data = orjson.loads(content)["data"] if resp.status == 200 else None
            listed = frozenset(m["id"] for m in data) if isinstance(data, list) else None
        except (UpstreamError, orjson.JSONDecodeError, KeyError, TypeError):
            listed = None
        if listed is None:
            log.warning("cannot list models of upstream %s", up.name)
            return up._listed
        up._listed, up._listed_at = listed, now
        return listed

    async def send(
        self,
        upstreams: Sequence[Upstream],
        path: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        stream: bool,
    ) -> tuple[UpstreamResponse, bytes | None, Upstream]:
        """Sends the request to the first upstream that answers; returns the open response,
        unless ``stream`` its body (read, so that a broken body can be retried like a 5xx), and
        the upstream that answered.

        Connection errors and 5xx answers move on to the next try (backing off) and the next
        upstream; a 5xx with a Retry-After, and a refusal of keyplane's credentials (401, 403),
        straight to the next upstream. The caller must close the returned response. Raises
        UpstreamUnavailable."""
        out_headers = _forwarded(headers)
        last: UpstreamResponse | None = None
        last_up: Upstream | None = None
        refused: tuple[str, int] | None = None  # the last upstream that refused our credentials
        attempt = 0
        failed = self.meter.upstream_failed
        for up in upstreams:
            for _ in range(self._retries + 1):
                if attempt:
                    await asyncio.sleep(
                        self._backoff_s * (2 ** min(attempt, 6)) * (0.5 + random.random())
                    )
                attempt += 1
                if last is not None:
                    await last.aclose()
                    last = None
                try:
                    resp = await self.client.request(
                        "POST", up.base_url + path, out_headers + up.auth_headers, body
                    )
                except ConnectFailed as exc:
                    log.warning("upstream %s unreachable: %s", up.name, exc)
                    failed(up.name, "connect")
                    continue
                except PoolBusy as busy:
                    log.warning("upstream %s: %s", up.name, busy)
                    failed(up.name, "pool_busy")
                    raise _busy(up.name) from None
                except ReadTimedOut:
                    # The request reached the upstream and may be costing money: do not repeat it.
                    failed(up.name, "timeout")
                    raise UpstreamUnavailable(
                        f"The upstream '{up.name}' timed out.", timed_out=True
                    ) from None
                except ClosedBeforeAnswer as closed:  # likewise: it may have been received
                    # (its own name: compiled, ``exc`` above is typed ConnectFailed)
                    log.warning("upstream %s: %s", up.name, closed)
                    invalid = isinstance(closed, InvalidAnswer)
                    failed(up.name, "invalid_answer" if invalid else "closed")
                    what = (
                        "answered with something that is not HTTP"
                        if invalid
                        else "closed the connection before answering"
                    )
                    raise UpstreamUnavailable(
                        f"The upstream '{up.name}' {what}.", reached=True
                    ) from None
                if resp.status in REFUSED_STATUSES:
                    await resp.aclose()
                    self._note_refused(up, resp.status)
                    refused = (up.name, resp.status)
                    break
                if resp.status in RETRY_STATUSES:
                    failed(up.name, f"status_{resp.status}")
                    last, last_up = resp, up
                    if any(name == b"retry-after" for name, _ in resp.headers):
                        break  # it asked for time: the next upstream, or this answer as it is
                    continue
                return resp, None if stream else await self.read(resp, up), up
        if last is not None and last_up is not None:
            return last, None if stream else await self.read(last, last_up), last_up
        if refused is not None:
            raise _refused(*refused)
        raise UpstreamUnavailable("No upstream serving this model could be reached.")

    def named(self, name: str) -> Upstream | None:
        for up in self.upstreams:
            if up.name == name:
                return up
        return None

    async def fetch(
        self, up: Upstream, method: str, target: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[UpstreamResponse, bytes]:
        """One request about something the upstream stores (a stored response read, deleted or
        cancelled), sent once: a DELETE or a cancel may have been done even if no answer came.
        Returns the response (closed) and its body. Raises UpstreamUnavailable, as ``send``."""
        try:
            resp = await self.client.request(
                method, up.base_url + target, _forwarded(headers) + up.auth_headers
            )
        except ReadTimedOut:
            self.meter.upstream_failed(up.name, "timeout")
            raise UpstreamUnavailable(f"The upstream '{up.name}' timed out.") from None
        except PoolBusy:
            self.meter.upstream_failed(up.name, "pool_busy")
            raise _busy(up.name) from None
        except UpstreamError as exc:
            self.meter.upstream_failed(up.name, "connect")
            log.warning("upstream %s unreachable: %s", up.name, exc)
            raise UpstreamUnavailable(f"The upstream '{up.name}' could not be reached.") from None
        try:
            content = await self.read(resp, up)
        finally:
            await resp.aclose()
        if resp.status in REFUSED_STATUSES:
            self._note_refused(up, resp.status)
            raise _refused(up.name, resp.status)
        return resp, content

    def _note_refused(self, up: Upstream, status: int) -> None:
        log.error(
            "upstream %s refused keyplane's credentials (HTTP %d): check its api_key",
            up.name, status,
        )  # fmt: skip
        self.meter.upstream_failed(up.name, "refused_credentials")

    async def read(self, resp: UpstreamResponse, up: Upstream) -> bytes:
        """The whole body of ``resp``, an answer of ``up``. Raises UpstreamUnavailable (``resp``
        closed): it broke off, or it was larger than the client reads whole (``too_large``)."""
        try:
            return await resp.read()
        except UpstreamError as exc:
            await resp.aclose()
            if isinstance(exc, AnswerTooLarge):
                log.warning(
                    "upstream %s answered HTTP %d with more than %d bytes: not read "
                    "(KEYPLANE_MAX_ANSWER_BYTES)", up.name, resp.status, exc.limit,
                )  # fmt: skip
                self.meter.upstream_failed(up.name, "answer_too_large")
                raise UpstreamUnavailable(
                    f"The upstream's answer was larger than {exc.limit} bytes "
                    "(KEYPLANE_MAX_ANSWER_BYTES).",
                    too_large=True,
                ) from None
            raise UpstreamUnavailable(
                "The upstream's answer broke off before it was complete.",
                reached=True,
                partial=exc.partial if resp.status == 200 else b"",
            ) from None


def _busy(name: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"Every connection to the upstream '{name}' is busy; retry shortly.", busy=True
    )


def _refused(name: str, status: int) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"The upstream '{name}' refused keyplane's credentials for it (HTTP {status}): the "
        "operator must check its provider API key. Your own key is fine.",
        refused=True,
    )
