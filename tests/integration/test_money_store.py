"""The SQL money store on SQLite and PostgreSQL: settlement writes the hold's resolution, the usage
record and balanced ledger entries once, however often a batch is replayed."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from keyplane.accounts.service import AccountService
from keyplane.billing.wallet import Hold, Lot, OrgMoney, Outcome
from keyplane.clock import SystemClock
from keyplane.storage import migrate
from keyplane.storage.account_repository import SqlAccountStore
from keyplane.storage.billing_repository import SqlMoneyStore
from keyplane.storage.billing_tables import holds, ledger_balances, ledger_entries
from keyplane.storage.engine import make_engine
from keyplane.storage.settlement_writer import STEP_SETTLEMENTS
from keyplane.storage.usage_repository import SqlUsageStore
from keyplane.usage.records import Outcome as RequestOutcome
from keyplane.usage.records import UsageRecord


def record(request_id: str, org_id: str, project_id: str, cost: int) -> UsageRecord:
    return UsageRecord(
        request_id=request_id, created_at=int(time.time()), org_id=org_id, project_id=project_id,
        key_id="key_x", owner_type="user", owner_id="u", model="gpt-4o", endpoint="chat.completions",
        input_tokens=10, cached_input_tokens=0, output_tokens=100, status=200, latency_ms=5,
        client_ip=None, cost_micro_usd=cost, stream=False, outcome=RequestOutcome.COMPLETED, period="2026-11",
    )  # fmt: skip


def funded_store(engine: Engine) -> tuple[SqlMoneyStore, OrgMoney, Any, Any, int]:
    """An organization with a $0.01 grant, its store and its money state (and the time now)."""
    _, org, project = AccountService(SqlAccountStore(engine), SystemClock()).initialize(
        email="o@example.com", password="correct horse battery", org_name="Store"
    )
    store = SqlMoneyStore(engine)
    now = int(time.time())
    store.add_lot(org.id, Lot("cg_1", "grant", 10_000, 10_000, now, None), "", "grants")
    return store, store.load(org.id, "2026-11", lambda tier: 10**9), org, project, now


def test_settlement_batches_are_applied_once(engine: Engine) -> None:
    store, money, org, project, now = funded_store(engine)
    made = [Hold(f"req_{i}", org.id, project.id, 1_000, "2026-11", now, now + 60) for i in range(5)]
    for hold in made:
        assert money.place_hold(hold) is None
    assert store.restore_holds(made) == made
    assert store.restore_holds(made) == []  # a journal replayed twice stores nothing twice
    outcomes = []
    for i, hold in enumerate(made):
        settlement = money.settle(hold.id, 100 * i)
        outcomes.append(Outcome(record(hold.id, org.id, project.id, 100 * i), settlement))
    assert store.resolve(outcomes, now) == 5
    assert store.resolve(outcomes, now) == 0  # a replayed batch changes nothing
    assert store.resolve(outcomes[:2], now) == 0
    # A journal replayed after its batch was written (a crash in between) stores nothing again:
    # a resolved request's hold stored open would be swept and billed a second time.
    assert store.restore_holds(made) == []
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(ledger_entries.c.amount_micro))).scalar() == 0
        assert conn.execute(select(holds)).all() == []  # the holds table: open holds only
        settled = conn.execute(
            select(ledger_entries.c.txn_id, ledger_entries.c.account, ledger_entries.c.amount_micro)
            .where(ledger_entries.c.txn_id.like("stl_%"))
            .order_by(ledger_entries.c.account)
        ).all()
    charged = {r.request_id: r.cost_micro_usd for r in SqlUsageStore(engine).query(org.id)}
    assert charged == {f"req_{i}": 100 * i for i in range(5)}
    # The batch is one ledger transaction for the organization: its lines are summed over the
    # requests (each request's own cost is in its usage record).
    assert len({txn for txn, _, _ in settled}) == 1
    assert [(account, amount) for _, account, amount in settled] == [
        ("lot", -1_000),
        ("usage", 1_000),
    ]
    assert store.totals(org.id) == (0, 1_000)
    [(lot, _)] = store.lots(org.id)
    assert lot.remaining == 10_000 - 1_000
    assert len(store.month_spend(org.id, "2026-11")[1]) == 1
    assert_balances_match_the_ledger(engine)
    # A revoked lot's remaining credit goes back to grants: its balance is 0 after.
    assert store.revoke_lot(org.id, lot.id, now) == 9_000
    assert store.revoke_lot(org.id, lot.id, now) == -1
    [(lot, _)] = store.lots(org.id)
    assert lot.remaining == 0 and lot.revoked
    assert_balances_match_the_ledger(engine)


def assert_balances_match_the_ledger(engine: Engine) -> None:
    """The running balances are the ledger's sums, account by account."""
    with engine.connect() as conn:
        summed = {
            (org, account, lot or ""): int(amount)
            for org, account, lot, amount in conn.execute(
                select(
                    ledger_entries.c.org_id, ledger_entries.c.account, ledger_entries.c.lot_id,
                    func.sum(ledger_entries.c.amount_micro),
                ).group_by(
                    ledger_entries.c.org_id, ledger_entries.c.account, ledger_entries.c.lot_id
                )
            )
        }  # fmt: skip
        kept = {
            (org, account, lot): int(amount)
            for org, account, lot, amount in conn.execute(select(ledger_balances))
        }
    assert kept == summed and summed


def test_a_batch_stores_only_the_holds_still_open_and_applies_once(engine: Engine) -> None:
    store, money, org, project, now = funded_store(engine)
    made = [Hold(f"req_{i}", org.id, project.id, 1_000, "2026-11", now, now + 60) for i in range(4)]
    for hold in made:
        assert money.place_hold(hold) is None
    # Three settled within the batch that first stores their holds; one still in flight.
    outcomes = [
        Outcome(record(h.id, org.id, project.id, 300), money.settle(h.id, 300)) for h in made[:3]
    ]
    assert store.resolve(outcomes, now, made) == 3
    with engine.connect() as conn:  # the one still in flight is the one hold stored
        assert dict(conn.execute(select(holds.c.id, holds.c.status)).all()) == {"req_3": "open"}
    assert store.resolve(outcomes, now, made) == 0  # replayed: nothing twice
    late = Outcome(record("req_3", org.id, project.id, 50), money.settle("req_3", 50))
    assert store.resolve([late], now) == 1  # its hold was stored open by the first batch
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(ledger_entries.c.amount_micro))).scalar() == 0
    # Settled before its journal segment was flushed: the settlement carries the hold.
    early = Hold("req_4", org.id, project.id, 1_000, "2026-11", now, now + 60)
    assert money.place_hold(early) is None
    unseen = Outcome(record("req_4", org.id, project.id, 25), money.settle("req_4", 25))
    assert store.resolve([unseen], now) == 1
    assert store.resolve([unseen], now, [early]) == 0
    with engine.connect() as conn:
        assert conn.execute(select(holds)).all() == []
    resolved = {r.request_id for r in SqlUsageStore(engine).query(org.id)}
    assert resolved == {f"req_{i}" for i in range(5)}
    assert store.totals(org.id) == (0, 975)
    assert len(store.month_spend(org.id, "2026-11")[1]) == 1


def test_a_batch_reads_back_as_written(engine: Engine) -> None:
    """Rows are written as tuples in the tables' column order: the records and the holds left
    open read back field for field."""
    store, money, org, project, now = funded_store(engine)
    done, open_ = (
        Hold(f"req_{i}", org.id, project.id, 900 + i, "2026-11", now - i, now + 60 + i,
             key_id=f"key_{i}", model=f"model-{i}", endpoint="embeddings")
        for i in range(2)
    )  # fmt: skip
    for hold in (done, open_):
        assert money.place_hold(hold) is None
    written = record(done.id, org.id, project.id, 123).replace(
        client_ip="10.1.2.3", stream=True, outcome=RequestOutcome.CLIENT_DISCONNECTED,
        tokens_estimated=True, cached_input_tokens=4, latency_ms=77,
    )  # fmt: skip
    assert store.resolve([Outcome(written, money.settle(done.id, 123))], now, [done, open_]) == 1
    assert list(SqlUsageStore(engine).query(org.id)) == [written]
    assert store.load(org.id, "2026-11", lambda tier: 10**9).holds == {open_.id: open_}


def test_month_spend_adds_up_the_usage_records_each_counted_once(engine: Engine) -> None:
    store, outcomes, org_id = _settled_batch(engine, 30)
    assert store.resolve(outcomes[:20], 1) == 20
    assert store.resolve(outcomes, 2) == 10  # the first 20 again (a replay): not counted twice
    records = list(SqlUsageStore(engine).query(org_id))
    assert len(records) == 30
    total, per_project = store.month_spend(org_id, "2026-11")
    assert total == sum(r.cost_micro_usd for r in records) == 30 * 7
    assert per_project == {records[0].project_id: 30 * 7}
    assert store.month_spend(org_id, "2026-12") == (0, {})
    # A gateway starting now begins from the same figure.
    assert store.load(org_id, "2026-11", lambda tier: 10**12).month_spend("2026-11") == 30 * 7
    assert_balances_match_the_ledger(engine)


def _settled_batch(engine: Engine, n: int) -> tuple[SqlMoneyStore, list[Outcome], str]:
    _, org, project = AccountService(SqlAccountStore(engine), SystemClock()).initialize(
        email="o@example.com", password="correct horse battery", org_name="Store"
    )
    store = SqlMoneyStore(engine)
    now = int(time.time())
    store.add_lot(org.id, Lot("cg_1", "grant", 10**9, 10**9, now, None), "", "grants")
    money = store.load(org.id, "2026-11", lambda tier: 10**12)
    outcomes = []
    for i in range(n):
        hold = Hold(f"req_{i:05}", org.id, project.id, 100, "2026-11", now, now + 60)
        assert money.place_hold(hold) is None
        outcomes.append(Outcome(record(hold.id, org.id, project.id, 7), money.settle(hold.id, 7)))
    return store, outcomes, org.id


def _run(steps: Generator[None, None, int]) -> tuple[int, int]:
    """Drives a stepwise batch; returns (its count, how many steps it took)."""
    taken = 0
    while True:
        try:
            next(steps)
            taken += 1
        except StopIteration as done:
            return int(done.value), taken


def test_a_stepwise_batch_writes_in_slices_and_waits_for_no_lock(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/money.db")
    migrate.upgrade(engine)
    store, outcomes, org_id = _settled_batch(engine, 300)
    # Another process writing: the event loop must not wait for it, so no stepwise batch now.
    other = sqlite3.connect(tmp_path / "money.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    assert store.resolve_stepwise(outcomes, 1) is None
    other.execute("ROLLBACK")
    other.close()

    # Closed before its first step (a flush cancelled right after opening the batch): rolled
    # back, and the lock is free again.
    steps = store.resolve_stepwise(outcomes, 1)
    assert steps is not None
    steps.close()

    # Abandoned half-way (the gateway stopping): the same.
    steps = store.resolve_stepwise(outcomes, 1)
    assert steps is not None
    next(steps)
    next(steps)
    steps.close()
    assert store.totals(org_id) == (0, 0)

    # While a batch is between steps, a blocking write from the same thread fails at once
    # instead of waiting for a lock its own batch holds.
    steps = store.resolve_stepwise(outcomes, 1)
    assert steps is not None
    next(steps)
    with pytest.raises(RuntimeError, match="stepwise"):
        store.add_lot(org_id, Lot("cg_2", "grant", 1, 1, 1, None), "", "grants")
    count, taken = _run(steps)
    assert count == 300
    assert taken >= 300 // STEP_SETTLEMENTS  # slices of at most STEP_SETTLEMENTS settlements each
    assert store.totals(org_id) == (0, 300 * 7)
    assert _run(store.resolve_stepwise(outcomes, 1) or _no_steps())[0] == 0  # applied once
    store.checkpoint()
    engine.dispose()


def _wal_header(database: Path) -> bytes:
    """The WAL's checkpoint sequence number and salts: new values each time the WAL starts over."""
    with open(f"{database}-wal", "rb") as f:
        return f.read(24)[12:24]


def test_the_checkpoint_starts_the_wal_over_so_the_loops_next_commit_syncs_nothing(
    tmp_path: Path,
) -> None:
    # The first write after a complete checkpoint starts the WAL over and syncs its new header
    # to disk. That write must be the checkpoint's own (on the housekeeping thread), not the
    # next settlement batch's commit on the event loop.
    database = tmp_path / "money.db"
    engine = make_engine(f"sqlite:///{database}")
    migrate.upgrade(engine)
    store, outcomes, org_id = _settled_batch(engine, 30)
    _run(store.resolve_stepwise(outcomes[:10], 1) or _no_steps())
    before = _wal_header(database)
    store.checkpoint()
    started_over = _wal_header(database)
    assert started_over != before
    _run(store.resolve_stepwise(outcomes[10:20], 1) or _no_steps())
    assert _wal_header(database) == started_over  # appended to, not started over again
    assert store.totals(org_id) == (0, 20 * 7)

    # While a batch holds the write lock, the checkpoint copies what it can and leaves the start
    # of the next WAL to whoever writes next, without waiting for the lock.
    steps = store.resolve_stepwise(outcomes[20:], 1)
    assert steps is not None
    next(steps)
    store.checkpoint()
    assert _run(steps)[0] == 10
    assert store.totals(org_id) == (0, 30 * 7)
    engine.dispose()


def test_stepwise_batches_share_one_connection_and_recover_from_a_broken_one(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/money.db")
    migrate.upgrade(engine)
    store, outcomes, org_id = _settled_batch(engine, 90)
    opened: list[object] = []
    checkouts: list[object] = []
    event.listen(engine, "connect", lambda conn, _record: opened.append(conn))
    event.listen(engine, "checkout", lambda conn, _record, _proxy: checkouts.append(conn))

    # One connection for every batch, taken from the pool once (no checkout and settings per
    # batch), each batch still a transaction of its own.
    for part in (outcomes[:10], outcomes[10:30], outcomes[30:60]):
        steps = store.resolve_stepwise(part, 1)
        assert steps is not None
        _run(steps)
    assert len(checkouts) == 1
    before = len(opened)
    assert store.totals(org_id) == (0, 60 * 7)

    # A batch that fails half-way is rolled back and leaves the next batch a working connection.
    broken = store.resolve_stepwise(outcomes[60:], 1)
    assert broken is not None
    next(broken)
    with pytest.raises(RuntimeError, match="boom"):
        broken.throw(RuntimeError("boom"))
    assert store.totals(org_id) == (0, 60 * 7)
    steps = store.resolve_stepwise(outcomes[60:], 1)
    assert steps is not None
    assert _run(steps)[0] == 30
    assert len(opened) == before + 1  # a fresh one after the failure
    assert store.totals(org_id) == (0, 90 * 7)

    # close() lets it go: the file is closed (no connection left but the pool's), and a later
    # batch opens another.
    store.close()
    assert _run(store.resolve_stepwise(outcomes, 1) or _no_steps())[0] == 0  # applied once
    assert len(opened) == before + 2
    store.close()
    engine.dispose()


def test_the_data_version_moves_only_for_commits_by_other_connections(
    engine: Engine, tmp_path: Path
) -> None:
    store, outcomes, org_id = _settled_batch(engine, 20)
    if engine.dialect.name != "sqlite":
        assert store.data_version() is None  # cannot tell: the gateway reads its feeds each time
        return
    before = store.data_version()
    assert before is not None
    assert _run(store.resolve_stepwise(outcomes, 1) or _no_steps())[0] == 20
    assert store.data_version() == before  # its own batches: no change to read in any feed
    store.add_lot(org_id, Lot("cg_2", "grant", 5, 5, 1, None), "", "grants")  # the pool's
    after = store.data_version()
    assert after != before
    other = sqlite3.connect(engine.url.database or "", isolation_level=None)  # another process's
    other.execute(
        "INSERT INTO money_events (org_id, kind, ref, at) VALUES (?, 'settings', NULL, 1)",
        (org_id,),
    )
    other.close()
    assert store.data_version() not in (before, after)
    store.close()  # a new connection counts afresh: never mistaken for the old one's count
    assert store.data_version() not in (before, after)
    store.close()


def _no_steps() -> Generator[None, None, int]:
    raise AssertionError("the write lock should be free")
    yield


def test_usage_adds_up_per_day_and_per_bucket_on_either_database(engine: Engine) -> None:
    """The dashboard's Usage page and the Admin API's usage and costs buckets sum in SQL: the
    integer division that makes days and buckets must be one on both databases."""
    from sqlalchemy import insert

    from keyplane.storage import tables

    day = 20_000 * 86400  # a midnight, UTC
    rows = [(day + 10, "gpt-4o", 5), (day + 3700, "gpt-4o", 7), (day + 86400 + 1, "o3", 11)]
    with engine.begin() as conn:
        for i, (at, model, cost) in enumerate(rows):
            conn.execute(insert(tables.usage_records).values(
                record(f"r{i}", "org_u", "proj_u", cost).asdict() | {"created_at": at,
                                                                    "model": model, "outcome": "completed"}
            ))  # fmt: skip
    store = SqlUsageStore(engine)
    days = [(d.day, d.model, d.requests, d.cost_micro_usd) for d in store.daily("org_u")]
    assert days == [(20_000, "gpt-4o", 2, 12), (20_001, "o3", 1, 11)]
    hours = store.buckets("org_u", start=day, end=day + 2 * 3600, width_s=3600, group_by=["model"])
    assert [(b.start, b.model, b.cost_micro_usd) for b in hours] == [
        (day, "gpt-4o", 5), (day + 3600, "gpt-4o", 7),
    ]  # fmt: skip
    # Buckets start at ``start``: a day from 01:00 holds the 01:01 request and the next day's.
    whole = store.buckets("org_u", start=day + 3600, end=day + 3 * 86400, width_s=86400)
    assert [(b.start, b.requests) for b in whole] == [(day + 3600, 2)]


def test_usage_records_are_read_page_by_page_in_time_then_id_order(engine: Engine) -> None:
    """The CSV export's reader: every record of the span once, in (time, request id) order, even
    when a page ends among records of the same second, and nothing outside the span or scope."""
    from sqlalchemy import insert

    from keyplane.storage import tables

    start, end = 1_800_000_000, 1_800_000_100
    times = [
        start,
        start,
        start,
        start + 1,
        start + 1,
        start + 1,
        start + 1,
        end - 1,
        end,
        start - 1,
    ]
    rows = [
        record(f"req_{i:02d}", "org_p", "proj_a" if i % 3 else "proj_b", i).replace(created_at=at)
        for i, at in reversed(list(enumerate(times)))  # written out of order
    ]
    with engine.begin() as conn:
        for r in [*rows, record("req_other", "org_q", "proj_a", 1).replace(created_at=start)]:
            conn.execute(insert(tables.usage_records).values(r.asdict() | {"outcome": "completed"}))
    store = SqlUsageStore(engine)
    inside = sorted((r for r in rows if start <= r.created_at < end),
                    key=lambda r: (r.created_at, r.request_id))  # fmt: skip
    for page_size in (1, 2, 3, 8, 1000):
        read = list(store.records("org_p", start=start, end=end, page_size=page_size))
        assert read == inside, page_size
    of_a = list(store.records("org_p", start=start, end=end, project_id="proj_a", page_size=2))
    assert of_a == [r for r in inside if r.project_id == "proj_a"] and of_a
    assert list(store.records("org_p", start=end + 1, end=end + 100)) == []


def test_gateways_say_they_are_alive_and_the_oldest_live_one_is_known(engine: Engine) -> None:
    """What the sweeper asks: when did the oldest gateway still running start? An open hold
    placed before then was placed by a gateway that is gone."""
    store = SqlMoneyStore(engine)
    assert store.beat("gw_a", 100, 100, 30) == 100  # alone
    assert store.beat("gw_b", 120, 120, 30) == 100  # a started first and is alive
    assert store.beat("gw_a", 100, 125, 30) == 100
    assert store.beat("gw_b", 120, 155, 30) == 100  # a silent for exactly 30 s: still counted
    assert store.beat("gw_b", 120, 156, 30) == 120  # silent longer: gone (and forgotten)
    assert store.beat("gw_a", 100, 157, 30) == 100  # back: the same process, then
    store.leave("gw_a")
    assert store.beat("gw_b", 120, 158, 30) == 120
    store.leave("gw_b")
    assert store.beat("gw_c", 200, 200, 30) == 200
