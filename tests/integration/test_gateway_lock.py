"""One gateway per database (storage/gateway_lock.py), on SQLite and PostgreSQL: a second claim
fails with a message naming the running gateway; the lock goes with its holder, whether it lets go
or its connection dies; taking it forgets the gateways listed as live (they were dead); a gateway
whose PostgreSQL session was cut takes the lock again, or says loudly that another took it."""

from __future__ import annotations

import logging
import re
import time

import psycopg
import pytest
from sqlalchemy import Engine, insert, select

from conftest import fresh_postgres
from keyplane.storage import migrate
from keyplane.storage.billing_tables import gateways
from keyplane.storage.engine import make_engine
from keyplane.storage.gateway_lock import AnotherGateway, GatewayLock


def listed(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(gateways.c.id)).scalars())


def test_a_second_gateway_is_refused_until_the_first_lets_go(engine: Engine) -> None:
    first, second = GatewayLock(engine, wait_s=0), GatewayLock(engine, wait_s=0)
    first.acquire()
    with engine.begin() as conn:  # (the first's row, as its first sweep writes it)
        conn.execute(
            insert(gateways).values(
                id="gw_first", started_at=1_800_000_000, seen_at=int(time.time())
            )
        )
    try:
        with pytest.raises(AnotherGateway) as refused:
            second.acquire()
        said = str(refused.value)
        assert "another keyplane gateway is serving" in said
        assert re.search(
            r"gw_first \(started at 2027-01-15 08:00:00 UTC, last seen alive [01] s ago", said
        )
        assert "stop the other first" in said
        assert listed(engine) == {"gw_first"}  # a refused claim forgets nobody
        first.release()
        second.acquire()
        assert listed(engine) == set()  # listed as live, yet not holding the lock: dead
    finally:
        first.release()
        second.release()


def test_the_lock_goes_with_a_postgresql_session_that_dies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PostgreSQL restart ends the gateway's session, and the lock with it: at its next check
    the gateway takes it again; if another took it meanwhile, it logs an error."""
    with fresh_postgres() as url:
        engine = make_engine(url)
        migrate.ensure_current(engine)
        first, second = GatewayLock(engine, wait_s=0), GatewayLock(engine, wait_s=0)
        try:
            first.acquire()
            first.keep()  # holding it: nothing to do
            with pytest.raises(AnotherGateway):
                second.acquire()
            end_lock_sessions(url)
            first.keep()  # taken again on a new session
            with pytest.raises(AnotherGateway):
                second.acquire()

            end_lock_sessions(url)
            second.acquire()  # another gateway got there first
            with caplog.at_level(logging.ERROR, logger="keyplane.storage.gateway_lock"):
                first.keep()
            assert "this gateway lost its database lock" in caplog.text
        finally:
            first.release()
            second.release()
            engine.dispose()


def end_lock_sessions(url: str) -> None:
    """Ends the sessions holding advisory locks, as a database restart would, and waits until
    they are gone (without the timeout, pg_terminate_backend only signals the session, which may
    still hold the lock a moment later)."""
    with psycopg.connect(url, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    assert ended, "no session held the lock"
    assert all(row[0] for row in ended), "a session holding the lock did not end within 10 s"
