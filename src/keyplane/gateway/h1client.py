"""A lean HTTP/1.1 client for the upstream hop: an asyncio Protocol and httptools' parser.

Why: aiohttp's client (``ClientSession._request``, building a ``ClientRequest``, its header
handling and response objects) cost ~20% of the gateway's CPU per request. This client does the
one thing the gateway needs: it writes the request with one ``transport.write`` of bytes built
directly, and parses the answer with ``httptools.HttpResponseParser`` (llhttp, the parser uvicorn
already uses) straight into a list of header tuples and a list of body pieces. CPU per request
of the client's process, from ``bench/clients.py`` (POST of the benchmark's chat request, the
626-byte JSON answer with content-length from nginx on another core, median of 3 runs of 4,000
requests; "floor" only writes a prebuilt request and counts the answer's bytes; ±10% run to run):

    ========  ==========================  ==========================  ======================
    loop      aiohttp  c=1 / 16 / 64      H1Client  c=1 / 16 / 64     floor  c=1 / 16 / 64
    ========  ==========================  ==========================  ======================
    uvloop    149 / 82 / 83 µs            57 / 14 / 13 µs             36 / 7 / 7 µs
    asyncio   160 / 87 / 84 µs            56 / 17 / 16 µs             42 / 9 / 9 µs
    ========  ==========================  ==========================  ======================

Behaviour:

- One keep-alive pool per (scheme, host, port); idle connections are reused newest first; at
  most ``max_connections`` are open in total (connecting, busy or idle); callers wait in line
  when all are busy, and an idle connection to another upstream is closed to make room.
- A connection goes back to the pool only when its answer arrived complete on the wire, over
  HTTP/1.1, without ``Connection: close`` (llhttp's ``should_keep_alive``); anything else, and any
  response closed before its end, closes it. Bytes arriving on an idle connection close it too.
- Idle connections the upstream closes are dropped as ``connection_lost`` reports them. When a
  *reused* connection that had been idle for ``STALE_IDLE_S`` or more is closed before a single
  byte of the answer arrived (the upstream's idle timeout raced with our request), the request is
  sent again, once, on a new connection, so the router does not log, back off and count a retry
  for what is normal keep-alive housekeeping. Any other connection failing that way (new, or
  reused at once: the upstream read the request, then closed) raises ``ClosedBeforeAnswer``: the
  upstream may have received the request and be billing it, so it is not sent again. (Go's
  net/http resends a POST only when none of it was written or when it carries an
  ``Idempotency-Key`` header.)
- Timeouts cost no task and no timer per request: ``connect_timeout_s`` covers the TCP (and
  TLS) handshake (``asyncio.timeout``, ``ConnectFailed``); ``read_timeout_s`` the wait for the
  status and headers (``ReadTimedOut``), then the longest silence between body bytes
  (``StreamBroken``), not counting time the consumer holds reading paused. Those two are checked
  by one watchdog timer per client, every ``read_timeout_s / 10`` (at most 1 s, at least 5 ms)
  while requests are in flight, so they fire up to that tick late. (A ``call_later`` plus
  ``cancel`` per request was ~1.3 µs of the ~15.)
- Bodies: content-length, chunked (``chunks()`` yields the de-chunked data as it arrives) and
  read-until-close. Past 64 KiB buffered and unread, reading from the socket pauses until the
  consumer catches up (``read()`` never pauses: it wants the whole body anyway).
- ``read()`` holds at most ``max_answer_bytes`` of a body: an answer whose content-length says
  more is refused as soon as ``read()`` sees it, one that grows past it (chunked, or until close)
  as the byte that crosses it arrives; either way ``AnswerTooLarge``, the connection closed and
  what it had buffered dropped. (A broken or hostile upstream could otherwise make the gateway
  buffer gigabytes, and die with every request in flight.) ``chunks()`` is not limited: it never
  holds the body whole.
- Request headers named hop-by-hop are dropped; ``host`` and ``content-length`` are set here;
  header names or values containing CR, LF or NUL raise ``ValueError`` before anything is sent.

Limits (the gateway needs none of these): HTTP/1.1 only (no HTTP/2, no pipelining), no proxies,
no redirects, no cookies, no decompression, no ``Expect: 100-continue``, no credentials in URLs,
request bodies as bytes only. A client belongs to the event loop that first uses it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from keyplane.gateway.transport import (
    HOP_BY_HOP,
    AnswerTooLarge,
    ClosedBeforeAnswer,
    ConnectFailed,
    Headers,
    InvalidAnswer,
    PoolBusy,
    ReadTimedOut,
    StreamBroken,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)

__all__ = ["H1Client"]

POOL_WAIT_S = 60.0  # the longest a request waits for a free connection (as the send timeout)
MAX_ANSWER_BYTES = 256 * 1024 * 1024  # the largest body read() holds (keyplane's default)

PoolKey = tuple[str, str, int]  # (scheme, host, port)

_HIGH_WATER: Final = 65536  # bytes buffered and unread before reading from the socket pauses
_CACHE_MAX = 256  # parsed URLs (and methods) kept; a gateway uses a handful
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # send content-length: 0 without a body
_BAD_TARGET = frozenset(" \t\r\n\0")

# Where a connection is in its current exchange.
_IDLE = 0  # no request (in the pool, or being handed out)
_HEAD = 1  # request sent, waiting for the status and headers
_BODY = 2  # headers in, body arriving
_DONE = 3  # the whole answer arrived


STALE_IDLE_S = 1.0  # idle this long, a connection closed unanswered was the upstream's timeout


class _Stale(ConnectFailed):
    """A reused connection was closed before any byte of the answer: send the request again."""


class _Conn(asyncio.Protocol):
    """One connection to an upstream, and the state of the one exchange it carries at a time."""

    __slots__ = (
        "buf",
        "buffered",
        "client",
        "dead",
        "error",
        "framing",
        "got_bytes",
        "headers",
        "idle_for",
        "informational",
        "is_head",
        "keep",
        "key",
        "last_data",
        "limit",
        "loop",
        "max_answer",
        "on_lost",
        "parser",
        "paused",
        "pooled",
        "read_timeout",
        "started",
        "state",
        "status",
        "transport",
        "uses",
        "waiter",
    )

    def __init__(self, client: H1Client, key: PoolKey, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.key = key
        self.loop = loop
        self.read_timeout = client._read_timeout
        self.max_answer = client._max_answer
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.dead = False  # closed, or the upstream closed it: never used again
        self.pooled = False  # in the client's idle list
        self.uses = 0  # requests sent on it; > 1 means reused
        self.on_lost: asyncio.Future[None] | None = None  # set by H1Client.aclose
        # The current exchange.
        self.state = _IDLE
        self.is_head = False
        self.got_bytes = False  # any byte of the answer arrived
        self.status = 0
        self.headers: Headers = []
        # The content-length's digits or the transfer-encoding's codings; b"" (neither): the body
        # ends when the connection closes.
        self.framing = b""
        self.informational = False  # parsing a 1xx answer, which the real one follows
        self.keep = False  # the connection may carry another request after this answer
        self.buf: list[bytes] = []  # body pieces not yet handed to the consumer
        self.buffered = 0
        # Past this many bytes buffered, on_body acts: it pauses reading (_HIGH_WATER), or, once
        # read() wants the whole body (max_answer), refuses it. One comparison a piece either way.
        self.limit = _HIGH_WATER
        self.paused = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None  # the consumer waiting for news
        self.started = 0.0  # when the request was sent
        self.idle_for = 0.0  # how long it lay idle before this request
        self.last_data = 0.0  # when bytes last arrived (or reading resumed)

    # --- the exchange, driven by H1Client.request and _H1Response ------------------------------

    def send(self, data: bytes, is_head: bool) -> asyncio.Future[None]:
        """Sends the request; the future resolves when the status and headers arrived, or not."""
        transport = self.transport
        assert transport is not None
        self.uses += 1
        self.state = _HEAD
        self.is_head = is_head
        self.got_bytes = False
        self.headers = []
        self.framing = b""
        self.buf = []
        self.buffered = 0
        self.limit = _HIGH_WATER
        self.error = None
        if self.paused:  # the previous answer ended with reading paused
            self.paused = False
            transport.resume_reading()
        now = self.loop.time()
        self.idle_for = now - self.last_data  # since its last answer's last bytes (if reused)
        self.started = self.last_data = now
        if self.client._watchdog is None:
            self.client._watch_soon(self.loop)
        transport.write(data)
        waiter = self.waiter = self.loop.create_future()
        return waiter

    def wait(self) -> asyncio.Future[None]:
        """A future resolved when more of the body (or its end, or an error) arrives."""
        if self.paused:
            self.paused = False
            self.last_data = self.loop.time()  # the silence while paused was ours
            assert self.transport is not None
            self.transport.resume_reading()
        waiter = self.waiter = self.loop.create_future()
        return waiter

    def take(self) -> bytes:
        """Hands over the buffered body pieces as one bytes object."""
        buf = self.buf
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        self.buf = []
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.last_data = self.loop.time()
            assert self.transport is not None
            self.transport.resume_reading()
        return data

    def finish(self) -> None:
        """The consumer is done: back to the pool if the answer is complete, else closed."""
        if self.state == _DONE and self.keep and not self.dead:
            self.state = _IDLE
            self.client._release(self)
        else:
            self.abort(None)

    def abort(self, error: UpstreamError | None) -> None:
        """Closes the connection (for good); ``error`` is what the exchange in progress raises."""
        if error is not None and self.error is None and (self.state in (_HEAD, _BODY)):
            self.error = error
        if not self.dead:
            self._drop()
            if self.transport is not None:
                self.transport.abort()
        self._wake()

    def _drop(self) -> None:
        self.dead = True
        self.client._forget(self)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _complete(self) -> None:
        self.state = _DONE
        self._wake()

    def check(self, now: float) -> None:
        """The watchdog's round: fails an exchange that waited too long."""
        limit = self.read_timeout
        if self.state == _HEAD and now - self.started >= limit:
            self.abort(ReadTimedOut(f"no answer within {limit:g} s"))
        # While reading is paused, the consumer is the slow one.
        elif self.state == _BODY and not self.paused and now - self.last_data >= limit:
            self.abort(StreamBroken(f"the body stalled for {limit:g} s"))

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state != _HEAD and state != _BODY:
            self.abort(None)  # bytes nobody asked for: the connection is out of step
            return
        self.got_bytes = True
        self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            # Bytes came back: the request was delivered, so never "safe to retry".
            message = f"invalid answer from the upstream: {exc}"
            self.abort(InvalidAnswer(message) if self.state == _HEAD else StreamBroken(message))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.on_lost is not None and not self.on_lost.done():
            self.on_lost.set_result(None)
        if self.dead:
            return
        self._drop()
        if self.state == _HEAD:
            if not self.got_bytes and self.uses > 1 and self.idle_for >= STALE_IDLE_S:
                self.error = _Stale("the upstream closed the keep-alive connection")
            else:
                self.error = ClosedBeforeAnswer(
                    f"the upstream closed the connection before answering ({exc or 'EOF'})"
                )
        elif self.state == _BODY:
            if exc is None and not self.framing:
                self.keep = False
                self._complete()  # a body delimited by the end of the connection
                return
            self.error = StreamBroken(
                f"the upstream closed the connection mid-body ({exc or 'EOF'})"
            )
        self._wake()

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state != _HEAD:
            raise ValueError("an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state == _BODY:
            # A trailer field of a chunked body: dropped. Merged into the headers, it would
            # replace what the head said (a trailer's content-type, say; RFC 9110 6.5.1).
            return
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"content-length" or name == b"transfer-encoding":
                self.framing = value
        else:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:  # 1xx (103 Early Hints...): informational, the real answer follows
            self.informational = True
            self.headers = []
            self.framing = b""
            return
        self.status = status
        self.keep = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        self.state = _BODY
        if self.is_head:
            # An answer to HEAD has no body whatever its headers say, which llhttp cannot be
            # told through httptools: the next answer gets a fresh parser.
            self.parser = HttpResponseParser(self)
            self._complete()
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self.buf.append(body)
        self.buffered += len(body)
        if self.buffered > self.limit:
            self._full()
        if self.waiter is not None:
            self._wake()

    def _full(self) -> None:
        if self.limit != self.max_answer:  # (H1Client keeps max_answer above _HIGH_WATER)
            if not self.paused:  # the consumer of chunks() is behind: wait for it
                self.paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        # read() would hold more than max_answer: refused. The error raised stops the parser in
        # the middle of the bytes it is given (the rest would be buffered again, and their end
        # would complete the answer); data_received, catching it, keeps this error.
        self.buf = []
        self.buffered = 0
        error = AnswerTooLarge(self.max_answer)
        self.abort(error)
        raise error

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
        else:
            self._complete()


class _H1Response(UpstreamResponse):
    __slots__ = ("_body", "_conn", "headers", "status")

    def __init__(self, conn: _Conn) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._conn: _Conn | None = conn
        self._body: bytes | None = None  # what read() returned (b"" once chunks() ran out)

    async def read(self) -> bytes:
        conn = self._conn
        if conn is None:
            if self._body is None:
                raise StreamBroken("the response was closed before its body was read")
            return self._body
        # From here on_body refuses a body growing past the limit, instead of pausing.
        limit = conn.limit = conn.max_answer
        if conn.buffered > limit:  # (arrived before read() was called)
            self._too_large(conn)
        if conn.state != _DONE:
            framing = conn.framing
            if framing.isdigit() and int(framing) > limit:  # refused before its body arrives
                self._too_large(conn)
            while conn.state != _DONE:
                if conn.error is not None or conn.dead:
                    self._broken(conn, b"".join(conn.buf))
                await conn.wait()
        body = conn.take() if conn.buf else b""
        self._body = body
        self._conn = None
        conn.finish()
        return body

    def chunks(self) -> AsyncIterator[bytes]:
        return self

    def __aiter__(self) -> _H1Response:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        while not conn.buf:
            if conn.state == _DONE:
                self._conn = None
                self._body = b""
                conn.finish()
                raise StopAsyncIteration
            if conn.error is not None or conn.dead:
                self._broken(conn)
            await conn.wait()
            if self._conn is not conn:  # closed meanwhile
                raise StopAsyncIteration
        return conn.take()

    @property
    def drained(self) -> bool:
        conn = self._conn
        return conn is None or (conn.state == _DONE and not conn.buf)

    def _too_large(self, conn: _Conn) -> None:
        self._conn = None
        conn.buf = []  # (dropped now, not when the connection object goes)
        conn.buffered = 0
        conn.abort(None)
        raise AnswerTooLarge(conn.max_answer)

    def _broken(self, conn: _Conn, partial: bytes = b"") -> None:
        self._conn = None
        conn.abort(None)
        error = conn.error or StreamBroken("the connection was closed mid-body")
        error.partial = partial
        raise error

    async def aclose(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish()


class H1Client(UpstreamClient):
    """HTTP/1.1 to upstreams with a keep-alive pool; see the module docstring."""

    def __init__(
        self, *, max_connections: int, connect_timeout_s: float, read_timeout_s: float,
        pool_wait_s: float = POOL_WAIT_S, max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:  # fmt: skip
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if max_answer_bytes <= _HIGH_WATER:  # (on_body tells read()'s limit from the pause's)
            raise ValueError(f"max_answer_bytes must be more than {_HIGH_WATER}")
        self._max = max_connections
        self._max_answer = max_answer_bytes
        self._connect_timeout = connect_timeout_s
        self._pool_wait = pool_wait_s
        self._read_timeout = read_timeout_s
        self._open = 0  # connections counted against max_connections (connecting included)
        self._conns: set[_Conn] = set()  # every open connection
        self._idle: dict[PoolKey, list[_Conn]] = {}
        # Callers waiting for a connection: (pool key, or None for "a new one"; future resolved
        # with a connection handed over, or None to look again).
        self._waiters: deque[tuple[PoolKey | None, asyncio.Future[_Conn | None]]] = deque()
        self._targets: dict[str, tuple[PoolKey, bytes, bytes]] = {}
        self._methods: dict[str, bytes] = {}
        self._ssl: ssl.SSLContext | None = None
        # One timer for all read timeouts, running while requests are in flight: cheaper than a
        # timer per request; a timeout fires up to a tick late.
        self._tick = min(1.0, max(0.005, read_timeout_s / 10))
        self._watchdog: asyncio.TimerHandle | None = None

    async def request(
        self, method: str, url: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        target = self._targets.get(url)
        if target is None:
            target = self._target(url)
        key, host, path = target
        data = self._encode(method, host, path, headers, body)
        is_head = method == "HEAD"
        idle = self._idle.get(key)
        if idle:  # the hot path, inline
            conn = idle.pop()
            conn.pooled = False
        else:
            conn = await self._acquire(key, True)
        while True:
            waiter = conn.send(data, is_head)
            try:
                await waiter
            except BaseException:  # cancelled: the answer will never be read
                conn.abort(None)
                raise
            if conn.state != _HEAD:  # the headers are in (a later error is the body's)
                return _H1Response(conn)
            error = conn.error or ConnectFailed("the connection was closed")
            if not isinstance(error, _Stale):
                raise error
            conn = await self._acquire(key, False)  # a new connection never raises _Stale

    async def aclose(self) -> None:
        """Closes every connection (answers being read raise StreamBroken)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiters, self._waiters = self._waiters, deque()
        for _, fut in waiters:
            if not fut.done():
                fut.set_exception(ConnectFailed("the client was closed"))
        if not self._conns:
            return
        loop = asyncio.get_running_loop()
        lost: list[asyncio.Future[None]] = []
        for conn in list(self._conns):
            conn.on_lost = loop.create_future()
            lost.append(conn.on_lost)
            conn.abort(
                ConnectFailed("the client was closed")
                if conn.state == _HEAD
                else StreamBroken("the client was closed")
            )
        await asyncio.wait(lost, timeout=5)  # sockets are closed once connection_lost ran

    # --- requests -----------------------------------------------------------------------------

    def _target(self, url: str) -> tuple[PoolKey, bytes, bytes]:
        """(pool key, host header value, request target) of a URL, cached."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in ("http", "https") or not host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in upstream URLs are not supported")
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if not _BAD_TARGET.isdisjoint(path):
            raise ValueError(f"invalid request target: {path!r}")
        named = f"[{host}]" if ":" in host else host
        host_header = named if port == default else f"{named}:{port}"
        target = ((scheme, host, port), host_header.encode("idna"), path.encode("ascii"))
        if len(self._targets) >= _CACHE_MAX:
            self._targets.clear()
        self._targets[url] = target
        return target

    def _encode(
        self, method: str, host: bytes, path: bytes, headers: Headers, body: bytes | None
    ) -> bytes:
        """The whole request as bytes: request line, headers, body."""
        verb = self._methods.get(method)
        if verb is None:
            if not (method.isascii() and method.isalpha() and method.isupper()):
                raise ValueError(f"invalid method: {method!r}")
            verb = method.encode("ascii")
            if len(self._methods) < _CACHE_MAX:
                self._methods[method] = verb
        lines = [b": ".join(h) for h in headers if h[0].lower() not in HOP_BY_HOP]
        if lines:
            block = b"\r\n".join(lines)
            # Each separator adds one CR and one LF: any other is in a name or a value. (find, not
            # `in`: `bytes in bytes` first tries its operand as an integer, formatting a TypeError.)
            seps = len(lines) - 1
            if block.count(b"\r") != seps or block.count(b"\n") != seps or block.find(b"\0") >= 0:
                raise ValueError("header names and values must not contain CR, LF or NUL")
            block += b"\r\n"
        else:
            block = b""
        if body is None:
            body = b""
            length = b"content-length: 0\r\n\r\n" if method in _BODY_METHODS else b"\r\n"
        else:
            length = b"content-length: %d\r\n\r\n" % len(body)
        return b"".join(
            (verb, b" ", path, b" HTTP/1.1\r\nhost: ", host, b"\r\n", block, length, body)
        )

    def _watch_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = loop.call_later(self._tick, self._watch, loop)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = None
        now = loop.time()
        busy = False
        for conn in list(self._conns):
            if conn.state == _HEAD or conn.state == _BODY:
                busy = True
                conn.check(now)
        if busy:
            self._watch_soon(loop)

    # --- the pool -----------------------------------------------------------------------------

    def pool(self) -> tuple[int, int, int]:
        idle = sum(len(conns) for conns in self._idle.values())
        return (self._open, idle, sum(1 for _, fut in self._waiters if not fut.done()))

    async def _acquire(self, key: PoolKey, reuse: bool) -> _Conn:
        """An idle connection to ``key`` (when ``reuse``) or a new one, within max_connections."""
        while True:
            if reuse:
                idle = self._idle.get(key)
                if idle:
                    conn = idle.pop()
                    conn.pooled = False
                    return conn
            if self._open < self._max:
                return await self._connect(key)
            if self._evict():
                continue
            fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
            self._waiters.append((key if reuse else None, fut))
            try:
                # Every connection busy (max_connections): wait (a burst queues), but not for
                # ever (the server cuts clients that stop reading after its send timeout).
                async with asyncio.timeout(self._pool_wait):
                    handed = await fut
            except (asyncio.CancelledError, TimeoutError) as exc:
                if fut.done() and not fut.cancelled():  # woken, then cancelled: pass it on
                    passed = fut.result()
                    if passed is not None:
                        self._release(passed)
                    else:
                        self._wake_waiter()
                fut.cancel()
                if isinstance(exc, TimeoutError):
                    raise PoolBusy(
                        f"no connection to {key[1]}:{key[2]} came free within "
                        f"{self._pool_wait:g} s (all {self._max} busy)"
                    ) from None
                raise
            if handed is not None and not handed.dead:
                return handed

    async def _connect(self, key: PoolKey) -> _Conn:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        conn = _Conn(self, key, loop)
        self._open += 1
        try:
            async with asyncio.timeout(self._connect_timeout):
                if scheme == "https":
                    await loop.create_connection(
                        lambda: conn, host, port, ssl=self._ssl_context(), server_hostname=host
                    )
                else:
                    await loop.create_connection(lambda: conn, host, port)
        except BaseException as exc:
            self._open -= 1
            self._wake_waiter()
            if isinstance(exc, TimeoutError):
                raise ConnectFailed(f"connecting to {host}:{port} timed out") from exc
            if isinstance(exc, OSError):
                raise ConnectFailed(f"cannot connect to {host}:{port}: {exc}") from exc
            raise
        self._conns.add(conn)
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, conn: _Conn) -> None:
        """A connection whose answer is complete: to the first waiter for it, or the pool."""
        waiters = self._waiters
        while waiters:
            key, fut = waiters.popleft()
            if fut.done():
                continue
            if key == conn.key:
                fut.set_result(conn)
                return
            self._put_idle(conn)  # the waiter wants another upstream: it will evict this one
            fut.set_result(None)
            return
        self._put_idle(conn)

    def _put_idle(self, conn: _Conn) -> None:
        conn.pooled = True
        idle = self._idle.get(conn.key)
        if idle is None:
            self._idle[conn.key] = [conn]
        else:
            idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        """A connection closed: its slot is free."""
        if conn not in self._conns:  # its connect failed; _connect gave the slot back
            return
        self._conns.remove(conn)
        self._open -= 1
        if conn.pooled:
            conn.pooled = False
            self._idle[conn.key].remove(conn)
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        waiters = self._waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _evict(self) -> bool:
        """Closes the oldest idle connection, if any, to make room for another."""
        for idle in self._idle.values():
            if idle:
                idle[0].abort(None)
                return True
        return False
