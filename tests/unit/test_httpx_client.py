"""The httpx-based upstream client (tests and other transports) reports failures as h1client does."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from keyplane.gateway.httpx_client import HttpxClient
from keyplane.gateway.transport import ClosedBeforeAnswer, ConnectFailed, ReadTimedOut


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
        client = HttpxClient(httpx.MockTransport(fail), connect_timeout_s=1, read_timeout_s=1)
        try:
            with pytest.raises(reported):
                await client.request("POST", "http://up/v1/chat/completions", [], b"{}")
        finally:
            await client.aclose()

    asyncio.run(main())
