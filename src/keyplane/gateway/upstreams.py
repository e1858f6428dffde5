"""Upstreams: which server serves a model, one pooled HTTP client, retries and failover."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import orjson

log = logging.getLogger("keyplane.upstreams")

RETRY_STATUSES = frozenset({500, 502, 503, 504})
MODEL_LIST_TTL_S = 60.0
# Headers a client may send that the upstream must not see (its key is ours to set) or that
# describe this hop only.
_DROP_REQUEST = frozenset(
    {
        b"authorization", b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding",
        b"accept-encoding", b"openai-organization", b"openai-project", b"x-forwarded-for", b"cookie",
        b"proxy-authorization", b"te", b"upgrade", b"expect",
    }
)  # fmt: skip


@dataclass
class Upstream:
    name: str
    base_url: str
    api_key: str | None
    models: frozenset[str]  # empty = whatever the upstream's /v1/models lists
    _listed: frozenset[str] | None = field(default=None, repr=False)
    _listed_at: float = field(default=0.0, repr=False)

    @property
    def wildcard(self) -> bool:
        return not self.models


class UpstreamUnavailable(Exception):
    """No upstream serving the model answered (connection failures or timeouts on every try)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class UpstreamRouter:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        client: httpx.AsyncClient,
        *,
        retries: int = 2,
        backoff_s: float = 0.05,
    ) -> None:
        self.upstreams = list(upstreams)
        self.client = client
        self._retries = retries
        self._backoff_s = backoff_s

    async def candidates(self, model: str) -> list[Upstream]:
        """Returns the upstreams that serve ``model``, in configured order."""
        out = []
        for up in self.upstreams:
            if up.wildcard:
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
        if up._listed is not None and now - up._listed_at < MODEL_LIST_TTL_S:
            return up._listed
        try:
            resp = await self.client.get(f"{up.base_url}/models", headers=_auth(up), timeout=5.0)
            data = orjson.loads(resp.content)["data"] if resp.status_code == 200 else None
            listed = frozenset(m["id"] for m in data) if isinstance(data, list) else None
        except (httpx.HTTPError, orjson.JSONDecodeError, KeyError, TypeError):
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
    ) -> httpx.Response:
        """Sends the request to the first upstream that answers; returns the open response.

        Connection errors and 5xx answers move on to the next try (backing off) and the next
        upstream; the caller must close the returned response. Raises UpstreamUnavailable."""
        out_headers = [(k, v) for k, v in headers if k not in _DROP_REQUEST]
        out_headers.append((b"accept-encoding", b"identity"))
        last: httpx.Response | None = None
        timed_out = False
        attempt = 0
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
                req = self.client.build_request(
                    "POST", up.base_url + path, content=body, headers=out_headers + _auth_raw(up)
                )
                try:
                    resp = await self.client.send(req, stream=True)
                except (
                    httpx.ConnectError,
                    httpx.ConnectTimeout,
                    httpx.PoolTimeout,
                    httpx.RemoteProtocolError,
                ) as exc:
                    log.warning("upstream %s unreachable: %s", up.name, type(exc).__name__)
                    continue
                except httpx.TimeoutException:
                    # The request reached the upstream and may be costing money: do not repeat it.
                    raise UpstreamUnavailable(
                        f"The upstream '{up.name}' timed out.", timed_out=True
                    ) from None
                if resp.status_code in RETRY_STATUSES:
                    last = resp
                    continue
                if not stream:
                    await resp.aread()
                return resp
        if last is not None:
            if not stream:
                await last.aread()
            return last
        raise UpstreamUnavailable(
            "No upstream serving this model could be reached.", timed_out=timed_out
        )


def _auth(up: Upstream) -> dict[str, str]:
    return {"authorization": f"Bearer {up.api_key}"} if up.api_key else {}


def _auth_raw(up: Upstream) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {up.api_key}".encode())] if up.api_key else []
