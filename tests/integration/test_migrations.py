"""Migrations upgrade from empty on SQLite and PostgreSQL, and agree with the table definitions."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from conftest import fresh_postgres
from keyplane.billing.address import BillingAddress
from keyplane.keys.format import KeyKind
from keyplane.storage import migrate
from keyplane.storage.billing_repository import SqlMoneyStore
from keyplane.storage.billing_tables import ledger_balances, ledger_entries
from keyplane.storage.engine import make_engine
from keyplane.storage.key_repository import SqlKeyStore
from keyplane.storage.payment_repository import SqlPaymentStore
from keyplane.storage.payment_tables import payments
from keyplane.storage.tables import metadata, organizations, usage_records


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
    from keyplane.storage.account_repository import SqlAccountStore

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


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_the_payments_migration_keeps_one_line_a_lot_and_the_database_refuses_a_second(
    tmp_path: Path, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """0019 on a database with a billing history: every line stays but a second one an older
    keyplane wrote for the same credit lot (the earliest is kept, and the removal logged); failed
    charges (no lot) stay however many; from then on the database itself refuses a second line
    for a lot, and the provider's payment id is stored."""
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path}/m.db"
            if database == "sqlite"
            else stack.enter_context(fresh_postgres())
        )
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine, "0018")
        line = {
            "org_id": "org_1", "kind": "purchase", "amount_micro": 10_000_000,
            "status": "succeeded", "method_id": "pm_1", "brand": "visa", "last4": "4242",
            "failure": None,
        }  # fmt: skip
        failed = {**line, "status": "failed", "failure": "card_declined", "lot_id": None}
        old = [
            {**line, "id": "pay_1", "lot_id": "cg_a", "created_at": 100},
            {**line, "id": "pay_2", "lot_id": "cg_b", "created_at": 200},
            {**failed, "id": "pay_3", "created_at": 300},
            {**failed, "id": "pay_4", "created_at": 300},
            {**line, "id": "pay_0", "lot_id": "cg_a", "created_at": 400},  # cg_a listed again
        ]
        with engine.begin() as conn:
            conn.execute(organizations.insert().values(id="org_1", name="Acme", created_at=1))
            conn.execute(payments.insert(), old)
        with caplog.at_level(logging.WARNING, logger="keyplane.storage"):
            migrate.upgrade(engine)
        assert [r.getMessage() for r in caplog.records] == [
            "migration 0019: removed billing history line pay_0 of org_1, a second line for "
            "credit lot cg_a (the same payment; the lot and the ledger are unchanged)"
        ]
        store = SqlPaymentStore(engine)
        listed = store.payments("org_1", 10)
        assert [(p.id, p.lot_id, p.provider_ref) for p in listed] == [
            ("pay_4", None, None), ("pay_3", None, None), ("pay_2", "cg_b", None),
            ("pay_1", "cg_a", None),
        ]  # fmt: skip
        command.check(migrate.alembic_config(engine))
        # The database, not only the code, refuses a second line for a lot; not for no lot.
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(
                payments.insert().values(**line, id="pay_5", lot_id="cg_b", created_at=500)
            )
        with engine.begin() as conn:
            conn.execute(payments.insert().values(**failed, id="pay_6", created_at=600))
            conn.execute(
                payments.insert().values(
                    **line, id="pay_7", lot_id="cg_c", created_at=700, provider_ref="pi_123"
                )
            )
        assert [(p.id, p.provider_ref) for p in store.payments("org_1", 2)] == [
            ("pay_7", "pi_123"), ("pay_6", None),
        ]  # fmt: skip


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_the_billing_preferences_migration_keeps_settings_and_payments_and_adds_the_address(
    tmp_path: Path, database: str
) -> None:
    """0020 on a database with billing settings and a payment: they read as before (no billing
    email: emails go to the Owners; no address; the old payment billed to nobody in particular),
    and a billing email, an address and a payment's copy of it are stored from then on."""
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path}/m.db"
            if database == "sqlite"
            else stack.enter_context(fresh_postgres())
        )
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine, "0019")
        with engine.begin() as conn:
            conn.execute(organizations.insert().values(id="org_1", name="Acme", created_at=1))
            conn.exec_driver_sql(
                "INSERT INTO org_billing (org_id, mode, budget_micro, auto_recharge, updated_at) "
                "VALUES ('org_1', 'prepaid', 7000000, false, 1)"
            )
            conn.exec_driver_sql(
                "INSERT INTO payments (id, org_id, kind, amount_micro, status, method_id, brand, "
                "last4, lot_id, created_at) VALUES ('pay_1', 'org_1', 'purchase', 10000000, "
                "'succeeded', 'pm_1', 'visa', '4242', 'cg_1', 100)"
            )
        migrate.upgrade(engine)
        command.check(migrate.alembic_config(engine))
        money = SqlMoneyStore(engine)
        stack.callback(money.close)
        settings = money.settings("org_1")
        assert settings is not None and settings.budget == 7_000_000
        assert (settings.billing_email, settings.billing_address) == (None, None)
        [old] = SqlPaymentStore(engine).payments("org_1", 10)
        assert (old.id, old.billed_to) == ("pay_1", None)

        address = BillingAddress(country="FR", line1="1 rue de Rivoli", city="Paris")
        money.save_settings(
            replace(settings, billing_email="billing@example.com", billing_address=address), 2
        )
        stored = money.settings("org_1")
        assert stored is not None and stored.budget == 7_000_000
        assert (stored.billing_email, stored.billing_address) == ("billing@example.com", address)
        SqlPaymentStore(engine).add_payment(
            replace(old, id="pay_2", lot_id=None, billed_to=address)
        )
        assert SqlPaymentStore(engine).payment("org_1", "pay_2") == replace(
            old, id="pay_2", lot_id=None, billed_to=address
        )


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_the_low_balance_alert_migration_keeps_settings_with_the_alert_off_and_downgrades(
    tmp_path: Path, database: str
) -> None:
    """0022 on a database with billing settings: they read as before with the alert off; an alert
    and its arming are stored from then on; a downgrade drops them and keeps the rest."""
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path}/m.db"
            if database == "sqlite"
            else stack.enter_context(fresh_postgres())
        )
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine, "0020")
        with engine.begin() as conn:
            conn.execute(organizations.insert().values(id="org_1", name="Acme", created_at=1))
            conn.exec_driver_sql(
                "INSERT INTO org_billing (org_id, mode, budget_micro, auto_recharge, updated_at, "
                "billing_email) VALUES ('org_1', 'prepaid', 7000000, false, 1, 'b@example.com')"
            )
        migrate.upgrade(engine)
        command.check(migrate.alembic_config(engine))
        money = SqlMoneyStore(engine)
        stack.callback(money.close)
        settings = money.settings("org_1")
        assert settings is not None and settings.low_balance_alert is None
        assert (settings.budget, settings.billing_email) == (7_000_000, "b@example.com")
        assert money.low_balance_arming("org_1") is None

        money.save_settings(replace(settings, low_balance_alert=10_000_000), 2)
        assert money.arm_low_balance("org_1", "lba_1")
        assert not money.arm_low_balance("org_1", "lba_2")  # armed already: kept
        assert money.low_balance_arming("org_1") == "lba_1"
        stored = money.settings("org_1")
        assert stored is not None and stored.low_balance_alert == 10_000_000
        assert not money.disarm_low_balance("org_1", "lba_2")
        assert money.disarm_low_balance("org_1", "lba_1")
        assert money.low_balance_arming("org_1") is None

        command.downgrade(migrate.alembic_config(engine), "0020")
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT budget_micro FROM org_billing").one()
            columns = {c["name"] for c in inspect(conn).get_columns("org_billing")}
        assert row[0] == 7_000_000 and "low_balance_alert_micro" not in columns
