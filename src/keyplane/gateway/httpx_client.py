"""Any httpx transport as the gateway's upstream client: how tests put the simulator
(``httpx.ASGITransport``) or a ``MockTransport`` behind the gateway without sockets. Loaded only
when a transport is given (production uses H1Client)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from keyplane.gateway.transport import (
    ClosedBeforeAnswer,
    ConnectFailed,
    Headers,
    ReadTimedOut,
    StreamBroken,
    UpstreamClient,
    UpstreamResponse,
    clean_headers,
)


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
        except httpx.RemoteProtocolError as closed:  # disconnected without sending a response
            raise ClosedBeforeAnswer(str(closed) or type(closed).__name__) from closed
        except httpx.HTTPError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return _HttpxResponse(resp)

    async def aclose(self) -> None:
        await self._client.aclose()


class _HttpxResponse(UpstreamResponse):
    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self._raw: AsyncIterator[bytes] | None = None
        self.status = resp.status_code
        self.headers = clean_headers(resp.headers.raw)

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.HTTPError as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    # An async iterator, not an async generator: mypyc (scripts/compile.py) cannot compile those.
    def chunks(self) -> AsyncIterator[bytes]:
        return self

    def __aiter__(self) -> _HttpxResponse:
        return self

    async def __anext__(self) -> bytes:
        if self._raw is None:
            self._raw = self._resp.aiter_raw()
        try:
            return await self._raw.__anext__()
        except httpx.HTTPError as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._resp.aclose()
