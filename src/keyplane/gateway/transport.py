"""The upstream connection pool: aiohttp under httpx's interface.

Profiling showed httpx's own pool (httpcore) taking most of the gateway's CPU, growing with
concurrency (bench/RESULTS.md). Plugging aiohttp in as an httpx transport keeps one interface for
the router — and lets tests keep injecting ``httpx.ASGITransport`` or ``MockTransport`` — while
production requests go through aiohttp's much cheaper pool. Errors are mapped to httpx's classes,
which the router's retry policy is written against.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}
)


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession belongs to the event loop that first uses it.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # an upstream's cookies are none of ours
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _HOP_BY_HOP
        ]
        body = await request.aread()
        try:
            resp = await self._get_session().request(
                request.method, str(request.url), headers=headers, data=body or None,
                timeout=timeout, allow_redirects=False,
            )  # fmt: skip
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout("connect timed out", request=request) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout("timed out waiting for the upstream", request=request) from exc
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,
        ) as exc:
            raise httpx.RemoteProtocolError(
                str(exc) or type(exc).__name__, request=request
            ) from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(
                str(exc) or type(exc).__name__, request=request
            ) from exc
        raw = [(k, v) for k, v in resp.raw_headers if k.lower() not in _HOP_BY_HOP]
        return httpx.Response(
            resp.status, headers=raw, stream=_Body(resp, request), request=request
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Body(httpx.AsyncByteStream):
    def __init__(self, resp: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._resp = resp
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(
                "timed out reading the upstream", request=self._request
            ) from exc
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise httpx.RemoteProtocolError(
                str(exc) or type(exc).__name__, request=self._request
            ) from exc

    async def aclose(self) -> None:
        self._resp.release()
