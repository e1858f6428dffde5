"""One gateway per database: the lock a serving process holds for as long as it runs.

A gateway keeps its organizations' money holds and its rate-limit counters in its own memory
(gateway/money.py, limits/ratelimit.py). A second gateway on the same database would trust its own
view of the balance, and both together could spend more than it: so the second refuses to start.
The lock goes with the process, however it ends (a kill, an OOM): PostgreSQL drops a session's
advisory lock with its connection, the kernel an ``flock`` with its file. A restart after a crash
therefore starts at once, and every gateway the ``gateways`` table still lists is then known dead:
their rows are forgotten, so the holds they left open are settled by the first sweep.

(CLI commands and the Admin API of the running gateway do not take it: they write through the
database, which the gateway reads back.)"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, delete, select, text

from keyplane.storage.billing_tables import gateways
from keyplane.storage.engine import is_sqlite

log = logging.getLogger(__name__)

# The advisory lock's key, the same for every keyplane gateway (advisory locks are per database).
LOCK_KEY = 0x6B70_6777  # "kpgw"


class AnotherGateway(Exception):
    """Another process serves this database already (the message says which, when it can)."""


class GatewayLock:
    def __init__(self, engine: Engine, *, wait_s: float = 2.0) -> None:
        self._engine = engine
        # How long a claim waits for the lock before giving up: a gateway killed a moment ago may
        # still hold it (PostgreSQL ends a session a little after its client's socket closes).
        self._wait_s = wait_s
        self._file: IO[bytes] | None = None  # SQLite: the flocked file beside the database
        self._conn: Connection | None = None  # PostgreSQL: the session holding it, out of the pool

    def acquire(self) -> None:
        """Takes the lock, or raises AnotherGateway; then forgets the gateways listed as live
        (they cannot be: a live one would hold the lock)."""
        take = self._lock_file if is_sqlite(self._engine) else self._lock_session
        deadline = time.monotonic() + self._wait_s
        while True:
            try:
                take()
                break
            except AnotherGateway:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        with self._engine.begin() as conn:
            conn.execute(delete(gateways))

    def keep(self) -> None:
        """Checks the PostgreSQL session still holds the lock, and takes it again on a new
        connection if the database dropped the old one (a restart of PostgreSQL ends every
        session); if another gateway took it meanwhile, says so loudly. Nothing to do on SQLite."""
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.rollback()  # (never left idle in a transaction)
            return
        except Exception:  # the session is gone, and its lock with it
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        try:
            self._lock_session()
        except AnotherGateway as exc:
            log.error("this gateway lost its database lock: %s", exc)
        except Exception as exc:  # unreachable: try again at the next check
            log.warning("could not take the gateway lock again: %s", exc)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # (closing the file drops the flock)
            self._file = None
        if self._conn is not None:
            with contextlib.suppress(Exception):  # (at once: not when the session ends)
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                self._conn.commit()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _lock_file(self) -> None:
        database = self._engine.url.database
        if not database or database == ":memory:":
            return  # (a database in this process's memory has no other process)
        path = Path(f"{database}-gateway.lock")
        file = path.open("a+b")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise AnotherGateway(_refusal(self._engine, f"the database file {database}")) from None
        file.truncate(0)
        file.write(f"{os.getpid()}\n".encode())
        file.flush()
        self._file = file

    def _lock_session(self) -> None:
        conn = self._engine.connect()
        conn.detach()  # (its own session for as long as it lives: never back into the pool)
        # PostgreSQL notices a gateway whose machine died (no FIN, no RST) only by keepalives:
        # the operating system's default waits two hours before the first. This session's lock
        # is let go ~25 s after its peer went silent.
        conn.execute(text("SET tcp_keepalives_idle = 10"))
        conn.execute(text("SET tcp_keepalives_interval = 5"))
        conn.execute(text("SET tcp_keepalives_count = 3"))
        taken = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar()
        conn.commit()  # (the lock is the session's, not the transaction's)
        if not taken:
            conn.close()
            raise AnotherGateway(_refusal(self._engine, "this PostgreSQL database"))
        self._conn = conn


def _refusal(engine: Engine, what: str) -> str:
    """Why this gateway does not start, naming the one that runs when the table knows it."""
    with contextlib.suppress(Exception), engine.connect() as conn:
        rows = conn.execute(select(gateways).order_by(gateways.c.started_at)).all()
        if rows:
            now = int(time.time())
            live = ", ".join(
                f"{row.id} (started at {_utc(row.started_at)}, last seen alive "
                f"{max(0, now - row.seen_at)} s ago)"
                for row in rows
            )
            what = f"{what} (gateway {live})"
    return (
        f"another keyplane gateway is serving {what}. A gateway keeps money holds and rate-limit "
        "counters in its own memory, so one database takes one gateway: stop the other first."
    )


def _utc(at: int) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
