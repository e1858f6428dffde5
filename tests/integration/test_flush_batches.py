"""A settlement flush stores what was queued when it started. Requests settled while it writes wait
for the next flush: chasing them kept flushes running back to back, a transaction for every few
requests, which cost more CPU than the requests themselves at one connection."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Table, func, select

from conftest import initialized
from keyplane import gateway_assembly
from keyplane.billing.wallet import Hold, Outcome
from keyplane.errors import StoreUnavailable
from keyplane.gateway.housekeeping import HOUSEKEEPING_NICE
from keyplane.simulator import SimulatorConfig, create_app
from keyplane.storage.billing_tables import holds
from keyplane.storage.tables import usage_records

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


class InProcess:
    """The gateway in front of the simulator, in this event loop, without sockets; settlements are
    flushed only when a test asks."""

    def __init__(self, tmp: Path) -> None:
        self.container, _, org, _, key = initialized(
            tmp, "http://sim/v1", credit=10**9, usage_flush_interval_s=3600
        )
        self.org_id: str = org.id
        sim = httpx.ASGITransport(app=create_app(SimulatorConfig()))
        self.gateway = gateway_assembly.build_gateway(self.container, transport=sim)
        self.money = self.gateway.pipeline.money
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.gateway, client=("127.0.0.1", 5555)),
            base_url="http://kp",
            headers={"authorization": f"Bearer {key}"},
        )

    async def post(self) -> int:
        return (await self.client.post("/v1/chat/completions", json=BODY)).status_code

    def count(self, table: Table) -> int:
        with self.container.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)

    def usage_count(self) -> int:
        return self.count(usage_records)


async def in_process(tmp: Path, scenario: Callable[[InProcess], Awaitable[None]]) -> None:
    kp = InProcess(tmp)
    await kp.gateway.pipeline.auth.refresh()
    await kp.money.refresh()
    try:
        await scenario(kp)
    finally:
        await kp.client.aclose()
        await kp.gateway.shutdown()
        kp.container.close()


async def _late_requests_wait(kp: InProcess) -> None:
    money, post = kp.money, kp.post
    assert [await post() for _ in range(20)] == [200] * 20
    store: Any = money._store
    original = store.resolve_stepwise
    batches: list[int] = []
    late: list[int] = []

    def held_open(
        outcomes: Sequence[Outcome], at: int, new_holds: Sequence[Hold] = (), *rest: Any
    ) -> Generator[None, None, int] | None:
        """The real batch, kept open until the late requests are answered."""
        batches.append(len(outcomes))
        steps = original(outcomes, at, new_holds, *rest)
        if steps is None:
            return None

        def wait_then_write() -> Generator[None, None, int]:
            for _ in range(100_000):  # each yield lets the event loop run once
                if len(late) == 5:
                    break
                yield
            count: int = yield from steps
            return count

        return wait_then_write()

    store.resolve_stepwise = held_open
    flushing = asyncio.create_task(money.flush())
    late.extend(await asyncio.gather(*(post() for _ in range(5))))
    assert late == [200] * 5
    assert await flushing == 20
    assert batches == [20], "the late requests must wait for the next flush"
    # The spend watcher reads stored spend: it hears of the organization after each flush
    # that stored some of its settlements, including the one storing the late requests.
    assert money.take_touched()[0] == {kp.org_id}
    assert await money.flush() == 5
    assert batches == [20, 5]
    assert money.take_touched()[0] == {kp.org_id}
    assert kp.usage_count() == 25


class BusyLoop:
    """Flushes while the event loop is busy with other work (``busy_s`` of CPU per pass), timing
    the settlement writer's steps in each pass."""

    def __init__(self, kp: InProcess, busy_s: float = 0.002) -> None:
        self.kp = kp
        self.busy_s = busy_s
        self.passes = 0
        self.spent: dict[int, float] = {}  # pass → seconds of writer steps run in it
        store: Any = kp.money._store
        original = store.resolve_stepwise

        def counted(
            outcomes: Sequence[Outcome], at: int, new_holds: Sequence[Hold] = (), *rest: Any
        ) -> Generator[None, None, int] | None:
            steps = original(outcomes, at, new_holds, *rest)
            return None if steps is None else self._count(steps)

        store.resolve_stepwise = counted

    def _count(self, steps: Generator[None, None, int]) -> Generator[None, None, int]:
        try:
            while True:
                start = time.perf_counter()
                try:
                    next(steps)
                finally:
                    took = time.perf_counter() - start
                    self.spent[self.passes] = self.spent.get(self.passes, 0.0) + took
                yield
        except StopIteration as done:
            count: int = done.value
            return count

    async def flush(self, requests: int) -> float:
        """Flushes ``requests`` new settlements; returns the time the writer took in a pass, the
        median over the passes it wrote in (another process taking the core in a few of them,
        on a loaded machine, does not move it)."""
        kp = self.kp
        assert await asyncio.gather(*(kp.post() for _ in range(requests))) == [200] * requests
        self.spent.clear()
        flushing = asyncio.create_task(kp.money.flush())
        first = self.passes
        while not flushing.done():
            self.passes += 1
            end = time.perf_counter() + self.busy_s
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)
        assert await flushing == requests
        self.last_passes = self.passes - first
        return statistics.median(self.spent.values())


async def _keeps_up_with_a_busy_loop(kp: InProcess) -> None:
    busy = BusyLoop(kp)
    await busy.flush(400)
    assert kp.usage_count() == 400
    # One slice per pass (8 settlements) took over 50 passes: under load the writer fell behind.
    assert busy.last_passes <= 30, busy.last_passes


async def _catches_up_when_behind(kp: InProcess) -> None:
    """A flush that lasts longer than the interval between flushes gets a growing share of the
    loop: the queue (and the memory it takes) stays a few intervals' worth."""
    money: Any = kp.money
    assert money._flush_interval_s == 3600  # (in_process: flushes only when asked)
    busy = BusyLoop(kp, busy_s=0.0005)
    # (The least of three on time: other work on the machine only ever lengthens a pass.)
    on_time = min([await busy.flush(800) for _ in range(3)])
    money._flush_interval_s = 0.0005  # every pass of this busy loop lasts an interval
    behind = max([await busy.flush(800) for _ in range(2)])
    assert kp.usage_count() == 4000
    # On time: writing for half the 0.5 ms the rest of a pass took; behind: the share growing
    # pass by pass, up to 5 ms. (Short passes, so that the flush spans enough of them for its
    # share to grow.)
    assert behind >= 2 * on_time, (behind, on_time)


async def _one_flush_in_batches(kp: InProcess) -> None:
    """A flush of more settlements than a batch writes them in batches, one transaction each. The
    holds of requests settled in a later batch are not stored open by an earlier one (only to be
    deleted a batch later): the journal keeps them until the whole flush is stored, also when a
    later batch fails."""
    money: Any = kp.money
    money._batch_size = 10
    assert [await kp.post() for _ in range(25)] == [200] * 25
    store: Any = money._store
    original = store.resolve_stepwise
    given: list[tuple[int, int]] = []  # (settlements, journaled holds) per batch

    def second_batch_fails(
        outcomes: Sequence[Outcome], at: int, new_holds: Sequence[Hold] = (), *rest: Any
    ) -> Generator[None, None, int] | None:
        given.append((len(outcomes), len(new_holds)))
        if len(given) == 2:
            raise StoreUnavailable("The database is unavailable.")
        return original(outcomes, at, new_holds, *rest)

    store.resolve_stepwise = second_batch_fails
    with pytest.raises(StoreUnavailable):
        await money.flush()
    # The first batch was given the holds of its own 10 requests only.
    assert given == [(10, 10), (10, 0)]
    assert (kp.usage_count(), kp.count(holds)) == (10, 0)
    assert list(money._journal.directory.iterdir()), "the journal is kept until all is stored"
    store.resolve_stepwise = original
    assert await money.flush() == 15
    assert (kp.usage_count(), kp.count(holds)) == (25, 0)
    # Stored segments are deleted, and the next append's segment opened, in the background: once
    # that is done, what is left is that spare segment, with no hold in it.
    await money.tidied()
    [spare] = money._journal.directory.iterdir()
    assert spare.read_bytes().strip(b"\0") == b""
    assert await money.flush() == 0


async def _a_retry_settles_ahead_of_the_journal(kp: InProcess) -> None:
    """A flush does not look up the requests whose holds were journaled since the last flush (they
    cannot be in the database yet), except after a retry: a flush retried after a failure also
    stores the settlements made since, whose holds are still in the journal's open segment. The
    flush that takes that segment must find those requests settled, not store their holds as
    open holds (counted against the balance, later settled again by the sweeper)."""
    money: Any = kp.money
    store: Any = money._store
    original = store.resolve_stepwise

    def down(*args: Any) -> Generator[None, None, int] | None:
        raise StoreUnavailable("The database is unavailable.")

    assert [await kp.post() for _ in range(5)] == [200] * 5
    store.resolve_stepwise = down
    with pytest.raises(StoreUnavailable):
        await money.flush()
    store.resolve_stepwise = original
    assert [await kp.post() for _ in range(3)] == [200] * 3
    assert await money.flush() == 8  # the retry: the 5, and the 3 settled since
    assert await money.flush() == 0  # the segment with the 3 holds: nothing left to store
    assert (kp.usage_count(), kp.count(holds)) == (8, 0)
    # And the next flushes, back to holds journaled since the last one, store each request once.
    assert [await kp.post() for _ in range(4)] == [200] * 4
    assert await money.flush() == 4
    assert (kp.usage_count(), kp.count(holds)) == (12, 0)


async def _waits_for_the_hook_in_progress(kp: InProcess) -> None:
    """The after-flush hook (spend emails, auto-recharge jobs) of a background flush can still be
    running when someone else's flush finds nothing left to store; that flush must wait for it, or
    its caller reads the outbox before the email is in it (test_money's recharge test, 1 in ~10)."""
    gateway: Any = kp.gateway
    real_hook = gateway._after_flush
    entered, gate = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def slow_hook() -> None:
        if not entered.is_set():
            entered.set()
            await gate.wait()
            order.append("first hook done")
        await real_hook()

    gateway._after_flush = slow_hook
    assert await kp.post() == 200
    first = asyncio.create_task(kp.gateway.flush())
    await entered.wait()

    async def second_flush() -> None:
        await kp.gateway.flush()
        order.append("second flush returned")

    second = asyncio.create_task(second_flush())
    await asyncio.wait({second}, timeout=0.2)  # (without the wait it returns at once)
    gate.set()
    await asyncio.gather(first, second)
    assert order == ["first hook done", "second flush returned"]
    assert kp.usage_count() == 1


async def _checkpoint_in_the_background(kp: InProcess) -> None:
    """The WAL checkpoint (a disk sync, at times long) runs beside the flushes, one at a time: a
    flush that waited for it let settlements queue meanwhile, and the process kept that memory. It
    runs on the housekeeping thread, nicer than the event loop's (gateway/housekeeping.py)."""
    money: Any = kp.money
    money._checkpoint_after = 10
    store: Any = money._store
    real_checkpoint = store.checkpoint
    started, release = threading.Semaphore(0), threading.Event()
    calls: list[str] = []
    nice: list[int] = []

    def slow_checkpoint() -> None:
        calls.append(threading.current_thread().name)
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        started.release()
        assert release.wait(30), "never released"
        real_checkpoint()

    store.checkpoint = slow_checkpoint
    try:
        assert [await kp.post() for _ in range(10)] == [200] * 10
        assert await asyncio.wait_for(money.flush(), 10) == 10
        assert await asyncio.to_thread(started.acquire, True, 10), "no checkpoint after 10"
        # While it syncs, the next flushes store what is queued and start no second checkpoint.
        for _ in range(2):
            assert [await kp.post() for _ in range(10)] == [200] * 10
            assert await asyncio.wait_for(money.flush(), 10) == 10
        assert kp.usage_count() == 30
        assert len(calls) == 1
        assert calls[0].startswith("keyplane-housekeeping"), calls
        loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert nice[0] == min(19, loop_nice + HOUSEKEEPING_NICE), (nice, loop_nice)
    finally:
        release.set()
    await asyncio.wait_for(money.tidied(), 10)
    # The settlements written meanwhile are due for the next one, which the next flush starts.
    assert await money.flush() == 0
    assert await asyncio.to_thread(started.acquire, True, 10), "no second checkpoint"
    await money.tidied()
    assert len(calls) == 2


def test_a_slow_wal_checkpoint_holds_up_no_flush(tmp_path: Path) -> None:
    asyncio.run(in_process(tmp_path, _checkpoint_in_the_background))


def test_a_flush_waits_for_the_after_flush_hook_in_progress(tmp_path: Path) -> None:
    asyncio.run(in_process(tmp_path, _waits_for_the_hook_in_progress))


def test_a_flush_stores_what_was_queued_when_it_started(tmp_path: Path) -> None:
    asyncio.run(in_process(tmp_path, _late_requests_wait))


def test_a_flush_in_batches_stores_no_hold_it_settles_later(tmp_path: Path) -> None:
    asyncio.run(in_process(tmp_path, _one_flush_in_batches))


def test_the_settlement_writer_keeps_up_when_the_loop_is_busy(tmp_path: Path) -> None:
    asyncio.run(in_process(tmp_path, _keeps_up_with_a_busy_loop))


def test_a_flush_that_falls_behind_takes_more_of_the_loop(tmp_path: Path) -> None:
    asyncio.run(in_process(tmp_path, _catches_up_when_behind))


def test_a_flush_after_a_retry_finds_the_requests_the_retry_settled(tmp_path: Path) -> None:
    asyncio.run(in_process(tmp_path, _a_retry_settles_ahead_of_the_journal))
