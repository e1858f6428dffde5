"""Holds and their settlement (part of SqlMoneyStore): the gateways alive to own holds, holds
restored from a journal, and settlement batches, written in one transaction or, on SQLite, a
slice per event-loop pass; and the WAL checkpoint, off the loop."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Generator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError

from keyplane.billing.wallet import Hold, Outcome
from keyplane.errors import StoreUnavailable
from keyplane.storage.billing_tables import gateways, holds
from keyplane.storage.engine import is_sqlite
from keyplane.storage.settlement_writer import (
    HOLD_COLUMNS,
    SELECT_IDS,
    Writer,
    driver_writer,
    hold_row,
    padded,
    resolve_steps,
)
from keyplane.storage.store import SqlStore

log = logging.getLogger("keyplane.storage")


def _insert_new_holds(conn: Connection, new: Sequence[Hold]) -> list[Hold]:
    """Stores holds as open, skipping those the database knows already — stored open, or resolved
    (a journal replayed after a crash that came after its batch was written): a resolved
    request's hold stored again would be swept and billed twice. Returns the ones stored now."""
    with _writer(conn) as db:
        ids = [h.id for h in new]
        known: set[str] = set()
        for chunk in range(0, len(ids), SELECT_IDS):
            known.update(rid for rid, _ in db.statuses(padded(ids[chunk : chunk + SELECT_IDS])))
        fresh = [h for h in new if h.id not in known]
        db.insert("holds", HOLD_COLUMNS, [hold_row(h) for h in fresh])
        return fresh


def _writer(conn: Connection) -> contextlib.AbstractContextManager[Writer]:
    """A ``Writer`` on ``conn``'s driver connection."""
    raw = conn.connection.driver_connection
    assert raw is not None
    return driver_writer(raw, conn.dialect.name == "sqlite", conn.dialect.dbapi)


def hold_of(row: Any) -> Hold:
    return Hold(
        id=row.id, org_id=row.org_id, project_id=row.project_id, amount=row.amount_micro,
        period=row.period, created_at=row.created_at, expires_at=row.expires_at,
        key_id=row.key_id, model=row.model, endpoint=row.endpoint,
    )  # fmt: skip


class SqlHolds(SqlStore):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._steps_conn: sqlite3.Connection | None = None
        self._steps_opened = 0  # connections opened for stepwise batches so far
        # (An in-memory database is one connection's own: no second connection can share it.)
        self._steps_possible = self._sqlite_lock is not None and engine.url.database not in (
            None, "", ":memory:",
        )  # fmt: skip

    def orgs_with_open_holds(self) -> Sequence[str]:
        return self._read(
            lambda c: list(
                c.execute(
                    select(holds.c.org_id).where(holds.c.status == "open").distinct()
                ).scalars()
            )
        )

    def beat(self, gateway_id: str, started_at: int, at: int, timeout_s: int) -> int:
        with self._write() as conn:
            seen = conn.execute(
                update(gateways).where(gateways.c.id == gateway_id).values(seen_at=at)
            ).rowcount
            if not seen:
                conn.execute(
                    insert(gateways).values(id=gateway_id, started_at=started_at, seen_at=at)
                )
            conn.execute(delete(gateways).where(gateways.c.seen_at < at - timeout_s))
            oldest = conn.execute(select(func.min(gateways.c.started_at))).scalar()
        return started_at if oldest is None else int(oldest)

    def leave(self, gateway_id: str) -> None:
        with self._write() as conn:
            conn.execute(delete(gateways).where(gateways.c.id == gateway_id))

    def restore_holds(self, journaled: Sequence[Hold]) -> list[Hold]:
        with self._write() as conn:
            return _insert_new_holds(conn, journaled)

    def resolve(
        self,
        outcomes: Sequence[Outcome],
        at: int,
        new_holds: Sequence[Hold] = (),
        never_stored: AbstractSet[str] = frozenset(),
    ) -> int:
        with self._write() as conn:
            steps = resolve_steps(_writer(conn), outcomes, at, new_holds, never_stored)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    return int(done.value)

    def resolve_stepwise(
        self,
        outcomes: Sequence[Outcome],
        at: int,
        new_holds: Sequence[Hold] = (),
        never_stored: AbstractSet[str] = frozenset(),
    ) -> Generator[None, None, int] | None:
        """``resolve`` for a caller on an event loop: the same transaction, a slice per ``next()``
        (``SELECT_IDS`` holds looked up, or ``STEP_SETTLEMENTS`` settlements written), so nothing
        blocks the loop for long and no thread (and no GIL hand-over per row, which cost more CPU
        than the writes) is involved. Only on SQLite, and only when the write lock is free right
        now (another thread or process writing: None, then call ``resolve`` on a thread). Its
        commit never checkpoints the WAL: ``checkpoint`` does, off the loop."""
        if not self._steps_possible or not self._lock_for_steps():
            return None
        try:
            raw = self._step_connection()
            raw.execute("BEGIN IMMEDIATE")  # (busy_timeout 0 on this connection: never waits)
        except StoreUnavailable:
            self._unlock_steps()
            raise
        except sqlite3.Error:  # another process holds the write lock (or the connection broke)
            self.close()
            self._unlock_steps()
            return None
        writer = driver_writer(raw, True, sqlite3)
        steps = self._stepwise(raw, resolve_steps(writer, outcomes, at, new_holds, never_stored))
        next(steps)  # (started: closed at any point from now on, it rolls back and unlocks)
        return steps

    def _step_connection(self) -> sqlite3.Connection:
        """The driver connection kept for stepwise batches, opened on first use: set up once (no
        pool checkout and settings per batch, ~0.3 ms of the loop on this VM), and its page cache
        stays warm between batches since only it writes them. Out of the pool (detached), so it
        never holds a pooled connection; ``close`` lets it go."""
        if self._steps_conn is None:
            try:
                pooled = self._engine.raw_connection()
            except (OperationalError, SAInterfaceError) as exc:
                raise StoreUnavailable("The database is unavailable.") from exc
            raw = pooled.driver_connection
            pooled.detach()
            assert isinstance(raw, sqlite3.Connection)
            try:
                raw.execute("PRAGMA busy_timeout=0")  # BEGIN IMMEDIATE must not wait for a lock
                raw.execute("PRAGMA wal_autocheckpoint=0")  # ``checkpoint`` does it, off the loop
            except sqlite3.Error as exc:
                raw.close()
                raise StoreUnavailable("The database is unavailable.") from exc
            self._steps_conn = raw
            self._steps_opened += 1
        return self._steps_conn

    def data_version(self) -> tuple[int, int] | None:
        """A value that changes whenever a connection other than the stepwise batches' commits
        to the database (another process, or this one's pool), and only then (about), or None
        (not SQLite, unreadable): SQLite's ``PRAGMA data_version`` on the batches' connection,
        with that connection's number (each connection counts on its own). ~6 µs; never waits."""
        if not self._steps_possible:
            return None
        try:
            raw = self._step_connection()
            row = raw.execute("PRAGMA data_version").fetchone()
        except (StoreUnavailable, sqlite3.Error):
            return None
        return (self._steps_opened, int(row[0]))

    def _stepwise(
        self, raw: sqlite3.Connection, steps: Generator[None, None, int]
    ) -> Generator[None, None, int]:
        broken = True
        try:
            yield  # (where resolve_stepwise leaves it: the caller's first next() writes)
            count = yield from steps
            yield  # the commit, a step of its own: it writes the batch's pages to the WAL
            try:
                raw.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreUnavailable("The database is unavailable.") from exc
            broken = False
            return count
        except GeneratorExit:  # abandoned half-way (the gateway stopping): rolled back below
            broken = False
            raise
        finally:
            if raw.in_transaction:
                try:
                    raw.execute("ROLLBACK")
                except sqlite3.Error:
                    broken = True
            if broken:  # a fresh connection for the next batch
                self.close()
            self._unlock_steps()

    def close(self) -> None:
        """Closes the connection kept for stepwise batches (the next batch opens another)."""
        if self._steps_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._steps_conn.close()
            self._steps_conn = None

    def checkpoint(self) -> None:
        """Copies the WAL back into the database file (PASSIVE: waits for nobody) and, when all of
        it was copied, starts it over from its beginning on this thread.

        The first write after a complete checkpoint starts the WAL over, and SQLite syncs the WAL's
        new header to disk then, even at ``synchronous=NORMAL`` (a write reordered after a restart
        could corrupt the database otherwise). Left to the next settlement batch, that sync ran
        in its commit on the event loop, every request in flight waiting for the disk: 0.3-0.4 ms
        on the bench's VM, a disk flush, so longer on a busy or slower disk (bench/RESULTS.md,
        2026-12-06). So this thread makes that first write, rewriting the database header's
        ``user_version`` unchanged; unless another writer of this process holds the write lock
        (then whoever writes next starts the WAL over, as before)."""
        if not is_sqlite(self._engine):
            return
        try:
            with self._engine.connect() as conn:  # on the driver: no transaction around it
                raw = conn.connection.driver_connection
                assert raw is not None
                busy, frames, copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if busy or frames <= 0 or copied != frames:
                    return
                if not self._lock_for_steps():  # (the write lock, only if free right now)
                    return
                try:
                    version = int(raw.execute("PRAGMA user_version").fetchone()[0])
                    raw.execute(f"PRAGMA user_version = {version}")
                finally:
                    self._unlock_steps()
        except (OperationalError, SAInterfaceError, sqlite3.Error):
            log.warning("WAL checkpoint failed; the next one catches up", exc_info=True)
