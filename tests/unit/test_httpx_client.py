"""The httpx-based upstream client (tests and other transports) reports failures as h1client does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from keyplane.gateway.httpx_client import HttpxClient
from keyplane.gateway.transport import (
    AnswerTooLarge,
    ClosedBeforeAnswer,
    ConnectFailed,
    ReadTimedOut,
)

LIMIT = 100_000


def make_client(handler: Callable[[httpx.Request], httpx.Response]) -> HttpxClient:
    return HttpxClient(
        httpx.MockTransport(handler), connect_timeout_s=1, read_timeout_s=1, max_answer_bytes=LIMIT
    )


@pytest.mark.parametrize(
    ("raised", "reported"),
    [
        (httpx.RemoteProtocolError("Server disconnected without sending a response."),
         ClosedBeforeAnswer),
        (httpx.ConnectError("refused"), ConnectFailed),
        (httpx.ConnectTimeout("slow"), ConnectFailed),
        (httpx.ReadTimeout("slow"), ReadTimedOut),
    ],
)  # fmt: skip
def test_failures_are_reported_as_the_router_expects(
    raised: Exception, reported: type[Exception]
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise raised

    async def main() -> None:
        client = make_client(fail)
        try:
            with pytest.raises(reported):
                await client.request("POST", "http://up/v1/chat/completions", [], b"{}")
        finally:
            await client.aclose()

    asyncio.run(main())


class Pieces(httpx.AsyncByteStream):
    """A body of ``count`` pieces of ``size`` bytes, without a content-length; counts the pieces
    taken from it."""

    def __init__(self, size: int, count: int) -> None:
        self.size, self.count, self.taken = size, count, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.taken += 1
            yield b"x" * self.size


@pytest.mark.parametrize("declared", [True, False], ids=["content_length", "growing"])
def test_an_answer_over_the_limit_is_refused(declared: bool) -> None:
    body = Pieces(10_000, 1000)  # 10 MB

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-length": str(body.size * body.count)} if declared else {}
        return httpx.Response(200, headers=headers, stream=body)

    async def main() -> None:
        client = make_client(answer)
        try:
            resp = await client.request("POST", "http://up/v1/embeddings", [], b"{}")
            with pytest.raises(AnswerTooLarge) as raised:
                await resp.read()
            assert raised.value.limit == LIMIT
            # Read no further than the limit (not at all when its length said so), and closed.
            assert body.taken == (0 if declared else LIMIT // body.size + 1)
            assert resp._resp.is_closed  # type: ignore[attr-defined]
        finally:
            await client.aclose()

    asyncio.run(main())


def test_an_answer_of_exactly_the_limit_is_read() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Pieces(LIMIT // 10, 10))

    async def main() -> None:
        client = make_client(answer)
        try:
            resp = await client.request("POST", "http://up/v1/embeddings", [], b"{}")
            assert await resp.read() == b"x" * LIMIT
            assert await resp.read() == b"x" * LIMIT  # kept
            await resp.aclose()
        finally:
            await client.aclose()

    asyncio.run(main())
