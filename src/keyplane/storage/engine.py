"""Engines for SQLite (WAL, immediate write transactions) and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from keyplane.errors import InvalidRequest

BUSY_TIMEOUT_MS = 30_000  # how long a SQLite write waits for another process's write lock
AUTOCHECKPOINT_PAGES = 1000  # SQLite's default: a commit that leaves a WAL this long checkpoints


_PG_TIMEOUTS = {
    "connect_timeout": 10,  # seconds to connect
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms that sent data may stay unacknowledged
}


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
    # A database that goes silent is found out rather than waited on for the kernel's ~15 minutes
    # (libpq's parameters; any the URL sets win).
    defaults = {k: v for k, v in _PG_TIMEOUTS.items() if k not in parsed.query}
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=defaults
    )
    event.listen(engine, "before_cursor_execute", _refuse_nul)
    return engine


def _refuse_nul(
    _conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any, many: bool
) -> None:
    """PostgreSQL's text cannot hold U+0000, and the driver's error for it would be a server
    error: a value with one (an id in a URL, say) is bad input. (Request bodies refuse it before
    this, on either database: web/schemas.py.)"""
    for params in parameters if many else (parameters,):
        values = params.values() if isinstance(params, Mapping) else params
        if any(isinstance(v, str) and "\x00" in v for v in values or ()):
            raise InvalidRequest("A value cannot contain the NUL character (U+0000).")


def _null(value: None) -> None:
    return value


def _fast_binding() -> None:
    """The sqlite3 module binds exact ints, floats and strings directly, but passes every other
    parameter (a bool, None) through its adapter lookup, which tries two attributes that do not
    exist and formats an AttributeError for each: ~500 ns a parameter, a fifth of the driver's time
    writing a usage record. Registered adapters are found in one dict lookup. Both keep what is
    stored as it was (a bool as 0/1, None as NULL); process-wide and idempotent."""
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(type(None), _null)


def _sqlite_engine(url: str) -> Engine:
    _fast_binding()
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see "begin").
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred BEGIN that later writes can fail with SQLITE_BUSY despite busy_timeout
        # (the lock upgrade cannot wait); BEGIN IMMEDIATE takes the write lock up front.
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
