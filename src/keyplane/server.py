"""Running the ASGI app: keyplane's HTTP/1.1 server (h1server.py) on uvloop, and process tuning."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import gc
import os
import platform
import signal
import socket
from collections.abc import Coroutine, Sequence
from typing import Any

from keyplane import h1server, sched
from keyplane.h1server import Server


def bind(host: str, port: int) -> socket.socket:
    """Binds a listening socket now, so the port is known (and taken) before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this on Linux. Without it, a response written as headers then
    # body waits for the client's delayed ACK (~40 ms per request) under Nagle's algorithm.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def compiled() -> bool:
    """Whether the request path runs compiled by mypyc (scripts/compile.py, build/compiled/src on
    PYTHONPATH): its modules are then extension modules, not .py files."""
    return not (h1server.__file__ or "").endswith(".py")


def make_server(app: Any, *, access_log: bool = False) -> Server:
    """keyplane's HTTP/1.1 server (h1server.py) for ``app``, which also gets the ASGI lifespan.

    Idle keep-alive connections are kept ``KEEP_ALIVE_S``: longer than clients keep them (httpx,
    hence the OpenAI SDK: 5 s). At uvicorn's old default of 5 s, server and client expired an
    idle connection at the same moment, and a request sent on it just then failed with a reset
    (seen in CI under load). X-Forwarded-For is not interpreted here: keyplane reads it itself,
    only from its configured trusted proxies (gateway/access.py)."""
    return Server(app, keep_alive_s=KEEP_ALIVE_S, graceful_s=10.0, access_log=access_log)


def stop_on_signals(servers: Sequence[Server]) -> None:
    """SIGTERM or SIGINT (Ctrl-C) stops ``servers`` gracefully: requests in flight finish and
    settled usage is written. Call on the serving event loop, in the main thread."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def tune_gc() -> None:
    """Moves what exists at start (modules, classes, the app) out of the cyclic collector's sight
    and collects the youngest generation less often: each request allocates many short-lived
    containers, and every full collection would otherwise walk every object of the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


_M_ARENA_MAX = -8  # glibc's mallopt parameter
KEEP_ALIVE_S = 75  # idle keep-alive connections are closed after this (nginx's default too)


def one_malloc_arena() -> bool:
    """Asks glibc for a single malloc arena; returns whether that was applied. Each thread that
    allocates gets an arena of its own by default (up to 8 per core), and memory freed in one is
    not reused by another: a 4-minute soak peaked at 111 MB with one arena against 123 MB without
    (bench/RESULTS.md). Threads here take turns on the GIL anyway, so a shared arena costs nothing
    measurable. Left alone when the operator set ``MALLOC_ARENA_MAX`` or the C library is not
    glibc. Call before any thread starts."""
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


def io_threads() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that run blocking database calls (settlement batches, change feeds, keys not
    cached yet). Two: SQLite writes are serialized anyway, and each thread costs memory — its own
    malloc arena and database connection: with Python's default (6 here) the gateway grew to
    ~185 MB over a 10-minute soak, with two it stays at ~115 MB (bench/RESULTS.md)."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=2, thread_name_prefix="keyplane-io", initializer=sched.worker_thread
    )


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs ``main`` (the servers) on uvloop."""
    import uvloop

    tune_gc()
    one_malloc_arena()
    sched.set_time_slice(sched.LOOP_SLICE_NS)  # (this thread runs the loop: keyplane/sched.py)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.get_loop().set_default_executor(io_threads())
        runner.run(main)
