"""SqlStore, the base of every SQL repository: each method is one short transaction, and SQLite's
one writer is taken in turn by this process's threads."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Row, Select, Table, select, update
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError

from keyplane.errors import StoreUnavailable

T = TypeVar("T")


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
# Write locks held across event-loop steps (hold_repository's resolve_stepwise) → the thread.
_STEPPING: dict[threading.Lock, int] = {}


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
    def _write(self) -> Iterator[Connection]:
        if (
            self._sqlite_lock is not None
            and _STEPPING.get(self._sqlite_lock) == threading.get_ident()
        ):
            # This thread holds the lock in a stepwise batch it yielded from: waiting would hang.
            raise RuntimeError("a blocking write on the event loop during a stepwise batch")
        try:
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
            with (
                self._engine.connect().execution_options(readonly=True) as conn,
                conn.begin(),
            ):
                return fn(conn)
        except (OperationalError, SAInterfaceError) as exc:
            raise StoreUnavailable("The database is unavailable.") from exc


def fields_of(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields (``dataclasses.fields``, not ``__slots__``: a class compiled
    by mypyc has none)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
