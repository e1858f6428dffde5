"""Any httpx transport as the gateway's upstream client: how tests put the simulator
(``httpx.ASGITransport``) or a ``MockTransport`` behind the gateway without sockets. Loaded only
when a transport is given (production uses H1Client)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from keyplane.gateway.transport import (
    AnswerTooLarge,
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
        max_answer_bytes: int,
    ) -> None:
        self._client = httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        )
        self._max_answer = max_answer_bytes

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
        return _HttpxResponse(resp, self._max_answer)

    async def aclose(self) -> None:
        await self._client.aclose()


class _HttpxResponse(UpstreamResponse):
    def __init__(self, resp: httpx.Response, max_answer: int) -> None:
        self._resp = resp
        self._max_answer = max_answer
        self._raw: AsyncIterator[bytes] | None = None
        self._body: bytes | None = None
        self.status = resp.status_code
        self.headers = clean_headers(resp.headers.raw)

    async def read(self) -> bytes:
        """As H1Client's: at most ``max_answer`` bytes held (``aread()`` has no limit)."""
        if self._body is not None:
            return self._body
        resp, limit = self._resp, self._max_answer
        length = resp.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await resp.aclose()
            raise AnswerTooLarge(limit)
        pieces: list[bytes] = []
        size = 0
        try:
            async for piece in resp.aiter_bytes():
                size += len(piece)
                if size > limit:
                    pieces.clear()
                    await resp.aclose()  # (read partly: httpx does not reuse its connection)
                    raise AnswerTooLarge(limit)
                pieces.append(piece)
        except httpx.HTTPError as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc
        self._body = body = b"".join(pieces)
        return body

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
