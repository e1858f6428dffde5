"""H1Client against real sockets: raw upstreams written here byte by byte, and the simulator.

Every test runs on both the standard asyncio loop and uvloop (what keyplane serves on)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyplane.gateway import h1client
from keyplane.gateway.h1client import H1Client
from keyplane.gateway.transport import (
    AnswerTooLarge,
    ClosedBeforeAnswer,
    ConnectFailed,
    PoolBusy,
    ReadTimedOut,
    StreamBroken,
)
from keyplane.simulator import SimulatorConfig, create_app
from kptest import ServerThread, refusing_port

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
JSON_BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            result = r.run(coro)
        gc.collect()  # an unclosed socket or transport warns now, in this test (an error)
        return result

    return runner


def client(**overrides: Any) -> H1Client:
    options: dict[str, Any] = {
        "max_connections": 8,
        "connect_timeout_s": 5.0,
        "read_timeout_s": 5.0,
    }
    return H1Client(**{**options, **overrides})


# --- a raw upstream ------------------------------------------------------------------------------


@dataclass
class Request:
    line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a connection, None at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *rest = head[:-4].split(b"\r\n")
    headers = [(k.lower(), v) for k, v in (h.split(b": ", 1) for h in rest)]
    length = int(next((v for k, v in headers if k == b"content-length"), b"0"))
    return Request(line, headers, await reader.readexactly(length))


def answer(body: bytes = JSON_BODY, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


def chunked_head(extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n" + extra + b"\r\n"
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Upstream:
    """asyncio.start_server on 127.0.0.1: ``make(self)`` returns the handler, which serves the
    n-th connection (from 1) as ``handler(reader, writer, n)``; the connection is closed when it
    returns."""

    def __init__(self, make: Callable[[Upstream], Handler]) -> None:
        self.handler = make(self)
        self.accepted = 0
        self.requests: list[Request] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.eofs = 0  # connections the client closed
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> Upstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()
        for writer in self.writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer, self.accepted)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def requests_of(self, reader: asyncio.StreamReader) -> Request | None:
        req = await read_request(reader)
        if req is not None:
            self.requests.append(req)
        else:
            self.eofs += 1
        return req


async def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.002)


def keep_alive(body: bytes = JSON_BODY, extra: bytes = b"") -> Callable[[Upstream], Handler]:
    """A handler answering every request on a connection with the same JSON."""

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                w.write(answer(body, extra=extra))

        return handler

    return make


def upstream(make: Callable[[Upstream], Handler]) -> Upstream:
    return Upstream(make)


async def get(c: H1Client, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    resp = await c.request("POST" if body is not None else "GET", url, [], body)
    try:
        return resp.status, await resp.read()
    finally:
        await resp.aclose()


# --- answers -------------------------------------------------------------------------------------


def test_content_length_answer_and_the_request_on_the_wire(run: Runner) -> None:
    async def main() -> None:
        async with upstream(
            keep_alive(extra=b"Connection: keep-alive\r\nX-Request-Id: r1\r\n")
        ) as up:
            c = client()
            try:
                headers = [
                    (b"content-type", b"application/json"),
                    (b"authorization", b"Bearer sk-up"),
                    (b"Connection", b"close"),  # hop-by-hop: dropped
                    (b"transfer-encoding", b"chunked"),
                    (b"content-length", b"999"),
                    (b"host", b"evil.example"),
                ]
                resp = await c.request("POST", up.url + "/v1/chat/completions?x=1", headers, b"{}")
                assert resp.status == 200
                assert resp.headers == [
                    (b"content-type", b"application/json"),
                    (b"x-request-id", b"r1"),
                ]
                assert await resp.read() == JSON_BODY
                assert await resp.read() == JSON_BODY  # cached
                await resp.aclose()
            finally:
                await c.aclose()
        (req,) = up.requests
        assert req.line == b"POST /v1/chat/completions?x=1 HTTP/1.1"
        assert req.headers == [
            (b"host", b"127.0.0.1:%d" % up.port),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer sk-up"),
            (b"content-length", b"2"),
        ]
        assert req.body == b"{}"

    run(main())


def test_fifty_sequential_requests_use_one_connection(run: Runner) -> None:
    async def main() -> None:
        async with upstream(keep_alive()) as up:
            c = client()
            try:
                for i in range(50):
                    assert await get(c, up.url + "/v1/chat/completions", b'{"i":%d}' % i) == (
                        200,
                        JSON_BODY,
                    )
            finally:
                await c.aclose()
            assert up.accepted == 1
            assert [r.body for r in up.requests] == [b'{"i":%d}' % i for i in range(50)]

    run(main())


def test_get_without_body_sends_no_content_length(run: Runner) -> None:
    async def main() -> None:
        async with upstream(keep_alive()) as up:
            c = client()
            try:
                assert await get(c, up.url + "/v1/models") == (200, JSON_BODY)
                resp = await c.request("POST", up.url + "/x", [])
                await resp.aclose()
            finally:
                await c.aclose()
        assert up.requests[0].line == b"GET /v1/models HTTP/1.1"
        assert up.requests[0].header(b"content-length") is None
        assert up.requests[1].header(b"content-length") == b"0"

    run(main())


def test_chunked_answer_read_whole_and_in_chunks(run: Runner) -> None:
    events = [b'data: {"n":%d}\n\n' % i for i in range(5)]

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                w.write(chunked_head() + b"".join(chunk(e) for e in events) + b"0\r\n\r\n")

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                assert await get(c, up.url + "/s", b"{}") == (200, b"".join(events))
                resp = await c.request("POST", up.url + "/s", [], b"{}")
                assert (b"transfer-encoding", b"chunked") not in resp.headers
                got = [piece async for piece in resp.chunks()]
                assert b"".join(got) == b"".join(events)
                assert [p async for p in resp.chunks()] == []  # already at the end
                await resp.aclose()
                assert await get(c, up.url + "/s", b"{}") == (200, b"".join(events))
            finally:
                await c.aclose()
            assert up.accepted == 1

    run(main())


def test_trailer_fields_of_an_answer_never_join_its_headers(run: Runner) -> None:
    """A trailer's content-type must not replace the head's (RFC 9110 6.5.1)."""

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                w.write(chunked_head() + chunk(JSON_BODY) + b"0\r\ncontent-type: text/html\r\n\r\n")

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                resp = await c.request("POST", up.url + "/t", [], b"{}")
                assert await resp.read() == JSON_BODY
                assert [v for k, v in resp.headers if k == b"content-type"] == [
                    b"text/event-stream"
                ]
                await resp.aclose()
            finally:
                await c.aclose()

    run(main())


def test_slow_sse_arrives_piece_by_piece(run: Runner) -> None:
    """Each event reaches the consumer before the upstream sends the next one."""
    events = [b'data: {"n":%d}\n\n' % i for i in range(4)] + [b"data: [DONE]\n\n"]

    async def main() -> None:
        received = asyncio.Event()

        def make(up: Upstream) -> Handler:
            async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
                await up.requests_of(r)
                w.write(chunked_head())
                for e in events:
                    received.clear()
                    w.write(chunk(e))
                    await received.wait()
                w.write(b"0\r\n\r\n")
                await up.requests_of(r)

            return handler

        async with upstream(make) as up:
            c = client()
            try:
                resp = await c.request("POST", up.url + "/s", [], b"{}")
                got = b""
                async for piece in resp.chunks():
                    got += piece
                    if got.endswith(b"\n\n"):
                        received.set()
                assert got == b"".join(events)
                await resp.aclose()
                assert len(c._conns) == 1 and not c._waiters  # kept for the next request
            finally:
                await c.aclose()

    run(main())


def test_gaps_shorter_than_the_read_timeout_are_fine(run: Runner) -> None:
    """The read timeout bounds the silence between pieces, not the whole answer."""

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            w.write(chunked_head())
            for i in range(6):
                w.write(chunk(b"data: %d\n\n" % i))
                await asyncio.sleep(0.2)
            w.write(b"0\r\n\r\n")
            await up.requests_of(r)

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            # Gaps of 0.2 s, 1.2 s in all: a busy machine may stretch a gap by up to 0.8 s. (The
            # clock starts before the request: on such a machine the answer may be handed over
            # late, part of the body already sent by then.)
            c = client(read_timeout_s=1.0)
            try:
                start = time.monotonic()
                resp = await c.request("POST", up.url + "/s", [], b"{}")
                body = await resp.read()
                assert time.monotonic() - start > 1.0
                assert body == b"".join(b"data: %d\n\n" % i for i in range(6))
                await resp.aclose()
            finally:
                await c.aclose()

    run(main())


def test_body_delimited_by_the_end_of_the_connection(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
            await w.drain()
            w.write(b"the end")

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                assert await get(c, up.url + "/a") == (200, b"until the end")
                resp = await c.request("GET", up.url + "/a", [])
                assert b"".join([p async for p in resp.chunks()]) == b"until the end"
                await resp.aclose()
            finally:
                await c.aclose()
            assert up.accepted == 2

    run(main())


def test_connection_close_is_honoured(run: Runner) -> None:
    async def main() -> None:
        async with upstream(keep_alive(extra=b"Connection: close\r\n")) as up:
            c = client()
            try:
                for _ in range(3):
                    assert await get(c, up.url + "/a") == (200, JSON_BODY)
                assert c._open == 0
            finally:
                await c.aclose()
            assert up.accepted == 3

    run(main())


def test_http10_answer_is_not_kept(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                w.write(answer(extra=b"Connection: keep-alive\r\n").replace(b"1.1", b"1.0", 1))

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                assert await get(c, up.url + "/a") == (200, JSON_BODY)
                assert await get(c, up.url + "/a") == (200, JSON_BODY)
            finally:
                await c.aclose()
            assert up.accepted == 2

    run(main())


def test_idle_connection_closed_by_the_upstream_is_dropped(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            w.write(answer())  # keep-alive by HTTP/1.1's default, then closed anyway

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                for i in range(3):
                    assert await get(c, up.url + "/a") == (200, JSON_BODY)
                    await eventually(lambda: c._open == 0)  # connection_lost noticed it
                    assert not any(c._idle.values())
                    assert up.accepted == i + 1
            finally:
                await c.aclose()

    run(main())


@pytest.mark.parametrize("idle_long_enough", [True, False])
def test_a_reused_connection_closed_unanswered_is_resent_only_after_an_idle_spell(
    run: Runner, monkeypatch: pytest.MonkeyPatch, idle_long_enough: bool
) -> None:
    """The upstream closes the connection as the next request goes out on it. After an idle spell
    that is its keep-alive timeout racing with us: sent again on a new connection. Reused at once,
    the upstream read the request and may be billing it: not sent again."""
    monkeypatch.setattr(h1client, "STALE_IDLE_S", 0.0 if idle_long_enough else 3600.0)

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            w.write(answer())
            await up.requests_of(r)  # read, never answered: closed

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                assert await get(c, up.url + "/a", b"1") == (200, JSON_BODY)
                if idle_long_enough:
                    assert await get(c, up.url + "/a", b"2") == (200, JSON_BODY)
                else:
                    with pytest.raises(ClosedBeforeAnswer):
                        await get(c, up.url + "/a", b"2")
            finally:
                await c.aclose()
            sent = [b"1", b"2", b"2"] if idle_long_enough else [b"1", b"2"]
            assert [r.body for r in up.requests] == sent

    run(main())


def test_new_connection_closed_before_answering_may_have_been_received(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                with pytest.raises(ClosedBeforeAnswer, match="before answering"):
                    await c.request("POST", up.url + "/a", [], b"{}")
                assert c._open == 0
            finally:
                await c.aclose()
            assert up.accepted == 1  # not retried: that is the router's decision

    run(main())


def test_answer_to_head_has_no_body(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            req = await up.requests_of(r)
            assert req is not None and req.line.startswith(b"HEAD ")
            w.write(answer(b"x" * 100)[:-100])  # content-length: 100, and no body
            while await up.requests_of(r) is not None:
                w.write(answer())

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                resp = await c.request("HEAD", up.url + "/a", [])
                assert resp.status == 200
                assert await resp.read() == b""
                await resp.aclose()
                assert await get(c, up.url + "/a") == (200, JSON_BODY)
            finally:
                await c.aclose()
            assert up.accepted == 1

    run(main())


def test_informational_answers_are_skipped(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer())

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                for _ in range(2):
                    resp = await c.request("GET", up.url + "/a", [])
                    assert resp.status == 200
                    assert (b"link", b"</a>") not in resp.headers
                    assert await resp.read() == JSON_BODY
                    await resp.aclose()
            finally:
                await c.aclose()
            assert up.accepted == 1

    run(main())


def test_error_answer_closed_unread_keeps_the_connection(run: Runner) -> None:
    """The router closes 5xx answers without reading them: complete ones go back to the pool."""

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                w.write(answer(b'{"error":{}}', b"503 Service Unavailable"))

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                for _ in range(3):
                    resp = await c.request("POST", up.url + "/a", [], b"{}")
                    assert resp.status == 503
                    conn = resp._conn  # type: ignore[attr-defined]
                    await eventually(lambda c=conn: c.state == h1client._DONE)
                    await resp.aclose()
            finally:
                await c.aclose()
            assert up.accepted == 1

    run(main())


def test_response_closed_before_its_end_closes_the_connection(run: Runner) -> None:
    async def main() -> None:
        done = asyncio.Event()

        def make(up: Upstream) -> Handler:
            async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
                await up.requests_of(r)
                w.write(chunked_head() + chunk(b"data: 1\n\n"))
                await up.requests_of(r)  # the client hangs up
                done.set()

            return handler

        async with upstream(make) as up:
            c = client()
            try:
                resp = await c.request("POST", up.url + "/s", [], b"{}")
                async for piece in resp.chunks():
                    assert piece == b"data: 1\n\n"
                    break
                await resp.aclose()
                assert c._open == 0
                await done.wait()
                with pytest.raises(StreamBroken):
                    await resp.read()
            finally:
                await c.aclose()
            assert up.eofs == 1

    run(main())


def test_backpressure_pauses_reading(run: Runner) -> None:
    size = 8 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for i in range(0, size, 65536):
                    w.write(body[i : i + 65536])
                    await w.drain()

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client(read_timeout_s=0.1)
            try:
                resp = await c.request("GET", up.url + "/big", [])
                conn = resp._conn  # type: ignore[attr-defined]
                await eventually(lambda: conn.paused)
                # A consumer slower than the read timeout: not the upstream's silence.
                await asyncio.sleep(0.3)
                assert conn.error is None
                conn.read_timeout = 10.0  # the rest is not about timing: no flakes on busy CPUs
                peak = conn.buffered
                got = []
                async for piece in resp.chunks():
                    got.append(piece)
                    peak = max(peak, conn.buffered)
                assert b"".join(got) == body
                # One read of the socket past the mark at most (asyncio reads 256 KiB at a time).
                assert peak <= h1client._HIGH_WATER + 512 * 1024
                await resp.aclose()
                assert await get(c, up.url + "/big") == (200, body)  # read() does not pause
            finally:
                await c.aclose()
            assert up.accepted == 1

    run(main())


# --- answers too large to hold ------------------------------------------------------------------

LIMIT = 100_000  # max_answer_bytes here (it must be more than the 64 KiB at which reading pauses)
Send = Callable[[asyncio.StreamWriter], Awaitable[None]]


def too_large_first(send: Send) -> Callable[[Upstream], Handler]:
    """The first connection's answer is ``send``'s (then it waits for the client to hang up);
    every later connection answers JSON_BODY to each request."""

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            if n == 1:
                await up.requests_of(r)
                await send(w)
                await up.requests_of(r)
                return
            while await up.requests_of(r) is not None:
                w.write(answer())

        return handler

    return make


async def refused_then_served_anew(send: Send) -> None:
    """read() of ``send``'s answer raises AnswerTooLarge without waiting for the rest of it,
    drops what it held and closes the connection: the next request gets a new one."""
    async with upstream(too_large_first(send)) as up:
        c = client(max_answer_bytes=LIMIT, read_timeout_s=30.0)
        try:
            resp = await c.request("POST", up.url + "/v1/embeddings", [], b"{}")
            conn = resp._conn  # type: ignore[attr-defined]
            with pytest.raises(AnswerTooLarge) as raised:
                async with asyncio.timeout(10):  # (the read timeout would say StreamBroken)
                    await resp.read()
            assert raised.value.limit == LIMIT and raised.value.partial == b""
            assert str(LIMIT) in str(raised.value)
            assert conn.dead and conn.buf == [] and conn.buffered == 0
            await resp.aclose()
            assert c.pool() == (0, 0, 0)  # closed, not back in the pool
            assert await get(c, up.url + "/v1/embeddings", b"{}") == (200, JSON_BODY)
            assert up.accepted == 2
        finally:
            await c.aclose()


def test_an_answer_whose_length_is_over_the_limit_is_refused_before_its_body(
    run: Runner,
) -> None:
    async def send(w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1) + b"[" * 10)
        await w.drain()  # ...and the rest never comes

    run(refused_then_served_anew(send))


@pytest.mark.parametrize("pace", ["with_the_head", "after_the_head", "trickled"])
@pytest.mark.parametrize("framing", ["chunked", "until_close"])
def test_a_body_growing_past_the_limit_is_refused(run: Runner, framing: str, pace: str) -> None:
    """However its bytes arrive: with the head (before read() is called), all of the rest at once
    once read() waits for it (the end of a chunked body in the same bytes), or endlessly."""
    head = chunked_head() if framing == "chunked" else b"HTTP/1.1 200 OK\r\n\r\n"
    piece = b"x" * 16384
    encoded = chunk(piece) if framing == "chunked" else piece
    end = b"0\r\n\r\n" if framing == "chunked" else b""
    whole = encoded * (LIMIT // len(piece) + 1) + end

    async def send(w: asyncio.StreamWriter) -> None:
        if pace == "with_the_head":
            w.write(head + whole)
        elif pace == "after_the_head":
            w.write(head)
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(whole)
        else:
            w.write(head)
            for _ in range(1000):  # 16 MB at most: the client hangs up long before
                w.write(encoded)
                await w.drain()
                await asyncio.sleep(0.001)
        await w.drain()

    run(refused_then_served_anew(send))


@pytest.mark.parametrize("framing", ["content_length", "chunked"])
def test_a_body_of_exactly_the_limit_is_read_and_the_connection_kept(
    run: Runner, framing: str
) -> None:
    body = bytes(range(256)) * (LIMIT // 256) + b"y" * (LIMIT % 256)
    assert len(body) == LIMIT

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                if framing == "chunked":
                    w.write(chunked_head() + chunk(body[:70000]) + chunk(body[70000:]))
                    w.write(b"0\r\n\r\n")
                else:
                    w.write(answer(body))

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client(max_answer_bytes=LIMIT)
            try:
                for _ in range(3):
                    assert await get(c, up.url + "/v1/embeddings", b"{}") == (200, body)
            finally:
                await c.aclose()
            assert up.accepted == 1

    run(main())


def test_a_stream_has_no_such_limit(run: Runner) -> None:
    """chunks() relays a body as it arrives, never holding it whole: it may be any size."""
    pieces = [b"data: %d %s\n\n" % (i, b"z" * 4000) for i in range(100)]  # ~400 KB

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            while await up.requests_of(r) is not None:
                w.write(chunked_head() + b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n")

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client(max_answer_bytes=LIMIT)
            try:
                for _ in range(2):
                    resp = await c.request("POST", up.url + "/v1/chat/completions", [], b"{}")
                    got = b"".join([piece async for piece in resp.chunks()])
                    assert got == b"".join(pieces)
                    await resp.aclose()
            finally:
                await c.aclose()
            assert up.accepted == 1

    run(main())


def test_max_answer_bytes_must_be_more_than_the_pause_mark() -> None:
    with pytest.raises(ValueError, match="max_answer_bytes"):
        client(max_answer_bytes=h1client._HIGH_WATER)


# --- failures ------------------------------------------------------------------------------------


def test_refused_port_is_connect_failed(run: Runner) -> None:
    async def main(port: int) -> None:
        c = client()
        try:
            with pytest.raises(ConnectFailed):
                await c.request("GET", f"http://127.0.0.1:{port}/v1/models", [])
            assert c._open == 0
        finally:
            await c.aclose()

    with refusing_port() as port:
        run(main(port))


def test_upstream_that_never_answers_is_read_timed_out(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            await up.requests_of(r)  # until the client hangs up

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client(read_timeout_s=0.2)
            try:
                start = time.monotonic()
                with pytest.raises(ReadTimedOut):
                    await c.request("POST", up.url + "/a", [], b"{}")
                assert time.monotonic() - start >= 0.19
                assert c._open == 0
                await eventually(lambda: up.eofs == 1)
            finally:
                await c.aclose()

    run(main())


def test_silence_mid_body_is_stream_broken(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            w.write(chunked_head() + chunk(b"data: 1\n\n"))
            await up.requests_of(r)

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client(read_timeout_s=0.2)
            try:
                resp = await c.request("POST", up.url + "/s", [], b"{}")
                pieces = resp.chunks()
                assert await anext(pieces) == b"data: 1\n\n"
                with pytest.raises(StreamBroken, match="stalled"):
                    await anext(pieces)
                await resp.aclose()
                assert c._open == 0
            finally:
                await c.aclose()

    run(main())


@pytest.mark.parametrize("chunked", [False, True])
def test_upstream_dying_mid_body_is_stream_broken(run: Runner, chunked: bool) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            if chunked:
                w.write(chunked_head() + chunk(b"data: 1\n\n"))
            else:
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                resp = await c.request("POST", up.url + "/s", [], b"{}")
                with pytest.raises(StreamBroken, match="mid-body"):
                    await resp.read()
                await resp.aclose()
                resp = await c.request("POST", up.url + "/s", [], b"{}")
                with pytest.raises(StreamBroken):
                    async for _ in resp.chunks():
                        pass
                await resp.aclose()
                assert c._open == 0
            finally:
                await c.aclose()

    run(main())


def test_garbage_answer(run: Runner) -> None:
    """Bytes that are not an HTTP answer still show the request arrived: never "safe to retry"
    (a retry would be sent, and billed by the upstream, again)."""

    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            if n == 1:
                w.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            else:
                w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            await up.requests_of(r)

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                with pytest.raises(ClosedBeforeAnswer, match="invalid answer") as raised:
                    await c.request("GET", up.url + "/a", [])
                assert not isinstance(raised.value, ConnectFailed)
                resp = await c.request("GET", up.url + "/a", [])
                with pytest.raises(StreamBroken, match="invalid answer"):
                    await resp.read()
                await resp.aclose()
                assert c._open == 0
            finally:
                await c.aclose()

    run(main())


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"1\r\nx-injected: 1")],
        [(b"x-a", b"1\nx-injected: 1")],
        [(b"x-a", b"1\r")],
        [(b"x-a\r\nx-injected", b"1")],
        [(b"x-a", b"1"), (b"x-b", b"\x00")],
    ],
)
def test_header_injection_is_refused_before_sending(run: Runner, headers: Any) -> None:
    async def main() -> None:
        async with upstream(keep_alive()) as up:
            c = client()
            try:
                with pytest.raises(ValueError, match="CR, LF or NUL"):
                    await c.request("POST", up.url + "/a", headers, b"{}")
                with pytest.raises(ValueError, match="invalid request target"):
                    await c.request("GET", up.url + "/a b", [])
                with pytest.raises(ValueError, match="invalid method"):
                    await c.request("GET /x HTTP/1.1\r\n", up.url + "/a", [])
            finally:
                await c.aclose()
            assert up.accepted == 0

    run(main())


def test_unsolicited_bytes_close_an_idle_connection(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            w.write(answer() + b"HTTP/1.1 200 OK\r\n")
            await up.requests_of(r)

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                assert await get(c, up.url + "/a") == (200, JSON_BODY)
                await eventually(lambda: c._open == 0)
                assert await get(c, up.url + "/a") == (200, JSON_BODY)
            finally:
                await c.aclose()
            assert up.accepted == 2

    run(main())


# --- the pool ------------------------------------------------------------------------------------


def test_max_connections_bounds_concurrency(run: Runner) -> None:
    async def main() -> None:
        release = asyncio.Event()
        waiting = 0

        def make(up: Upstream) -> Handler:
            async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
                nonlocal waiting
                while await up.requests_of(r) is not None:
                    waiting += 1
                    await release.wait()
                    w.write(answer())

            return handler

        async with upstream(make) as up:
            c = client(max_connections=2)
            try:
                tasks = [asyncio.create_task(get(c, up.url + "/a", b"%d" % i)) for i in range(10)]
                await eventually(lambda: waiting == 2 and len(c._waiters) == 8)
                assert up.accepted == 2 and c._open == 2
                release.set()
                assert await asyncio.gather(*tasks) == [(200, JSON_BODY)] * 10
                assert sorted(r.body for r in up.requests) == sorted(b"%d" % i for i in range(10))
            finally:
                await c.aclose()
            assert up.accepted == 2

    run(main())


def test_a_full_pool_makes_room_for_another_upstream(run: Runner) -> None:
    async def main() -> None:
        async with upstream(keep_alive()) as a, upstream(keep_alive()) as b:
            c = client(max_connections=1)
            try:
                for _ in range(3):
                    assert await get(c, a.url + "/a") == (200, JSON_BODY)
                    assert await get(c, b.url + "/b") == (200, JSON_BODY)
                    assert c._open == 1
            finally:
                await c.aclose()
            assert a.accepted == b.accepted == 3

    run(main())


def test_cancelled_waiter_does_not_leak_its_turn(run: Runner) -> None:
    async def main() -> None:
        release = asyncio.Event()

        def make(up: Upstream) -> Handler:
            async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
                while await up.requests_of(r) is not None:
                    await release.wait()
                    w.write(answer())

            return handler

        async with upstream(make) as up:
            c = client(max_connections=1)
            try:
                first = asyncio.create_task(get(c, up.url + "/a"))
                second = asyncio.create_task(get(c, up.url + "/a"))
                third = asyncio.create_task(get(c, up.url + "/a"))
                await eventually(lambda: len(c._waiters) == 2)
                second.cancel()
                release.set()
                assert await first == (200, JSON_BODY)
                assert await third == (200, JSON_BODY)
                with pytest.raises(asyncio.CancelledError):
                    await second
                assert c._open == 1
            finally:
                await c.aclose()
            assert up.accepted == 1

    run(main())


def test_a_wait_for_a_busy_pool_ends(run: Runner) -> None:
    """Every connection held (by answers their clients do not read, say): the next request gives
    up after the pool's wait (a minute by default) instead of waiting for ever; the pool still
    works after."""

    async def main() -> None:
        release = asyncio.Event()

        def make(up: Upstream) -> Handler:
            async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
                while await up.requests_of(r) is not None:
                    await release.wait()
                    w.write(answer())

            return handler

        async with upstream(make) as up:
            c = client(max_connections=1, pool_wait_s=0.2)
            try:
                first = asyncio.create_task(get(c, up.url + "/a"))
                await eventually(lambda: c._open == 1)
                with pytest.raises(PoolBusy, match="came free"):
                    await get(c, up.url + "/a")
                release.set()
                assert await first == (200, JSON_BODY)
                assert await get(c, up.url + "/a") == (200, JSON_BODY)
                assert c._open == 1 and not [f for _, f in c._waiters if not f.done()]
            finally:
                await c.aclose()

    run(main())


def test_cancelled_request_closes_its_connection(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            await up.requests_of(r)

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            try:
                task = asyncio.create_task(c.request("POST", up.url + "/a", [], b"{}"))
                await eventually(lambda: len(up.requests) == 1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert c._open == 0
                await eventually(lambda: up.eofs == 1)
            finally:
                await c.aclose()

    run(main())


def test_aclose_closes_every_connection(run: Runner) -> None:
    def make(up: Upstream) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
            await up.requests_of(r)
            w.write(answer() if n == 1 else answer()[:-5])  # the others stop short
            await up.requests_of(r)

        return handler

    async def main() -> None:
        async with upstream(make) as up:
            c = client()
            responses = [await c.request("GET", up.url + "/a", []) for _ in range(3)]
            assert c._open == 3
            await responses[0].read()
            await responses[0].aclose()  # idle now
            await c.aclose()
            assert c._open == 0 and not c._conns
            await eventually(lambda: up.eofs == 3)
            with pytest.raises(StreamBroken):
                await responses[1].read()
            for resp in responses:
                await resp.aclose()

    run(main())


# --- https ---------------------------------------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https(run: Runner, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def main() -> None:
        up = await upstream(keep_alive()).start(server_ctx)
        port = up.port
        try:
            c = client()
            try:
                # The default context refuses a certificate it cannot verify...
                with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                    await c.request("GET", f"https://localhost:{port}/a", [])
                # ...and, trusting it, checks the host name and talks over TLS.
                c._ssl = ssl.create_default_context(cafile=str(cert))
                for _ in range(5):
                    assert await get(c, f"https://localhost:{port}/a") == (200, JSON_BODY)
                assert up.requests[0].header(b"host") == b"localhost:%d" % port
            finally:
                await c.aclose()
        finally:
            await up.__aexit__()
        assert up.accepted == 1  # one kept-alive connection (the refused handshake never got here)

    run(main())


# --- against keyplane's simulator ----------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator() -> Any:
    server = ServerThread(create_app(SimulatorConfig())).start()
    yield server
    server.stop()


def test_simulator_chat_and_stream(run: Runner, simulator: ServerThread) -> None:
    url = simulator.url + "/v1/chat/completions"
    headers = [(b"content-type", b"application/json"), (b"accept-encoding", b"identity")]
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}

    async def main() -> None:
        c = client()
        try:
            status, body = await get(c, url, orjson.dumps(request))
            assert status == 200
            answer = orjson.loads(body)
            assert answer["object"] == "chat.completion"
            assert answer["usage"]["completion_tokens"] == 16

            stream = {**request, "stream": True, "stream_options": {"include_usage": True}}
            resp = await c.request("POST", url, headers, orjson.dumps(stream))
            assert resp.status == 200
            assert dict(resp.headers)[b"content-type"].startswith(b"text/event-stream")
            raw = b"".join([piece async for piece in resp.chunks()])
            await resp.aclose()
            events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
            assert events[-1] == b"[DONE]"
            chunks = [orjson.loads(e) for e in events[:-1]]
            text = "".join(
                ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]
            )
            assert text == answer["choices"][0]["message"]["content"]
            assert chunks[-1]["usage"] == answer["usage"]
            assert len(c._conns) == 1  # both over one keep-alive connection
        finally:
            await c.aclose()

    run(main())
