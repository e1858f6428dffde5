"""Talking HTTP to upstreams: one small interface, two implementations.

- ``H1Client`` (gateway/h1client.py): production. A lean HTTP/1.1 client on asyncio and
  httptools' parser; profiling showed httpx's pool, then its request/response objects, then
  aiohttp's client taking much of the gateway's CPU (bench/RESULTS.md, bench/clients.py).
- ``HttpxClient`` (gateway/httpx_client.py): wraps any ``httpx`` transport, so tests can put the
  simulator (``httpx.ASGITransport``) or a ``MockTransport`` behind the gateway without sockets.

Both raise only this module's errors, which the router's retry policy is written against.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence

from mypy_extensions import mypyc_attr

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers: they describe one connection, never forwarded either way.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}
)


class UpstreamError(Exception):
    """The exchange with an upstream failed; ``partial``: the part of a body read whole that had
    arrived by then (what a broken answer is billed on)."""

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


class ConnectFailed(UpstreamError):
    """The request could not be delivered (refused, reset, closed before an answer): safe to retry."""


class PoolBusy(UpstreamError):
    """Every connection to the upstream stayed busy for the pool's wait: nothing was sent."""


class ClosedBeforeAnswer(UpstreamError):
    """The upstream closed the connection after the request was sent and before answering (a new
    one, or one reused at once): it may have received the request (and be billing it), so it is
    not sent again."""


class InvalidAnswer(ClosedBeforeAnswer):
    """The upstream answered with bytes that are not a valid HTTP answer's head: it received the
    request (and may be billing it), so, as above, it is not sent again."""


class ReadTimedOut(UpstreamError):
    """No answer in time: the upstream may be working on the request (and costing money)."""


class StreamBroken(UpstreamError):
    """The answer's body broke off (connection lost or timed out mid-body)."""


class AnswerTooLarge(UpstreamError):
    """A body read whole would be larger than the client's ``max_answer_bytes`` (``limit``): the
    connection was closed (never reused) and what had arrived of it dropped. Streams (``chunks()``)
    have no such limit: they are relayed as they arrive, never held whole."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


# Open to plain-Python implementations when this module is compiled (scripts/compile.py): test
# doubles, bench/pipeline.py's fixed upstream.
@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamResponse(ABC):
    status: int
    headers: Headers  # lower-case names, hop-by-hop headers removed

    @abstractmethod
    async def read(self) -> bytes:
        """The whole body. Raises StreamBroken, or AnswerTooLarge."""

    @abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Raises StreamBroken."""

    @abstractmethod
    async def aclose(self) -> None:
        """Gives the connection back (or drops it when the body was not read to the end)."""

    @property
    def drained(self) -> bool:
        """True when ``chunks()`` has handed over the whole body: nothing more will come (a
        client that cannot tell says False)."""
        return False


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamClient(ABC):
    @abstractmethod
    async def request(
        self, method: str, url: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        """Sends the request and returns once the status and headers arrived.

        Raises ConnectFailed or ReadTimedOut."""

    @abstractmethod
    async def aclose(self) -> None: ...

    def pool(self) -> tuple[int, int, int]:
        """(connections open, of them idle, requests waiting for one), for /metrics."""
        return (0, 0, 0)


def clean_headers(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower not in HOP_BY_HOP:
            out.append((lower, value))
    return out
