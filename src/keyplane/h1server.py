"""keyplane's HTTP/1.1 server: ASGI apps over asyncio (uvloop) and httptools' parser (llhttp).

Why not uvicorn: measured in the same run, uvicorn's protocol cost ~97,000 instructions per proxied
request against ~15,000 for the same work on a bare protocol (a sixth of keyplane's whole request,
bench/RESULTS.md): per-header regular expressions, an Event and a keep-alive timer per request,
head and body written in two system calls. This server parses with the same llhttp, and:

- writes a response's head together with its first body bytes, in one system call: for a
  response of known length always; for a stream when they follow in the same loop pass (else the
  head goes out at the end of the pass: a client may wait for it before the first event);
- checks the head it writes for CR, LF and NUL once, not every header by a regular expression;
- answers ``receive()`` at once when the body is already here (the usual case: a request arrives
  in one piece and its task starts after that), waiting on a future only when it is not;
- closes idle keep-alive connections from one sweep a second, instead of a timer per request;
- while other requests are in progress, writes an answer of up to 4 KiB at the start of the
  loop's next pass, together with the other answers of the pass that produced it, not as it is
  produced: the client side is woken once per pass instead of once per answer, and the pass's
  answers are written back to back (+5-12% requests a second at 16 connections in interleaved
  runs, bench/RESULTS.md). Alone, an answer is written at once (held, one connection lost ~10% of
  its requests a second); so is a larger one (``HOLD_MAX``).

What it does (HTTP/1.1 and 1.0, no TLS, no WebSocket; keyplane needs none): keep-alive with an
idle timeout; a request's head, and every pause in its body, within ``request_timeout_s`` (else
408 and the connection closed); request bodies by content-length or chunked, streamed through ``receive()`` with
reading paused past 64 KiB unread; pipelined requests answered in order; ``Expect:
100-continue``; responses with content-length, or chunked when the app gives none; HEAD; write
back-pressure (``send()`` waits while the transport's buffer is full); a malformed request gets
400 and a head (URL and headers) over 64 KiB gets 431, and the connection is closed; an app error
before the response started gets 500 (the server's own errors in OpenAI's error envelope). The ASGI lifespan protocol runs around serving;
``should_exit`` stops accepting, lets requests in flight finish (up to ``graceful_s``), then shuts
the app down.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import socket
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import httptools

log = logging.getLogger("keyplane.server")
access_log = logging.getLogger("keyplane.access")

Message = dict[str, Any]
App = Callable[[dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]  # fmt: skip

HIGH_WATER = 64 * 1024  # request body bytes buffered and unread before reading pauses
MAX_HEAD = 64 * 1024  # bytes of URL and headers a request may have (else 431)
_SWEEP_S = 1.0  # how often idle connections are looked at
LINGER_S = 2.0  # after an answer sent before its request's body: how long what follows is dropped
LINGER_MAX = 16 * 1024 * 1024  # and how much of it
# Larger writes go out at once, while their bytes are still in the CPU's cache: held until the
# next pass, 8 KB embeddings answers at 64 connections lost ~8-10% of their requests a second.
HOLD_MAX = 4096


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


_STATUS = {code: _status_line(code) for code in range(100, 600)}
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_DISCONNECT: Message = {"type": "http.disconnect"}
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class _Date:
    """The ``date`` header (RFC 9110 §6.6.1), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
            self._line = b"date: " + stamp.encode() + b"\r\n"
        return self._line


class Server:
    """Serves ``app`` on the sockets given to ``serve``; set ``should_exit`` to stop it."""

    def __init__(
        self,
        app: App,
        *,
        keep_alive_s: float,
        graceful_s: float = 10.0,
        lifespan: bool = True,
        access_log: bool = False,
        request_timeout_s: float = 60.0,
        send_timeout_s: float = 60.0,
    ) -> None:
        self.app = app
        self.keep_alive_s = keep_alive_s
        # A client that stops reading its answer (the socket's buffers full) for this long is
        # cut off (nginx's send_timeout): held open, it would keep its upstream connection, its
        # memory and a place in the upstream pool for ever. The app hears http.disconnect.
        self.send_timeout_s = send_timeout_s
        # A request's head must arrive within this, and its body may pause no longer (nginx's
        # client_header_timeout and client_body_timeout): a client sending a request a byte at a
        # time, or not at all, must not hold a connection forever.
        self.request_timeout_s = request_timeout_s
        self.graceful_s = graceful_s
        self.lifespan = lifespan
        self.access_log = access_log
        self.should_exit = False
        self.started = False
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # the requests being answered
        self.date = _Date()
        self.state: dict[str, Any] = {}  # the lifespan state, copied into each request's scope
        self._lifespan: _Lifespan | None = None
        self._swept = 0.0
        self.all_closed: asyncio.Event | None = None  # set when draining and the last one closes
        # Answers produced in this pass of the loop, written at the start of the next one.
        self._unsent: list[tuple[_Connection, bytes]] = []

    def defer(self, conn: _Connection, data: bytes) -> None:
        """Writes ``data`` to ``conn`` at the start of the loop's next pass, in order with the
        other deferred writes."""
        if not self._unsent:
            conn.loop.call_soon(self.write_unsent)
        conn.unsent += 1
        self._unsent.append((conn, data))

    def write_unsent(self) -> None:
        """Writes what ``defer`` held (also called before a connection closes)."""
        unsent, self._unsent = self._unsent, []
        for conn, data in unsent:
            conn.unsent -= 1
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)

    async def serve(self, sockets: Sequence[socket.socket]) -> None:
        """Starts the app, serves until ``should_exit``, then stops gracefully. Raises
        RuntimeError when the app's startup fails."""
        loop = asyncio.get_running_loop()
        if self.lifespan:
            self._lifespan = _Lifespan(self.app, self.state)
            await self._lifespan.startup()
        listeners = []
        for sock in sockets:  # (not a comprehension with await: mypyc cannot compile that)
            server = await loop.create_server(
                lambda: _Connection(self, loop), sock=sock, backlog=2048
            )
            listeners.append(server)
        self.started = True
        try:
            while not self.should_exit:
                await asyncio.sleep(0.1)
                self._close_idle(loop.time())
        finally:
            for listener in listeners:
                listener.close()
            await self._drain(loop)
            if self._lifespan is not None:
                await self._lifespan.shutdown()

    def _close_idle(self, now: float) -> None:
        if now - self._swept < _SWEEP_S:
            return
        self._swept = now
        expired = now - self.keep_alive_s
        late = now - self.request_timeout_s
        stalled = now - self.send_timeout_s
        for conn in list(self.connections):
            if conn.idle_since is not None and conn.idle_since <= expired:
                conn.close()
            elif conn.owed_since is not None and conn.reading and conn.owed_since <= late:
                conn._reject(408, "The request did not arrive in time.")
            elif conn.lingering is not None and conn.lingering <= now - LINGER_S:
                if conn.transport is not None:
                    conn.transport.close()
            elif (
                conn.paused_since is not None
                and conn.paused_since <= stalled
                and conn.transport is not None
            ):
                conn.transport.abort()  # (what is unsent is lost: the client took none of it)

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Closes idle connections, lets requests in flight finish (up to ``graceful_s``), then
        closes what is left."""
        self.all_closed = asyncio.Event()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_closed.wait(), self.graceful_s)
        for conn in list(self.connections):
            conn.abort()


class _Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after."""

    def __init__(self, app: App, state: dict[str, Any]) -> None:
        """Call on the event loop that serves."""
        loop = asyncio.get_running_loop()
        self._app = app
        self._state = state
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._started: asyncio.Future[None] = loop.create_future()
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started

    async def shutdown(self) -> None:
        if self._stopped.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._stopped

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self._state
        try:
            await self._app(scope, self._inbox.get, self._send)
        except BaseException as exc:
            log.error("the application failed in its lifespan", exc_info=exc)
            self._fail(RuntimeError("Application startup failed."))
        else:
            self._fail(None)  # an app without a lifespan returns at once: nothing to start

    def _fail(self, error: Exception | None) -> None:
        if not self._started.done():
            if error is None:
                self._started.set_result(None)
            else:
                self._started.set_exception(error)
        if not self._stopped.done():
            self._stopped.set_result(None)

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._started.set_result(None)
        elif kind == "lifespan.startup.failed":
            self._started.set_exception(RuntimeError(message.get("message") or "startup failed"))
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if kind.endswith("failed"):
                log.error("application shutdown failed: %s", message.get("message", ""))
            self._stopped.set_result(None)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the app for each in turn, writes answers."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.current: _Exchange | None = None  # the request being answered
        self.queued: deque[_Exchange] = deque()  # pipelined requests waiting their turn
        self.idle_since: float | None = None
        # Since when the client owes the rest of a request (its head, or its body's next bytes)
        self.owed_since: float | None = None
        self.closing = False  # no new requests (shutting down, or the client asked)
        self.reading = True
        self.write_paused: asyncio.Future[None] | None = None
        self.paused_since: float | None = None  # writing paused: the client is not reading
        self.lingering: float | None = None  # since when the connection drops what it reads
        self._lingered = 0
        self.unsent = 0  # writes the server holds for the next pass of the loop
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect = False
        self._head_bytes = 0  # of the request line's target and headers so far
        self._head_too_large = False
        self._parsing: _Exchange | None = None  # the request whose body is being parsed
        self._rejection: bytes | None = None  # a 400 owed after the requests answered first
        self._upgrade_left = -1  # bytes still to come of an upgrade request's body (-1: none)

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self.client = _address(transport.get_extra_info("peername"))
        self.local = _address(transport.get_extra_info("sockname"))
        self.idle_since = self.loop.time()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        server.connections.discard(self)
        if server.all_closed is not None and not server.connections:
            server.all_closed.set()
        for exchange in (self.current, self._parsing, *self.queued):
            if exchange is not None:
                exchange.disconnected()
        self.queued.clear()
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.idle_since = None
        if self.lingering is not None:  # the answer is sent: what still comes is dropped
            self._lingered += len(data)
            if self._lingered > LINGER_MAX and self.transport is not None:
                self.transport.close()
            return
        if self._upgrade_left >= 0:
            self._upgrade_body(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # No protocol upgrades (WebSocket, h2c): the request is answered as a plain one,
            # then the connection closed. The parser stops at the upgrade, before the body
            # (``curl --http2`` sends one with Upgrade: h2c): that is read by its length here.
            self.closing = True
            if self._upgrade_left >= 0:
                self._upgrade_body(data[exc.args[0] :])
            elif self._parsing is not None:
                self._parsing.body_complete()
                self._parsing = None
        except httptools.HttpParserError:
            if self._head_too_large:
                self._reject(431, "The request's headers are too large.")
            else:
                self._reject(400, "Invalid HTTP request received.")

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self.paused_since = self.loop.time()
        if self.write_paused is None or self.write_paused.done():
            self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        self.paused_since = None
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.owed_since = self.loop.time()
        self._url = b""
        self._headers = []
        self._expect = False
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        name = name.lower()
        self._headers.append((name, value))
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD:
            self._head_too_large = True
            raise ValueError("request head too large")

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url
        # (find, not `in`: `bytes in bytes` first tries its operand as an integer and formats a
        # TypeError, ~1,900 instructions each time)
        if url.find(b"?") >= 0 or url.find(b"%") >= 0 or not url.startswith(b"/"):
            # (Any: httptools' stub says bytes, but a URL without a query has None there, which
            # compiled code checks: scripts/compile.py)
            parsed: Any = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
            path = urllib.parse.unquote(raw_path.decode("ascii"))
        else:
            raw_path, query, path = url, b"", url.decode("ascii")
        version = parser.get_http_version()
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.local,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self.server.state.copy(),
        }
        # Trailer fields of a chunked body come through on_header too: they go to a list nobody
        # reads. In the headers they could claim what a proxy vouched for (X-Forwarded-For, and
        # so an IP allowlist) or reach the upstream (RFC 9110 6.5.1: not merged unless safe).
        self._headers = []
        exchange = _Exchange(self, scope, parser.should_keep_alive() and not self.closing)
        exchange.expect_continue = self._expect
        self._parsing = exchange
        if self.current is None:
            self._start(exchange)
        else:
            self.queued.append(exchange)
            self._pause_reading()  # one request ahead is enough

    def on_body(self, body: bytes) -> None:
        self.owed_since = self.loop.time()
        exchange = self._parsing
        if exchange is not None:
            exchange.add_body(body)

    def on_message_complete(self) -> None:
        self.owed_since = None
        exchange = self._parsing
        if exchange is not None:
            if self.parser.should_upgrade():
                length = _content_length(exchange.scope["headers"])
                if length > 0:  # its body follows the head: read it in data_received
                    self._upgrade_left = length
                    self.owed_since = self.loop.time()
                    return
            exchange.body_complete()
            self._parsing = None

    def _upgrade_body(self, data: bytes) -> None:
        """The body of a request that asked for an upgrade, which the parser does not read."""
        exchange = self._parsing
        piece = data[: self._upgrade_left]
        self._upgrade_left -= len(piece)
        self.owed_since = self.loop.time() if self._upgrade_left else None
        if exchange is not None and piece:
            exchange.add_body(piece)
        if self._upgrade_left == 0:
            self._upgrade_left = -1
            self._parsing = None
            if exchange is not None:
                exchange.body_complete()

    # -- the exchange's side -----------------------------------------------------------------
    def _start(self, exchange: _Exchange) -> None:
        self.current = exchange
        task = exchange.task = self.loop.create_task(exchange.run(self.server.app))
        # Held until done: the loop keeps only weak references to tasks, and an app still
        # running after its response (or after the client left) is referenced by nothing else.
        tasks = self.server.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def finished(self, exchange: _Exchange) -> None:
        """The response to ``exchange`` was written completely."""
        if self.server.access_log:
            s = exchange.scope
            access_log.info(
                '%s - "%s %s HTTP/%s" %d', (self.client or ("-",))[0], s["method"], s["path"],
                s["http_version"], exchange.status,
            )  # fmt: skip
        assert self.transport is not None
        if self._rejection is not None:  # bad bytes followed: the requests before them first
            if self.queued:
                self.current = None
                self._start(self.queued.popleft())
                return
            self.write(self._rejection)
            self.close()
            return
        if not exchange.keep_alive or self.closing:
            if exchange.more_body:  # answered before its body (a 401 to Expect: 100-continue)
                self._linger()
            else:
                self.close()
            return
        self.current = None
        exchange.body, exchange.buffered = [], 0  # (a body the app did not read: dropped)
        if self.queued:
            self._start(self.queued.popleft())
        elif self._parsing is None:
            self.idle_since = self.loop.time()
        if not self.queued:
            self._resume_reading()

    def write(self, data: bytes) -> None:
        """Writes up to ``HOLD_MAX`` bytes at the start of the loop's next pass
        (``Server.defer``) while other requests are in progress, anything else at once; after a
        deferred write, deferred too, so the bytes stay in order."""
        assert self.transport is not None
        if self.unsent or (len(data) <= HOLD_MAX and len(self.server.tasks) > 1):
            self.server.defer(self, data)
        else:
            self.transport.write(data)

    def _pause_reading(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = True
            self.transport.resume_reading()
            if self.owed_since is not None:  # (paused, the client owed nothing: a fresh start)
                self.owed_since = self.loop.time()

    def _reject(self, status: int, text: str) -> None:
        log.warning("%s", text)
        if self.transport is None or self.transport.is_closing():
            return
        if self.current is not None and self._parsing is None:
            # Bad bytes after whole requests: those are answered first, in order, then this,
            # then the connection closes (RFC 9112 9.3.2); the client must not get a 400 for a
            # request that was served (and billed). After an answer that closes the connection
            # (Connection: close, HTTP/1.0) nothing follows it: the bytes were not for us.
            if self.current.keep_alive and not self.closing and self._rejection is None:
                self._rejection = _plain(status, text)
            self.closing = True
            self._pause_reading()
            return
        if self.current is None or self.current.status == 0:
            self.write(_plain(status, text))
        self.close()

    def close(self) -> None:
        """Closes the connection once what was written to it is sent (deferred writes first)."""
        if self.unsent:
            self.server.write_unsent()
        if self.transport is not None:
            self.transport.close()

    def _linger(self) -> None:
        """Closes after an answer sent before the request's body: stops writing (FIN), then reads
        and drops what the client still sends for ``LINGER_S`` (nginx's lingering close), so the
        unread bytes do not make the kernel reset the connection and lose the answer."""
        if self.unsent:
            self.server.write_unsent()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.lingering = self.loop.time()
        transport.write_eof()
        self._resume_reading()

    def abort(self) -> None:
        if self.current is not None and self.current.task is not None:
            self.current.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful: idle connections close now, busy ones after their response."""
        self.closing = True
        if self.current is None:
            self.close()
        else:
            self.current.keep_alive = False


class _Exchange:
    """One request and its response: the ASGI ``receive`` and ``send`` of that request."""

    __slots__ = (
        "body", "body_sent", "buffered", "chunked", "conn", "done", "expect_continue", "gone",
        "head", "is_head", "keep_alive", "left", "more_body", "scope", "status", "task", "waiter",
    )  # fmt: skip

    def __init__(self, conn: _Connection, scope: dict[str, Any], keep_alive: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.body: list[bytes] = []  # request body received and not yet given to the app
        self.buffered = 0  # its size
        self.more_body = True  # request body still arriving
        self.body_sent = False  # the app has had all of it
        self.gone = False  # the client disconnected
        self.waiter: asyncio.Future[None] | None = None  # receive() waiting for body or the end
        self.expect_continue = False
        self.task: asyncio.Task[None] | None = None
        self.status = 0  # set by http.response.start
        self.head = b""  # written with the first body bytes
        self.is_head = scope["method"] == "HEAD"
        self.chunked = False
        self.left = 0  # content-length bytes still to send (-1: the body ends with the connection)
        self.done = False  # the response is complete

    # -- from the connection -----------------------------------------------------------------
    def add_body(self, data: bytes) -> None:
        if self.done:
            return  # answered without reading it all (413…): the rest is read and dropped
        self.body.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER:
            self.conn._pause_reading()
        self._wake()

    def body_complete(self) -> None:
        self.more_body = False
        self._wake()

    def disconnected(self) -> None:
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI --------------------------------------------------------------------------------
    async def run(self, app: App) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and self.gone:
                return
            log.error("exception in the application", exc_info=exc)
            if self.done:
                pass  # answered already (the connection may be serving the next request)
            elif self.status == 0 and not self.gone:
                self._server_error()
            else:
                self.conn.close()
            if not isinstance(exc, Exception):
                raise
        else:
            if self.gone or self.done:
                return
            if self.status == 0:
                log.error("the application returned without starting a response")
                self._server_error()
            else:
                log.error("the application returned without completing its response")
                self.conn.close()

    def _server_error(self) -> None:
        self.keep_alive = False
        self.status, self.head = 500, b""
        self.conn.write(_plain(500, "The server had an error while processing your request."))
        self.done = True
        self.conn.finished(self)

    async def receive(self) -> Message:
        while True:
            if self.gone or self.done:
                return _DISCONNECT
            if not self.body_sent and (self.buffered or not self.more_body):
                chunks, more = self.body, self.more_body
                self.body, self.buffered = [], 0
                if more:
                    self.conn._resume_reading()
                else:
                    self.body_sent = True
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                return {"type": "http.request", "body": data, "more_body": more}
            if self.expect_continue and not self.body_sent:
                self.expect_continue = False
                self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self.gone:
            return
        paused = self.conn.write_paused
        if paused is not None and not paused.done():
            await paused
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("http.response.start sent twice")
            self._start(message["status"], message.get("headers", ()))
        elif kind == "http.response.body":
            if not self.status:
                raise RuntimeError("http.response.body sent before http.response.start")
            if self.done:
                raise RuntimeError("http.response.body sent after the response completed")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _start(self, status: int, headers: Any) -> None:
        parts = [_STATUS[status] if 100 <= status < 600 else _status_line(status)]
        length: int | None = None
        chunked = False
        count = 0
        for name, value in headers:
            # (four appends: ``parts += (…)`` built a tuple and iterated it, ~110 instructions more)
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
            count += 1
            if name in _FRAMING:
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = value.lower() == b"chunked"
                elif b"close" in value.lower():
                    self.keep_alive = False
        no_body = self.is_head or status in (204, 304) or status < 200
        unbounded = False
        if length is None and not chunked and not no_body:
            if self.scope["http_version"] == "1.0":
                # HTTP/1.0 knows no chunked coding (RFC 9112 6.1): the end of the connection
                # ends the body.
                unbounded, self.keep_alive = True, False
            else:
                parts.append(b"transfer-encoding: chunked\r\n")
                count += 1
                chunked = True
        # Answered before asking for a body the client holds back until "100 Continue" (a bad
        # key, a body too large): it will never come, so the next request would be read as it;
        # the connection closes after this answer (RFC 9110 10.1.1). A body on its way without
        # Expect is read and dropped instead: closing on it could reset the answer away.
        if self.conn.closing or (self.expect_continue and self.more_body):
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
            count += 1
        parts += (self.conn.server.date.line(), b"\r\n")
        head = b"".join(parts)
        # One line per header plus the status line and the blank one: a CR, LF or NUL anywhere
        # else would let a header value split the response.
        if (
            head.count(b"\n") != count + 3
            or head.count(b"\r") != count + 3
            or head.find(b"\0") >= 0
        ):
            raise RuntimeError("invalid character in a response header")
        self.status, self.chunked = status, chunked and not no_body
        self.left = -1 if unbounded else 0 if no_body else (length or 0)  # -1: until the close
        self.head = head  # written with the first body bytes...
        if length is None:  # ...or, for a stream, at the end of this loop pass if none came
            self.conn.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        if self.head and not self.gone:
            self.conn.write(self.head)
            self.head = b""

    def _body(self, data: bytes, more: bool) -> None:
        out = self.head
        self.head = b""
        if self.is_head or self.status in (204, 304):
            data = b""
        elif self.chunked:
            if data:
                out += b"%x\r\n%s\r\n" % (len(data), data)
            if not more:
                out += b"0\r\n\r\n"
        elif self.left < 0:  # delimited by the end of the connection
            out += data
        else:
            if len(data) > self.left:
                raise RuntimeError("response body longer than its content-length")
            self.left -= len(data)
            out += data
        if out:
            self.conn.write(out)
        if not more:
            if self.left > 0 and not self.chunked and not self.is_head:
                self.conn.close()
                raise RuntimeError("response body shorter than its content-length")
            self.done = True
            self._wake()
            self.conn.finished(self)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The request's Content-Length (0 without one, or an unreadable one)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def _plain(status: int, text: str) -> bytes:
    """A whole answer after which the connection closes (errors of the server's own), in OpenAI's
    error envelope: what keyplane's clients, OpenAI's SDKs among them, read errors in."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    error = {"message": text, "type": kind, "param": None, "code": None}
    body = json.dumps({"error": error}).encode()
    return _STATUS[status] + (
        b"content-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (len(body), body)
    )


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
