"""Loaded by ``keyplane serve`` when bench/stalls.py puts this directory on PYTHONPATH (and sets
KEYPLANE_BENCH_STALLS to an output file): times every uninterrupted piece of the gateway's request
handling and background work on the event loop (each ``send()`` into the coroutine, i.e. from one
await to the next), each pass of the busy loop, each cyclic garbage collection, and, per request,
the whole time from the app call to its end. SIGUSR2 writes the figures as JSON. A bench tool: it
reaches into the gateway's private attributes and fails loudly at start if they are gone."""

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
IDLE_PASS_S = 0.000015  # a pass this short: the loop had nothing else to do
IDLE_WAIT_S = 0.0005


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
            _time_passes(asyncio.get_running_loop())
            await main

        original_run(timed_main())

    server.run = run
    if not server.compiled():  # (compiled classes cannot be patched: passes and collections only)
        _patch_gateway(gateway_app.Gateway)

    def dump(*_: Any) -> None:
        assert OUT is not None
        with open(OUT + ".part", "w") as f:
            json.dump({"pieces": PIECES, "whole": WHOLE}, f)
        os.replace(OUT + ".part", OUT)  # (whole or not there: the reader polls for it)

    signal.signal(signal.SIGUSR2, dump)
    gc.callbacks.append(_gc_timer())


def _time_passes(loop: asyncio.AbstractEventLoop) -> None:
    """Times each pass of the event loop while it is busy: a callback queued with ``call_soon`` runs
    once per pass, so from one run to the next is a pass, i.e. how long an event that became ready
    just after a pass began waits to be handled. After a pass shorter than ``IDLE_PASS_S`` (nothing
    else to do) it comes back ``IDLE_WAIT_S`` later instead, untimed: a callback always queued
    would keep an idle loop spinning instead of waiting in epoll, and change what it measures."""
    passes = PIECES.setdefault("a pass of the busy loop", [])
    last = perf_counter()

    def tick() -> None:
        nonlocal last
        now = perf_counter()
        took, last = now - last, now
        if took < IDLE_PASS_S:
            loop.call_later(IDLE_WAIT_S, wake)
        else:
            passes.append(took)
            loop.call_soon(tick)

    def wake() -> None:
        nonlocal last
        last = perf_counter()
        loop.call_soon(tick)

    loop.call_soon(tick)


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
