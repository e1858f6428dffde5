"""Loaded by ``keyplane serve`` when bench/stalls.py puts this directory on PYTHONPATH (and sets
KEYPLANE_BENCH_STALLS to an output file): times every uninterrupted piece of the gateway's request
handling and background work on the event loop (each ``send()`` into the coroutine, i.e. from one
await to the next), samples an event's wait for the loop, times each cyclic garbage collection
and, per request, the whole time from the app call to its end. SIGUSR2 writes the figures as
JSON. A bench tool: it reaches into the gateway's private attributes and fails loudly at start if
they are gone."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Generator
from time import perf_counter
from typing import Any

OUT = os.environ.get("KEYPLANE_BENCH_STALLS")
PIECES: dict[str, list[float]] = {}  # activity → durations of its uninterrupted pieces (s)
WHOLE: list[float] = []  # per request: app called → app returned (s)
PROBE_S = 0.001  # how often the loop's waits are sampled
PROBE = "an event's wait for the loop (sampled each ms)"


class _Timed:
    """Awaits ``coro``, timing each step of it (one ``send``/``throw``)."""

    __slots__ = ("coro", "pieces", "whole")

    def __init__(self, coro: Any, name: str, whole: list[float] | None = None) -> None:
        self.coro, self.pieces, self.whole = coro, PIECES.setdefault(name, []), whole

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value, error, began = self.coro, None, None, perf_counter()
        while True:
            start = perf_counter()
            try:
                future = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as done:
                self.pieces.append(perf_counter() - start)
                if self.whole is not None:
                    self.whole.append(perf_counter() - began)
                return done.value
            self.pieces.append(perf_counter() - start)
            try:
                value, error = (yield future), None
            except BaseException as exc:  # (delivered into the coroutine, as await would)
                value, error = None, exc


def _timed(fn: Callable[[], Awaitable[Any]], name: str) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return await _Timed(fn(), name)

    return run


def _install() -> None:
    from keyplane import server
    from keyplane.gateway import app as gateway_app

    original_run = server.run

    def run(main: Any) -> None:
        async def timed_main() -> None:
            _probe_waits(asyncio.get_running_loop())
            await main

        original_run(timed_main())

    server.run = run
    if not server.compiled():  # (compiled classes cannot be patched: waits and collections only)
        _patch_gateway(gateway_app.Gateway)

    def dump(*_: Any) -> None:
        assert OUT is not None
        with open(OUT + ".part", "w") as f:
            json.dump({"pieces": PIECES, "whole": WHOLE}, f)
        os.replace(OUT + ".part", OUT)  # (whole or not there: the reader polls for it)

    signal.signal(signal.SIGUSR2, dump)
    gc.callbacks.append(_gc_timer())


def _probe_waits(loop: asyncio.AbstractEventLoop) -> None:
    """Samples how long an event waits for the loop, about every ``PROBE_S``: a timer queues a
    callback, which notes how long it waited to run (what was left of that pass of the loop, then
    the next pass up to it). A stall shows in the samples that fell in it. The timer only picks
    the moments (uvloop's clock counts whole milliseconds); the wait is timed with perf_counter.

    (It used to time every pass, with a callback always queued for the next one. That kept the
    loop from ever waiting in epoll while busy and changed what it measured: chat at c=16 did 7 %
    fewer requests a second and its p99 went from 3.2 to 4.5 ms, bench/RESULTS.md 2026-12-06.
    Queued once a millisecond, the loop waits as it would in between.)"""
    waits = PIECES.setdefault(PROBE, [])

    def queued(at: float) -> None:
        waits.append(perf_counter() - at)
        loop.call_later(PROBE_S, sample)

    def sample() -> None:
        loop.call_soon(queued, perf_counter())

    loop.call_later(PROBE_S, sample)


def _patch_gateway(cls: Any) -> None:
    original_init, original_call = cls.__init__, cls.__call__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._loops = [(s, _timed(fn, getattr(fn, "__name__", "loop"))) for s, fn in self._loops]
        if self._after_flush is not None:
            self._after_flush = _timed(self._after_flush, "after_flush")
        money = self.pipeline.money
        money._tidy_journal = _timed(money._tidy_journal, "tidy_journal")

    def __call__(self: Any, scope: Any, receive: Any, send: Any) -> Any:
        return _Timed(original_call(self, scope, receive, send), "request", WHOLE)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.__call__ = __call__  # type: ignore[method-assign]


def _gc_timer() -> Callable[[str, dict[str, int]], None]:
    """Times each cyclic garbage collection (it holds the loop like any piece), per generation."""
    began = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal began
        if phase == "start":
            began = perf_counter()
        else:
            PIECES.setdefault(f"gc, generation {info['generation']}", []).append(
                perf_counter() - began
            )

    return on_gc


if OUT and "serve" in sys.argv:
    _install()
