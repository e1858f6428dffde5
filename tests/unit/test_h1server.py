"""keyplane's HTTP/1.1 server over real sockets, with clients written here byte by byte (and httpx
where a real client's view is the point). Every test runs on uvloop, what keyplane serves on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvloop

import kphttp
from keyplane import server
from keyplane.h1server import Server

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 20))


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[tuple[Server, int]]:
    sock = server.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    srv = Server(app, keep_alive_s=options.pop("keep_alive_s", 75.0), **options)
    task = asyncio.create_task(srv.serve([sock]))
    await until(lambda: srv.started or task.done())
    try:
        yield srv, port
    finally:
        srv.should_exit = True
        await task
        sock.close()


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        if not message["more_body"]:
            return body


async def echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answers the method, path, query and body it got."""
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    out = b"%s %s ?%s %s" % (
        scope["method"].encode(),
        scope["path"].encode(),
        scope["query_string"],
        body,
    )
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(out))]})  # fmt: skip
    await send({"type": "http.response.body", "body": out})


async def talk(port: int, data: bytes, until_text: bytes = b"", close: bool = True) -> bytes:
    """Sends ``data``; returns what came back, until EOF (or ``until_text`` has arrived)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    try:
        while not (until_text and until_text in got):
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += chunk
    finally:
        if close:
            writer.close()
    return got


def post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n" % (path, len(body))
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async def scenario() -> None:
        async with serving(echo) as (_, port):
            both = post(b"/a?x=1", b"first") + post(b"/b%20c", b"second", b"connection: close")
            got = await talk(port, both)
        assert got.count(b"HTTP/1.1 200 OK") == 2
        first, second = got.split(b"HTTP/1.1 200 OK")[1:]
        assert first.endswith(b"POST /a ?x=1 first")
        assert b"connection: close" in second and second.endswith(b"POST /b c ? second")
        assert b"date: " in first

    run(scenario)


def test_a_chunked_request_body_reaches_the_app_whole() -> None:
    async def scenario() -> None:
        async with serving(echo) as (_, port):
            request = (
                b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                b"connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            got = await talk(port, request)
        assert got.endswith(b"POST /c ? hello world")

    run(scenario)


def test_trailer_fields_never_join_the_request_headers() -> None:
    """A trailer after a chunked body is not a header: as one, an X-Forwarded-For there would
    pass for the trusted proxy's hop and open an IP allowlist."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        async with serving(app) as (_, port):
            request = (
                b"POST /c HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 203.0.113.9\r\n"
                b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n"
                b"x-forwarded-for: 10.1.2.3\r\nx-late: 1\r\n\r\n"
            )
            got = await talk(port, request)
        assert got.startswith(b"HTTP/1.1 204")
        [headers] = seen
        assert [v for n, v in headers if n == b"x-forwarded-for"] == [b"203.0.113.9"]
        assert not any(n == b"x-late" for n, _ in headers)

    run(scenario)


def test_a_large_body_arrives_in_pieces_with_reading_paused_in_between() -> None:
    sizes: list[int] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        total = 0
        while True:
            message = await receive()
            sizes.append(len(message["body"]))
            total += len(message["body"])
            await asyncio.sleep(0.001)  # a slow reader: the server must buffer, then pause
            if not message["more_body"]:
                break
        out = b"%d" % total
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(out))]})  # fmt: skip
        await send({"type": "http.response.body", "body": out})

    async def scenario() -> None:
        async with serving(app) as (_, port):
            body = b"x" * (3 * 1024 * 1024)
            got = await talk(port, post(b"/big", body, b"connection: close"))
        assert got.endswith(b"\r\n\r\n%d" % len(body))
        assert len(sizes) > 1

    run(scenario)


def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    async def scenario() -> None:
        async with serving(echo) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n"
                b"connection: close\r\n\r\n"
            )
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ping")
            rest = await reader.read()
            writer.close()
        assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"POST /e ? ping")

    run(scenario)


def test_an_answer_before_the_body_closes_the_connection() -> None:
    """Refused before its body was read (a bad key, a body too large): with Expect: 100-continue
    the body never comes, so the next request must not be read as that body; it is told, and the
    connection closes."""

    async def refuse(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-length", b"0")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        async with serving(refuse) as (_, port):
            got = await talk(
                port,
                b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999\r\n"
                b"expect: 100-continue\r\n\r\n",
            )  # (talk reads until the server closes)
        assert got.startswith(b"HTTP/1.1 401") and b"connection: close" in got
        assert b"100 Continue" not in got
        # A client may send the body without waiting for the 100: it still reads the answer
        # whole (the unread body must not make the kernel reset the connection).
        async with serving(refuse) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = b"x" * 4_000_000
            writer.write(
                b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n"
                b"expect: 100-continue\r\n\r\n" % len(body) + body
            )
            answer = await reader.read()  # until the server closes
            writer.close()
        assert answer.startswith(b"HTTP/1.1 401") and b"connection: close" in answer

    run(scenario)


def test_a_malformed_request_gets_400_and_a_huge_head_431_and_the_connection_closes() -> None:
    async def scenario() -> None:
        async with serving(echo) as (_, port):
            got = await talk(port, b"POST /x HTTP/1.1\r\ncontent-length: nope\r\n\r\n")
            garbage = await talk(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # TLS
            huge = await talk(port, b"GET / HTTP/1.1\r\n" + b"x-pad: %s\r\n" % (b"y" * 1000) * 100)
        assert got.startswith(b"HTTP/1.1 400 Bad Request") and b"connection: close" in got
        assert garbage.startswith(b"HTTP/1.1 400 Bad Request")
        assert b"content-type: application/json" in garbage and b"invalid_request_error" in garbage
        assert huge.startswith(b"HTTP/1.1 431")

    run(scenario)


def test_bad_bytes_after_a_request_get_400_only_after_its_answer() -> None:
    """The request before them was served (and, on the gateway, billed): its client gets its
    answer, then the 400, then the connection closes."""

    async def scenario() -> None:
        async with serving(echo) as (_, port):
            junk = await talk(port, post(b"/a", b"x") + b"GARBAGE\r\n\r\n")
            closed = await talk(port, post(b"/b", b"y", b"connection: close") + post(b"/c", b"z"))
        first, _, rest = junk.partition(b"HTTP/1.1 400")
        assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"POST /a ? x")
        assert rest and b"connection: close" in rest
        assert closed.startswith(b"HTTP/1.1 200 OK") and b"POST /b ? y" in closed
        assert b"HTTP/1.1 400" not in closed  # it said it would close: nothing after it

    run(scenario)


def test_head_gets_the_headers_and_no_body() -> None:
    async def scenario() -> None:
        async with serving(echo) as (_, port):
            got = await talk(port, b"HEAD /h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head, _, body = got.partition(b"\r\n\r\n")
        assert b"content-length: 10" in head and body == b""  # "HEAD /h ? "

    run(scenario)


def test_app_errors_give_500_before_the_response_and_a_closed_connection_after() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom")

    async def scenario() -> None:
        async with serving(app) as (_, port):
            early = await talk(port, post(b"/early", b""))
            late = await talk(port, post(b"/late", b""))
        assert early.startswith(b"HTTP/1.1 500 Internal Server Error")
        assert b'{"error": {"message": "The server had an error' in early
        assert b"boom" not in early
        assert late.startswith(b"HTTP/1.1 200 OK")
        assert b"7\r\npartial\r\n" in late and not late.endswith(b"0\r\n\r\n")  # cut short

    run(scenario)


def test_a_header_value_with_a_line_break_is_never_written() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-echo", b"a\r\nset-cookie: evil=1"), (b"content-length", b"0")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        async with serving(app) as (_, port):
            got = await talk(port, post(b"/", b""))
        assert b"set-cookie" not in got
        assert got.startswith(b"HTTP/1.1 500")

    run(scenario)


def test_a_stream_is_sent_chunked_as_the_app_produces_it() -> None:
    go = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await go.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    async def scenario() -> None:
        async with serving(app) as (_, port), kphttp.AsyncClient() as client:
            url = f"http://127.0.0.1:{port}/s"
            async with client.stream("POST", url) as resp:
                assert resp.headers["transfer-encoding"] == "chunked"
                chunks = resp.aiter_raw()
                assert await anext(chunks) == b"data: 1\n\n"  # before the app goes on
                go.set()
                assert [c async for c in chunks] == [b"data: 2\n\n"]

    run(scenario)


def test_the_app_hears_of_a_client_that_left() -> None:
    heard: list[Message] = []
    left = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        heard.append(await receive())
        left.set()

    async def scenario() -> None:
        async with serving(app) as (_, port):
            await talk(port, post(b"/", b""), until_text=b"1\r\nx\r\n")  # then hangs up
            await asyncio.wait_for(left.wait(), 5)
        assert heard == [{"type": "http.disconnect"}]

    run(scenario)


def test_an_answer_that_skips_the_body_leaves_the_connection_usable() -> None:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/refuse":  # answers without reading what the client sends
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-length", b"0")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b""})
            return
        await echo(scope, receive, send)

    async def scenario() -> None:
        async with serving(app) as (_, port):
            got = await talk(
                port, post(b"/refuse", b"y" * 200_000) + post(b"/ok", b"z", b"connection: close")
            )
        assert got.startswith(b"HTTP/1.1 413") and got.endswith(b"POST /ok ? z")

    run(scenario)


def test_shutdown_lets_the_request_in_flight_finish() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"done"})

    async def scenario() -> None:
        sock = server.bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        srv = Server(app, keep_alive_s=75.0, graceful_s=10.0)
        serving_task = asyncio.create_task(srv.serve([sock]))
        await until(lambda: srv.started)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        busy = asyncio.create_task(talk(port, post(b"/", b"")))
        await entered.wait()
        srv.should_exit = True
        assert await idle_reader.read() == b""  # an idle connection is closed at once
        idle_writer.close()
        await asyncio.wait({serving_task}, timeout=0.2)
        assert not serving_task.done()  # still waiting for the request in flight
        release.set()
        got = await busy
        assert got.endswith(b"done") and b"connection: close" in got  # and the last on it
        await serving_task
        sock.close()

    run(scenario)


def test_idle_keep_alive_connections_are_closed_after_the_timeout() -> None:
    async def scenario() -> None:
        async with serving(echo, keep_alive_s=0.2) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post(b"/", b"hi"))
            await reader.readuntil(b"POST / ? hi")
            started = time.monotonic()
            assert await reader.read() == b""  # closed by the server
            assert time.monotonic() - started < 3
            writer.close()

    run(scenario)


def test_a_request_sent_too_slowly_gets_408_and_its_connection_closes() -> None:
    async def scenario() -> None:
        async with serving(echo, request_timeout_s=0.5) as (_, port):
            for partial in (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le",  # a head that stops
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",  # a body
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(partial)
                started = time.monotonic()
                answer = await reader.read()  # until the server closes
                assert answer.startswith(b"HTTP/1.1 408 "), answer
                assert time.monotonic() - started < 3
                writer.close()
            # A body that keeps coming, however slowly, is not cut off.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
            for byte in b"abcdef":
                await asyncio.sleep(0.1)  # (the pace of a slow client, under the timeout)
                writer.write(bytes([byte]))
            await reader.readuntil(b"POST / ? abcdef")
            writer.close()

    run(scenario)


def test_lifespan_runs_around_serving() -> None:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await echo(scope, receive, send)

    async def scenario() -> None:
        async with serving(app) as (_, port):
            assert events == ["lifespan.startup"]
            assert (await talk(port, post(b"/", b"", b"connection: close"))).endswith(b"? ")
        assert events == ["lifespan.startup", "lifespan.shutdown"]

    run(scenario)


def test_a_client_that_does_not_read_holds_the_app_back() -> None:
    sent: list[int] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(100):
            await send({"type": "http.response.body", "body": b"x" * 1_000_000, "more_body": True})
            sent.append(i)
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        async with serving(app) as (srv, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post(b"/", b"", b"connection: close"))
            [conn] = srv.connections
            # Nothing read: once the socket and the transport's buffer are full, send() waits.
            await until(lambda: conn.write_paused is not None and not conn.write_paused.done())
            assert len(sent) < 100
            got = 0
            while chunk := await reader.read(1 << 20):
                got += len(chunk)
            writer.close()
        assert len(sent) == 100 and got > 100_000_000

    run(scenario)


def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout() -> None:
    """Held open, it would keep its upstream connection and memory for ever (nginx's
    send_timeout): the connection is dropped and the app hears http.disconnect."""
    heard: list[Message] = []
    left = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)

        async def listen() -> None:
            heard.append(await receive())
            left.set()

        listener = asyncio.create_task(listen())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while not left.is_set():
            await send({"type": "http.response.body", "body": b"x" * 1_000_000, "more_body": True})
        await listener

    async def scenario() -> None:
        async with serving(app, send_timeout_s=0.3) as (srv, port):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post(b"/", b""))
            await until(lambda: srv.connections and next(iter(srv.connections)).paused_since)
            await asyncio.wait_for(left.wait(), 10)  # never read a byte
            await until(lambda: not srv.connections)
            writer.close()
        assert heard == [{"type": "http.disconnect"}]

    run(scenario)


def test_http_1_0_closes_after_the_answer_and_upgrades_are_answered_plainly() -> None:
    async def scenario() -> None:
        async with serving(echo) as (_, port):
            old = await talk(port, b"POST /o HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi")
            upgrade = await talk(
                port,
                b"GET /u HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            )
        assert old.startswith(b"HTTP/1.1 200 OK") and old.endswith(b"POST /o ? hi")
        assert b"connection: close" in old  # and then it closed (talk read until EOF)
        assert upgrade.startswith(b"HTTP/1.1 200 OK") and upgrade.endswith(b"GET /u ? ")
        assert b"connection: close" in upgrade

    run(scenario)


def test_a_request_asking_to_upgrade_keeps_its_body() -> None:
    """``curl --http2`` on http:// asks for h2c with the body right after the head: the request
    is answered as HTTP/1.1 with its body (the upgrade ignored, RFC 9110 7.8)."""

    async def scenario() -> None:
        async with serving(echo) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /h2c HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n"
                b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
                b"content-length: 11\r\n\r\nhello"
            )
            await writer.drain()
            writer.write(b" world")  # (the rest of the body, maybe in a later packet)
            got = await reader.read()
            writer.close()
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"POST /h2c ? hello world")
        assert b"connection: close" in got

    run(scenario)


def test_a_stream_to_an_http_1_0_client_is_not_chunked_and_ends_with_the_connection() -> None:
    """HTTP/1.0 has no chunked coding: its chunk-size lines would land inside the SSE stream."""

    async def stream(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in (b"data: 1\n\n", b"data: [DONE]\n\n"):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        async with serving(stream) as (_, port):
            old = await talk(port, b"POST /s HTTP/1.0\r\ncontent-length: 0\r\n\r\n")
            new = await talk(port, b"POST /s HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head, _, body = old.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head and b"connection: close" in head
        assert body == b"data: 1\n\ndata: [DONE]\n\n"  # then the connection closed (EOF)
        assert b"transfer-encoding: chunked" in new  # HTTP/1.1 streams stay chunked

    run(scenario)


def test_answers_written_while_other_requests_are_in_progress_arrive_whole_and_in_order() -> None:
    """With other requests in progress an answer is written at the start of the loop's next pass,
    with the others of its pass: none may be lost, reordered or cut by a close, and a write too
    large to be held must not overtake the held ones."""
    arrived = 0
    everyone = asyncio.Event()
    started: list[str] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        nonlocal arrived
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        started.append(scope["path"])
        arrived += 1
        if arrived == 3:
            everyone.set()
        await everyone.wait()  # all three answer while the others are in progress
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for piece in (b"one ", b"two ", b"x" * 5000, b"three"):  # (5000: over HOLD_MAX)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        out = scope["path"].encode() + b" " + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(out))]})  # fmt: skip
        await send({"type": "http.response.body", "body": out})

    async def scenario() -> None:
        async with serving(app) as (srv, port):
            pipelined = talk(
                port, post(b"/a", b"first") + post(b"/b", b"second", b"connection: close")
            )
            closing = talk(port, post(b"/c", b"third", b"connection: close"))
            stream = talk(port, post(b"/stream", b"", b"connection: close"))
            a_b, c, s = await asyncio.gather(pipelined, closing, stream)
            assert not srv._unsent
        # /b, pipelined behind /a, is read once /a is answered: after the other three started.
        assert sorted(started[:3]) == ["/a", "/c", "/stream"] and started[3:] == ["/b"]
        first, second = a_b.split(b"HTTP/1.1 200 OK")[1:]
        assert first.endswith(b"/a first") and second.endswith(b"/b second")
        assert c.startswith(b"HTTP/1.1 200 OK") and c.endswith(b"/c third")
        assert s.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in s
        pieces = b"4\r\none \r\n4\r\ntwo \r\n1388\r\n" + b"x" * 5000 + b"\r\n5\r\nthree\r\n"
        assert s.endswith(pieces + b"0\r\n\r\n")

    run(scenario)
