"""The gateway's background loops (settlement flush, feeds, sweeper) keep their cadence: a call
that takes a while does not push every later one back by that much."""

from __future__ import annotations

import asyncio

import pytest

from keyplane.gateway.app import every


def _starts(interval: float, takes: float, calls: int) -> list[float]:
    """When ``every(interval, …)`` started ``calls`` calls that each took ``takes`` seconds, on a
    clock that moves only when something waits or works."""
    t = [0.0]
    starts: list[float] = []

    async def sleep(seconds: float) -> None:
        assert seconds >= 0
        t[0] += seconds

    async def work() -> None:
        starts.append(t[0])
        t[0] += takes
        if len(starts) == calls:
            raise asyncio.CancelledError  # (stops the loop, as shutting down does)

    async def run() -> None:
        with pytest.raises(asyncio.CancelledError):
            await every(interval, work, now=lambda: t[0], sleep=sleep)

    asyncio.run(run())
    return [round(s, 9) for s in starts]


def test_quick_calls_start_every_interval_from_the_last_start() -> None:
    assert _starts(0.2, 0.05, 4) == [0.2, 0.4, 0.6, 0.8]


def test_a_call_longer_than_the_interval_is_followed_at_once_without_a_burst() -> None:
    # Flushes of 0.3 s every 0.2 s: back to back (the queue never waits 0.2 s more on top of each
    # flush), and never two at once or several in a row to catch up.
    assert _starts(0.2, 0.3, 4) == [0.2, 0.5, 0.8, 1.1]


def test_a_failing_call_does_not_stop_the_loop() -> None:
    t = [0.0]
    calls: list[float] = []

    async def sleep(seconds: float) -> None:
        t[0] += seconds

    async def flaky() -> None:
        calls.append(t[0])
        if len(calls) == 3:
            raise asyncio.CancelledError
        raise RuntimeError("boom")

    async def run() -> None:
        with pytest.raises(asyncio.CancelledError):
            await every(1.0, flaky, now=lambda: t[0], sleep=sleep)

    asyncio.run(run())
    assert calls == [1.0, 2.0, 3.0]
