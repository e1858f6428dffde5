"""SqlStore, the base of every SQL repository: each method is one short transaction, and SQLite's
one writer is taken in turn by this process's threads; or, inside a unit of work
(``SqlStore.atomic``), a part of the unit's one transaction."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    Table,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError

from keyplane.errors import StoreUnavailable

T = TypeVar("T")


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
# Write locks held across event-loop steps (hold_repository's resolve_stepwise) → the thread.
_STEPPING: dict[threading.Lock, int] = {}


def _refuse_while_stepping(lock: threading.Lock | None) -> None:
    if lock is not None and _STEPPING.get(lock) == threading.get_ident():
        # This thread holds the lock in a stepwise batch it yielded from: waiting would hang.
        raise RuntimeError("a blocking write on the event loop during a stepwise batch")


class _Unit:
    """An open unit of work (``SqlStore.atomic``): the thread it belongs to and, from its first
    write on, its connection and transaction (with SQLite's write lock). Begun at the first write,
    not at the start: a unit that writes nothing takes no lock, and what it does before it writes
    (reads, a payment provider's call) keeps no other writer waiting."""

    def __init__(self, engine: Engine, lock: threading.Lock | None) -> None:
        self.engine = engine
        self.thread = threading.get_ident()
        self.conn: Connection | None = None
        self._lock = lock

    def connection(self) -> Connection:
        """The unit's connection, its transaction begun (and the write lock taken) if it was not."""
        if self.conn is None:
            _refuse_while_stepping(self._lock)
            with contextlib.ExitStack() as undo:
                if self._lock is not None:
                    self._lock.acquire()
                    undo.callback(self._lock.release)
                conn = self.engine.connect()
                undo.callback(conn.close)
                conn.begin()
                undo.pop_all()
                self.conn = conn
        return self.conn

    def end(self, *, commit: bool) -> None:
        """Commits (or rolls back) what the unit wrote, and lets the write lock go."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if commit:
                conn.commit()
            else:
                with contextlib.suppress(OperationalError, SAInterfaceError):
                    conn.rollback()  # (a connection gone rolls back on its own)
        finally:
            conn.close()
            if self._lock is not None:
                self._lock.release()

    @contextmanager
    def part(self) -> Iterator[None]:
        """A part of the unit that is undone on its own if it raises (the unit may go on): a
        savepoint once the transaction is open; before, the transaction it began, if any."""
        if self.conn is None:
            try:
                yield
            except BaseException:
                self.end(commit=False)
                raise
        else:
            with self.conn.begin_nested():
                yield


# The unit of work open in this context (``SqlStore.atomic``). Worker threads started with
# asyncio.to_thread copy their caller's context: a unit is refused on a thread not its own.
_UNIT: ContextVar[_Unit | None] = ContextVar("keyplane_unit_of_work", default=None)


def _unit_of(engine: Engine) -> _Unit | None:
    """The unit of work this thread's stores on ``engine`` join, if one is open."""
    unit = _UNIT.get()
    if unit is None or unit.engine is not engine:
        return None
    if unit.thread != threading.get_ident():
        raise RuntimeError("a unit of work is used by another thread than the one that opened it")
    return unit


def _write_lock(engine: Engine) -> threading.Lock | None:
    """SQLite has one writer at a time; threads of this process take turns on a lock instead of
    meeting SQLITE_BUSY, whose busy handler sleeps in steps of up to 100 ms. PostgreSQL needs none."""
    if engine.dialect.name != "sqlite":
        return None
    with _LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(engine, threading.Lock())


class SqlStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite_lock = _write_lock(engine)
        self._lock: contextlib.AbstractContextManager[object] = (
            self._sqlite_lock or contextlib.nullcontext()
        )

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """A unit of work: every write that this thread's stores on this database make inside it
        is committed together at its end, or none is if it raises (reads inside it see its
        writes). A unit opened inside another is part of it, undone alone if it raises (a
        savepoint). The transaction begins at the first write and keeps SQLite's write lock until
        the end: hold no unit across a network call after a write. Raises StoreUnavailable."""
        outer = _unit_of(self._engine)
        unit = outer or _Unit(self._engine, self._sqlite_lock)
        token = None if outer else _UNIT.set(unit)
        try:
            if outer is not None:
                with unit.part():
                    yield
            else:
                try:
                    yield
                except BaseException:
                    unit.end(commit=False)
                    raise
                unit.end(commit=True)
        except (OperationalError, SAInterfaceError) as exc:
            raise StoreUnavailable("The database is unavailable.") from exc
        finally:
            if token is not None:
                _UNIT.reset(token)

    def in_unit(self) -> bool:
        """Whether this thread is inside a unit of work (``atomic``) on this database."""
        return _unit_of(self._engine) is not None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction of its own, or a part of the unit of work open (``atomic``)."""
        try:
            unit = _unit_of(self._engine)
            if unit is not None:  # undone alone if it raises (the unit may go on)
                with unit.part():
                    yield unit.connection()
                return
            _refuse_while_stepping(self._sqlite_lock)
            with self._lock, self._engine.begin() as conn:
                yield conn
        except (OperationalError, SAInterfaceError) as exc:
            raise StoreUnavailable("The database is unavailable.") from exc

    @contextmanager
    def _write_alone(self) -> Iterator[Connection]:
        """``_write`` for what must stay written whatever becomes of a unit of work open around
        it (an attempt a throttle counts, whose refusal raises through the unit): always a
        transaction of its own. Refused once that unit has written: SQLite's write lock is the
        unit's until it ends."""
        unit = _unit_of(self._engine)
        if unit is not None and unit.conn is not None:
            raise RuntimeError("a write of its own inside a unit of work that has written")
        try:
            _refuse_while_stepping(self._sqlite_lock)
            with self._lock, self._engine.begin() as conn:
                yield conn
        except (OperationalError, SAInterfaceError) as exc:
            raise StoreUnavailable("The database is unavailable.") from exc

    def _lock_for_steps(self) -> bool:
        """Takes the SQLite write lock if it is free right now, to hold across event-loop steps
        (False: taken, or not SQLite); ``_unlock_steps`` gives it back."""
        lock = self._sqlite_lock
        if lock is None or not lock.acquire(blocking=False):
            return False
        _STEPPING[lock] = threading.get_ident()
        return True

    def _unlock_steps(self) -> None:
        assert self._sqlite_lock is not None
        _STEPPING.pop(self._sqlite_lock, None)
        self._sqlite_lock.release()

    def _claim(
        self, query: Select[Any], table: Table, due: ColumnElement[bool], **lease: Any
    ) -> list[Row[Any]]:
        """The rows of ``query`` (over ``table``, filtered by ``due``) that this call leases: each
        by an update under the same ``due``, so another claimer's lease taken between the select
        and the update leaves the row to it. A read first: the background loops that claim look
        every few seconds and nearly always find nothing, and a write transaction each time would
        take SQLite's write lock for nothing."""
        if not self._read(lambda c: c.execute(select(table.c.id).where(due).limit(1)).first()):
            return []
        with self._write() as conn:
            return [
                row
                for row in conn.execute(query).all()
                if conn.execute(
                    update(table).where(due, table.c.id == row.id).values(**lease)
                ).rowcount
                == 1
            ]

    def _read(self, fn: Callable[[Connection], T]) -> T:
        try:
            unit = _unit_of(self._engine)
            if unit is not None and unit.conn is not None:
                return fn(unit.conn)  # (what the unit wrote, not committed yet, is read too)
            with (
                self._engine.connect().execution_options(readonly=True) as conn,
                conn.begin(),
            ):
                return fn(conn)
        except (OperationalError, SAInterfaceError) as exc:
            raise StoreUnavailable("The database is unavailable.") from exc


# The change feeds (key_events, money_events): their rows are numbered by the database and read by
# number (``seq > last seen``), so each must commit in the order of its numbers. One lock for both
# feeds: a transaction appending to both cannot then wait for another holding them the other way.
_FEED_LOCK = 0x6B70_6665_6564_0001


def append_to_feed(conn: Connection, table: Table, **values: Any) -> None:
    """Inserts a change feed's row. On PostgreSQL two transactions can take numbers 10 and 11 and
    commit 11 first: a gateway reading the feed in between sees 11, moves past 10, and never sees
    its change (a revocation, a lowered budget, credit taken back). So the row's number is taken
    under a lock held until the transaction ends (``pg_advisory_xact_lock``): the feed's writers
    commit one after the other, in the order of their numbers. SQLite has one writer at a time."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _FEED_LOCK})
    conn.execute(insert(table).values(**values))


def fields_of(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields (``dataclasses.fields``, not ``__slots__``: a class compiled
    by mypyc has none)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
