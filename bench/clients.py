"""Micro-benchmark of the upstream HTTP clients alone: CPU time per request, AiohttpClient vs H1Client.

    .venv/bin/python bench/clients.py                  # ~30 s
    .venv/bin/python bench/clients.py --requests 10000 --loops uvloop

Each client sends the benchmark's chat request (fixtures.CHAT_REQUEST, with the headers the router
forwards) as POST and reads the fixed 626-byte JSON answer (fixtures.CHAT_RESPONSE, with
content-length) the way the pipeline does: ``request``, ``read``, ``aclose``. ``--concurrency``
workers (tasks) share one client; each measurement is ``--requests`` requests after a warm-up,
and the figure is CPU time of this process (``time.process_time``, user + system) divided by the
requests, median of ``--repeats`` runs (clients and concurrencies interleaved, so a drift of the
machine hits all alike). This process is pinned to ``--client-cpu``, the upstream to
``--server-cpu``: nginx from bench/stub.py (``--server nginx``, the default), or a raw asyncio
server on uvloop that answers every request with the same bytes (``--server raw``).

A third client, ``floor``, is what no client on that loop can beat: one write of a request built
once, then a wait for as many bytes as the fixed answer has (no parsing, no pool logic, no
timeouts). The distance from it is the client's own Python.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import fixtures
import uvloop
from harness import HOST, BenchError, free_port, log, workdir
from stub import Stub

from keyplane.gateway.h1client import H1Client
from keyplane.gateway.transport import (
    HOP_BY_HOP,
    ConnectFailed,
    Headers,
    ReadTimedOut,
    StreamBroken,
    UpstreamClient,
    UpstreamResponse,
    clean_headers,
)


# keyplane's production client before H1Client (commit 0880ff8), kept here for the comparison.
class AiohttpClient(UpstreamClient):
    def __init__(
        self, *, max_connections: int, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession belongs to the event loop that first uses it.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # an upstream's cookies are none of ours
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def request(
        self, method: str, url: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        str_headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in headers
            if k.lower() not in HOP_BY_HOP
        ]
        try:
            resp = await self._get_session().request(
                method, url, headers=str_headers, data=body, allow_redirects=False
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectFailed("connect timed out") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ReadTimedOut("timed out waiting for the upstream") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpResponse(UpstreamResponse):
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = clean_headers(resp.raw_headers)

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._resp.release()


class _FloorConn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pieces: list[bytes] = []
        self.need = 0
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        self.need -= len(data)
        if self.need <= 0 and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _FloorResponse(UpstreamResponse):
    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.headers = []
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    async def aclose(self) -> None:
        pass


class FloorClient(UpstreamClient):
    """The floor under any client on this loop: one write of a request built once, then a wait
    for as many bytes as the (fixed) answer has; no parsing, no timers, no limit. Only for
    bench's fixed answers: the length is learnt from the first one."""

    def __init__(self) -> None:
        self._idle: list[_FloorConn] = []
        self._all: list[_FloorConn] = []
        self._data = b""
        self._size = 0

    async def request(
        self, method: str, url: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        if not self._data:
            host, port = url.split("/")[2].split(":")
            self._addr = (host, int(port))
            path = "/" + url.split("/", 3)[3]
            lines = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            self._data = b"%s %s HTTP/1.1\r\nhost: %s\r\n%scontent-length: %d\r\n\r\n%s" % (
                method.encode(), path.encode(), url.split("/")[2].encode(), lines, len(body or b""), body or b"",
            )  # fmt: skip
        if self._idle:
            conn = self._idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(_FloorConn, *self._addr)
            self._all.append(conn)
        assert conn.transport is not None
        conn.pieces = []
        conn.need = self._size  # 0 while unknown: every piece wakes the waiter
        conn.waiter = asyncio.get_running_loop().create_future()
        conn.transport.write(self._data)
        await conn.waiter
        # The first answers (warm-up) tell the length of all: headers + content-length.
        while not self._size and not self._learn(b"".join(conn.pieces)):
            conn.waiter = asyncio.get_running_loop().create_future()
            await conn.waiter
        conn.waiter = None
        self._idle.append(conn)
        return _FloorResponse(b"".join(conn.pieces)[-len(fixtures.CHAT_RESPONSE) :])

    def _learn(self, raw: bytes) -> bool:
        head, sep, _ = raw.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        if len(raw) < len(head) + 4 + length:
            return False
        self._size = len(head) + 4 + length
        return True

    async def aclose(self) -> None:
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)


CLIENTS: dict[str, Callable[[], UpstreamClient]] = {
    "aiohttp": lambda: AiohttpClient(max_connections=512, connect_timeout_s=5, read_timeout_s=60),
    "h1": lambda: H1Client(max_connections=512, connect_timeout_s=5, read_timeout_s=60),
    "floor": FloorClient,
}
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
# What the router forwards for a typical SDK request (gateway/upstreams.py drops the rest).
HEADERS = [
    (b"content-type", b"application/json"),
    (b"accept", b"application/json"),
    (b"user-agent", b"OpenAI/Python 1.54.4"),
    (b"x-stainless-lang", b"python"),
    (b"x-stainless-package-version", b"1.54.4"),
    (b"x-stainless-runtime", b"CPython"),
    (b"accept-encoding", b"identity"),
    (b"authorization", b"Bearer sk-upstream-0123456789abcdef0123456789abcdef"),
]


# --- the raw upstream (--server raw) -------------------------------------------------------------


def serve_raw(port: int) -> None:
    """Answers every request (read up to the end of its declared body) with the fixed JSON."""
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        % len(fixtures.CHAT_RESPONSE)
        + fixtures.CHAT_RESPONSE
    )

    class Answerer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower()
                at = head.find(b"content-length: ")
                length = int(head[at + 16 : head.find(b"\r\n", at)]) if at >= 0 else 0
                if len(buf) < end + 4 + length:
                    break
                buf = buf[end + 4 + length :]
                self.transport.write(answer)
            self.buf = buf

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Answerer, HOST, port, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


class RawServer:
    def __init__(self, cpu: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), sys.executable, __file__, "--serve", str(self.port)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError("the raw server did not start") from None
                time.sleep(0.05)

    @property
    def upstream(self) -> str:
        return f"http://{HOST}:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- the measurement -----------------------------------------------------------------------------


async def burst(client: UpstreamClient, url: str, concurrency: int, requests: int) -> None:
    per_worker = requests // concurrency
    expected = len(fixtures.CHAT_RESPONSE)

    async def worker() -> None:
        for _ in range(per_worker):
            resp = await client.request("POST", url, HEADERS, fixtures.CHAT_REQUEST)
            try:
                body = await resp.read()
            finally:
                await resp.aclose()
            if resp.status != 200 or len(body) != expected:
                raise BenchError(f"unexpected answer: {resp.status}, {len(body)} bytes")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(name: str, url: str, concurrency: int, requests: int) -> tuple[float, float]:
    """(CPU µs per request, requests per second) of one run on a fresh, warmed-up client."""
    client = CLIENTS[name]()
    try:
        await burst(client, url, concurrency, max(concurrency * 20, 500))
        gc.collect()
        requests -= requests % concurrency
        cpu, wall = time.process_time(), time.perf_counter()
        await burst(client, url, concurrency, requests)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await client.aclose()
    return cpu / requests * 1e6, requests / wall


def run(
    args: argparse.Namespace, url: str
) -> dict[tuple[str, str, int], list[tuple[float, float]]]:
    results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for loop_name in args.loops:
        for repeat in range(args.repeats):
            for c in args.concurrency:
                for name in args.clients:
                    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
                        figures = runner.run(measure(name, url, c, args.requests))
                    results.setdefault((loop_name, name, c), []).append(figures)
                    log(
                        f"{loop_name} {name:8} c={c:<3} run {repeat + 1}: "
                        f"{figures[0]:6.1f} µs/req, {figures[1]:7.0f} req/s"
                    )
    return results


def table(
    args: argparse.Namespace, results: dict[tuple[str, str, int], list[tuple[float, float]]]
) -> str:
    cs = args.concurrency
    head = "| loop | client | " + " | ".join(f"c={c} µs/req (req/s)" for c in cs) + " |"
    rows = [head, "|" + "---|" * (2 + len(cs))]
    for loop_name in args.loops:
        for name in args.clients:
            cells = []
            for c in cs:
                runs = results[(loop_name, name, c)]
                cpu = statistics.median(r[0] for r in runs)
                rps = statistics.median(r[1] for r in runs)
                cells.append(f"{cpu:.1f} ({rps:,.0f})")
            rows.append(f"| {loop_name} | {name} | " + " | ".join(cells) + " |")
        if {"aiohttp", "h1"} <= set(args.clients):
            cells = []
            for c in cs:
                a = statistics.median(r[0] for r in results[(loop_name, "aiohttp", c)])
                h = statistics.median(r[0] for r in results[(loop_name, "h1", c)])
                cells.append(f"{h / a:.2f}×")
            rows.append(f"| {loop_name} | h1 / aiohttp CPU | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--server", choices=("nginx", "raw"), default="nginx")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64]
    )
    parser.add_argument("--clients", type=lambda s: s.split(","), default=list(CLIENTS))
    parser.add_argument("--loops", type=lambda s: s.split(","), default=list(LOOPS))
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_raw(args.serve)
        return
    if (os.cpu_count() or 1) < 2:
        log("WARNING: one core: client and server share it; figures include the server's work")
    else:
        os.sched_setaffinity(0, {args.client_cpu})
    with workdir(keep=False) as work:
        server: Stub | RawServer
        if args.server == "nginx":
            server = Stub(work, str(args.server_cpu))
            server.start()
        else:
            server = RawServer(args.server_cpu)
        try:
            results = run(args, server.upstream + "/v1/chat/completions")
        finally:
            server.close()
    print(
        f"\nCPU µs per request of this process (median of {args.repeats} × {args.requests} "
        f"requests; req/s in brackets), {args.server} upstream on CPU {args.server_cpu}, "
        f"client on CPU {args.client_cpu}, Python {sys.version.split()[0]}:\n"
    )
    print(table(args, results))


if __name__ == "__main__":
    main()
