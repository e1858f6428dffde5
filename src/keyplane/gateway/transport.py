"""Talking HTTP to upstreams: one small interface, two implementations.

- ``AiohttpClient``: production. One aiohttp pool, used directly: profiling showed httpx's
  request/response objects (and before that its pool) taking most of the gateway's CPU
  (bench/RESULTS.md).
- ``HttpxClient``: wraps any ``httpx`` transport, so tests can put the simulator
  (``httpx.ASGITransport``) or a ``MockTransport`` behind the gateway without sockets.

Both raise only this module's errors, which the router's retry policy is written against.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence

import aiohttp
import httpx

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers: they describe one connection, never forwarded either way.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}
)


class UpstreamError(Exception):
    """The exchange with an upstream failed."""


class ConnectFailed(UpstreamError):
    """The request could not be delivered (refused, reset, closed before an answer): safe to retry."""


class ReadTimedOut(UpstreamError):
    """No answer in time: the upstream may be working on the request (and costing money)."""


class StreamBroken(UpstreamError):
    """The answer's body broke off (connection lost or timed out mid-body)."""


class UpstreamResponse(ABC):
    status: int
    headers: Headers  # lower-case names, hop-by-hop headers removed

    @abstractmethod
    async def read(self) -> bytes:
        """The whole body. Raises StreamBroken."""

    @abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Raises StreamBroken."""

    @abstractmethod
    async def aclose(self) -> None:
        """Gives the connection back (or drops it when the body was not read to the end)."""


class UpstreamClient(ABC):
    @abstractmethod
    async def request(
        self, method: str, url: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        """Sends the request and returns once the status and headers arrived.

        Raises ConnectFailed or ReadTimedOut."""

    @abstractmethod
    async def aclose(self) -> None: ...


def _clean(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower not in HOP_BY_HOP:
            out.append((lower, value))
    return out


class AiohttpClient(UpstreamClient):
    def __init__(
        self, *, max_connections: int, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession belongs to the event loop that first uses it.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # an upstream's cookies are none of ours
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def request(
        self, method: str, url: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        str_headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in headers
            if k.lower() not in HOP_BY_HOP
        ]
        try:
            resp = await self._get_session().request(
                method, url, headers=str_headers, data=body, allow_redirects=False
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectFailed("connect timed out") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ReadTimedOut("timed out waiting for the upstream") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpResponse(UpstreamResponse):
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = _clean(resp.raw_headers)

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._resp.release()


class HttpxClient(UpstreamClient):
    """Any httpx transport behind the gateway (tests: the simulator in-process, MockTransport)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self._client = httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        )

    async def request(
        self, method: str, url: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        req = self._client.build_request(method, url, content=body, headers=headers)
        try:
            resp = await self._client.send(req, stream=True)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise ConnectFailed(type(exc).__name__) from exc
            raise ReadTimedOut("timed out waiting for the upstream") from exc
        except httpx.HTTPError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return _HttpxResponse(resp)

    async def aclose(self) -> None:
        await self._client.aclose()


class _HttpxResponse(UpstreamResponse):
    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers = _clean(resp.headers.raw)

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.HTTPError as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._resp.aclose()
