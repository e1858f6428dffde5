"""Migrations upgrade from empty on SQLite and PostgreSQL, and agree with the table definitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select

from keyplane.keys.format import KeyKind
from keyplane.storage import migrate
from keyplane.storage.billing_repository import SqlMoneyStore
from keyplane.storage.billing_tables import ledger_balances, ledger_entries
from keyplane.storage.engine import make_engine
from keyplane.storage.repositories import SqlKeyStore
from keyplane.storage.tables import metadata, usage_records


@pytest.mark.postgres
def test_postgresql_upgrades_from_empty_and_matches_models(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        migrate.upgrade(engine)
        assert set(metadata.tables) <= set(inspect(engine).get_table_names())
        command.check(migrate.alembic_config(engine))  # raises if models and migrations differ
        store = SqlKeyStore(engine)
        assert store.changes_since(0) == (0, [])
    finally:
        engine.dispose()


def test_sqlite_upgrades_from_empty_and_matches_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/m.db")
    try:
        migrate.upgrade(engine)
        assert set(metadata.tables) <= set(inspect(engine).get_table_names())
        command.check(migrate.alembic_config(engine))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        migrate.upgrade(engine)  # idempotent
    finally:
        engine.dispose()


def test_head_is_the_newest_migration_and_an_old_database_is_upgraded(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    engine = make_engine(f"sqlite:///{tmp_path}/m.db")
    try:
        script = ScriptDirectory.from_config(migrate.alembic_config(engine))
        assert script.get_current_head() == migrate.HEAD
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine, "0007")
        migrate.ensure_current(engine)  # an older schema is brought up to date at start
        assert migrate.current_revision(engine) == migrate.HEAD
    finally:
        engine.dispose()


def test_models_match_migrations_check() -> None:
    migrate.check_models_match_migrations()


@pytest.mark.postgres
def test_keys_work_the_same_on_postgresql(pg_url: str) -> None:
    from keyplane.accounts.service import AccountService
    from keyplane.clock import SystemClock
    from keyplane.keys.service import KeyService
    from keyplane.storage.repositories import SqlAccountStore

    engine = make_engine(pg_url)
    try:
        migrate.upgrade(engine)
        clock = SystemClock()
        accounts = AccountService(SqlAccountStore(engine), clock)
        user, org, project = accounts.initialize(
            email="pg@example.com", password="x" * 12, org_name="PG"
        )
        store = SqlKeyStore(engine)
        keys = KeyService(store, b"pepper" * 8, clock)
        key, _ = keys.create(
            kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name="pg",
            owner_type="user", owner_id=user.id, created_by=user.id,
        )  # fmt: skip
        seq, changed = store.changes_since(0)
        assert changed == [key.id]
        keys.revoke(org.id, key.id)
        assert store.changes_since(seq)[1] == [key.id]
        assert store.get(key.id) is not None and store.get(key.id).revoked_at is not None  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_the_running_totals_migration_adds_up_the_records_and_entries_already_written(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/m.db")
    try:
        migrate.upgrade(engine, "0008")
        row = {
            "created_at": 1, "key_id": "k", "owner_type": "user", "owner_id": "u", "model": "m",
            "endpoint": "chat.completions", "input_tokens": 1, "cached_input_tokens": 0,
            "output_tokens": 1, "status": 200, "latency_ms": 1, "stream": False,
            "outcome": "completed", "tokens_estimated": False,
        }  # fmt: skip
        spent = [  # (org, month, project, cost)
            ("org-a", "2026-11", "p1", 5), ("org-a", "2026-11", "p1", 7),
            ("org-a", "2026-11", None, 11), ("org-a", "2026-10", "p1", 100),
            ("org-b", "2026-11", "p1", 1000),
        ]  # fmt: skip
        ledger = [  # (txn, org, account, lot, amount)
            ("cg_1", "org-a", "lot", "cg_1", 500), ("cg_1", "org-a", "grants", None, -500),
            ("stl_1", "org-a", "lot", "cg_1", -23), ("stl_1", "org-a", "usage", None, 23),
            ("stl_2", "org-a", "lot", "cg_1", -100), ("stl_2", "org-a", "usage", None, 100),
        ]  # fmt: skip
        with engine.begin() as conn:
            conn.execute(
                ledger_entries.insert(),
                [
                    {"txn_id": txn, "org_id": org, "account": account, "lot_id": lot,
                     "amount_micro": amount, "created_at": 1}
                    for txn, org, account, lot, amount in ledger
                ],
            )  # fmt: skip
            conn.execute(
                usage_records.insert(),
                [
                    {**row, "request_id": f"req_{i}", "org_id": org, "period": month,
                     "project_id": project, "cost_micro_usd": cost}
                    for i, (org, month, project, cost) in enumerate(spent)
                ],
            )  # fmt: skip
        migrate.upgrade(engine)
        store = SqlMoneyStore(engine)
        assert store.month_spend("org-a", "2026-11") == (23, {"p1": 12, "": 11})
        assert store.month_spend("org-a", "2026-10") == (100, {"p1": 100})
        assert store.month_spend("org-b", "2026-11") == (1000, {"p1": 1000})
        assert store.totals("org-a") == (0, 123)  # all-time spend: the ledger's usage account
        with engine.connect() as conn:
            assert set(conn.execute(select(ledger_balances)).all()) == {
                ("org-a", "lot", "cg_1", 377), ("org-a", "grants", "", -500),
                ("org-a", "usage", "", 123),
            }  # fmt: skip
    finally:
        engine.dispose()
