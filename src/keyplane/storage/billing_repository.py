"""SQL implementation of the MoneyStore port."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Generator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import InterfaceError as SAInterfaceError

from keyplane.billing.address import address_from_json, address_json
from keyplane.billing.ports import (
    STALE_CLAIM_S,
    BillingSettings,
    Claim,
    ClaimLost,
    Done,
    MoneyEvent,
    SpendAlert,
)
from keyplane.billing.wallet import BillingMode, Hold, Lot, OrgMoney, Outcome
from keyplane.errors import IdempotencyKeyReused, StoreUnavailable
from keyplane.storage.billing_tables import (
    credit_lots,
    gateways,
    holds,
    idempotency_keys,
    ledger_balances,
    ledger_entries,
    money_events,
    org_billing,
    project_budgets,
    recharge_jobs,
    spend_alerts,
    spend_totals,
)
from keyplane.storage.engine import is_sqlite
from keyplane.storage.settlement_writer import (
    HOLD_COLUMNS,
    SELECT_IDS,
    Writer,
    add_sql,
    balances,
    driver_writer,
    hold_row,
    items,
    padded,
    resolve_steps,
)
from keyplane.storage.store import SqlStore

log = logging.getLogger("keyplane.storage")


def complete_claim(conn: Connection, done: Done | None) -> None:
    """Stores ``done``'s response with its key, in the caller's transaction; raises ClaimLost
    (rolling it back) when the claim is no longer that run's."""
    if done is None:
        return
    claim = done.claim
    stored = conn.execute(
        update(idempotency_keys)
        .where(
            idempotency_keys.c.scope == claim.scope,
            idempotency_keys.c.key == claim.key,
            idempotency_keys.c.created_at == claim.claimed_at,
            idempotency_keys.c.response == "",
        )
        .values(response=done.response)
    ).rowcount
    if stored != 1:
        raise ClaimLost(claim.scope)


def insert_lot(conn: Connection, org_id: str, lot: Lot, note: str, source: str) -> None:
    """Writes a lot, its funding entries (+amount on the lot, -amount on ``source``) and its
    change-feed event, in the caller's transaction (``add_lot``'s, or a purchase's with its line
    of the billing history)."""
    conn.execute(
        insert(credit_lots).values(
            id=lot.id, org_id=org_id, kind=lot.kind, amount_micro=lot.amount,
            created_at=lot.created_at, expires_at=lot.expires_at, note=note,
        )
    )  # fmt: skip
    _post(
        conn,
        [
            {"txn_id": lot.id, "org_id": org_id, "account": "lot", "lot_id": lot.id,
             "amount_micro": lot.amount, "created_at": lot.created_at},
            {"txn_id": lot.id, "org_id": org_id, "account": source, "lot_id": None,
             "amount_micro": -lot.amount, "created_at": lot.created_at},
        ],
    )  # fmt: skip
    _event(conn, org_id, "lot_added", lot.id, lot.created_at)


def _event(conn: Connection, org_id: str, kind: str, ref: str | None, at: int) -> None:
    conn.execute(insert(money_events).values(org_id=org_id, kind=kind, ref=ref, at=at))


def _settings(row: Any) -> BillingSettings:
    return BillingSettings(
        org_id=row.org_id,
        mode=BillingMode(row.mode),
        usage_limit=row.usage_limit_micro,
        budget=row.budget_micro,
        auto_recharge=row.auto_recharge,
        recharge_threshold=row.recharge_threshold_micro,
        recharge_target=row.recharge_target_micro,
        tier=row.tier,
        billing_email=row.billing_email,
        billing_address=address_from_json(row.billing_address),
    )


def _remaining(conn: Connection, org_id: str) -> dict[str, int]:
    """Each lot's remaining credit (its ledger balance)."""
    rows = conn.execute(
        select(ledger_balances.c.lot_id, ledger_balances.c.amount_micro).where(
            ledger_balances.c.org_id == org_id, ledger_balances.c.account == "lot"
        )
    )
    return {lot_id: int(amount) for lot_id, amount in rows}


def _post(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Writes ledger entries and adds them to the accounts' balances (SQLAlchemy callers; the
    settlement writer does the same through ``Writer``)."""
    conn.execute(insert(ledger_entries), rows)
    totals = balances((r["org_id"], r["account"], r["lot_id"], r["amount_micro"]) for r in rows)
    conn.exec_driver_sql(add_sql("ledger_balances", _marker(conn)), list(items(totals)))


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


def _marker(conn: Connection) -> str:
    """The driver's parameter placeholder (``?`` for sqlite3, ``%s`` for psycopg)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _writer(conn: Connection) -> contextlib.AbstractContextManager[Writer]:
    """A ``Writer`` on ``conn``'s driver connection."""
    raw = conn.connection.driver_connection
    assert raw is not None
    return driver_writer(raw, conn.dialect.name == "sqlite", conn.dialect.dbapi)


def _month_spend(conn: Connection, org_id: str, period: str) -> list[tuple[str, int]]:
    """(project id or "", settled spend) of the organization's month, from ``spend_totals``."""
    rows = conn.execute(
        select(spend_totals.c.project_id, spend_totals.c.charged_micro).where(
            spend_totals.c.org_id == org_id, spend_totals.c.period == period
        )
    )
    return [(pid, int(amount)) for pid, amount in rows]


def _hold(row: Any) -> Hold:
    return Hold(
        id=row.id, org_id=row.org_id, project_id=row.project_id, amount=row.amount_micro,
        period=row.period, created_at=row.created_at, expires_at=row.expires_at,
        key_id=row.key_id, model=row.model, endpoint=row.endpoint,
    )  # fmt: skip


class SqlMoneyStore(SqlStore):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._steps_conn: sqlite3.Connection | None = None
        self._steps_opened = 0  # connections opened for stepwise batches so far
        # (An in-memory database is one connection's own: no second connection can share it.)
        self._steps_possible = self._sqlite_lock is not None and engine.url.database not in (
            None, "", ":memory:",
        )  # fmt: skip

    def load(
        self, org_id: str, period: str, usage_limit_for: Callable[[str | None], int]
    ) -> OrgMoney:
        def read(c: Connection) -> OrgMoney:
            row = c.execute(select(org_billing).where(org_billing.c.org_id == org_id)).first()
            s = _settings(row) if row else BillingSettings(org_id, BillingMode.PREPAID, None, None)
            money = OrgMoney(
                org_id=org_id,
                mode=s.mode,
                usage_limit=usage_limit_for(s.tier) if s.usage_limit is None else s.usage_limit,
                budget=s.budget,
                auto_recharge=s.auto_recharge,
                recharge_threshold=s.recharge_threshold,
                recharge_target=s.recharge_target,
                tier=s.tier,
            )
            for pid, amount in c.execute(
                select(project_budgets.c.project_id, project_budgets.c.budget_micro).where(
                    project_budgets.c.org_id == org_id
                )
            ):
                money.project_budgets[pid] = amount
            remaining = _remaining(c, org_id)
            for lot in c.execute(
                select(credit_lots).where(
                    credit_lots.c.org_id == org_id, credit_lots.c.revoked_at.is_(None)
                )
            ):
                money.add_lot(
                    Lot(
                        lot.id,
                        lot.kind,
                        lot.amount_micro,
                        remaining.get(lot.id, 0),
                        lot.created_at,
                        lot.expires_at,
                    )
                )
            for h in c.execute(
                select(holds).where(holds.c.org_id == org_id, holds.c.status == "open")
            ):
                money.restore_hold(_hold(h))
            for pid, amount in _month_spend(c, org_id, period):
                money.spent[period] = money.spent.get(period, 0) + amount
                money.project_spent[(pid, period)] = amount
            return money

        return self._read(read)

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

    def add_lot(
        self, org_id: str, lot: Lot, note: str, source: str, done: Done | None = None
    ) -> None:
        with self._write() as conn:
            complete_claim(conn, done)
            insert_lot(conn, org_id, lot, note, source)

    def revoke_lot(self, org_id: str, lot_id: str, at: int) -> int:
        with self._write() as conn:
            done = conn.execute(
                update(credit_lots)
                .where(
                    credit_lots.c.id == lot_id,
                    credit_lots.c.org_id == org_id,
                    credit_lots.c.revoked_at.is_(None),
                )
                .values(revoked_at=at)
            ).rowcount
            if not done:
                return -1
            remaining = _remaining(conn, org_id).get(lot_id, 0)
            if remaining:
                txn = f"revoke:{lot_id}"
                _post(
                    conn,
                    [
                        {"txn_id": txn, "org_id": org_id, "account": "lot", "lot_id": lot_id,
                         "amount_micro": -remaining, "created_at": at},
                        {"txn_id": txn, "org_id": org_id, "account": "grants", "lot_id": None,
                         "amount_micro": remaining, "created_at": at},
                    ],
                )  # fmt: skip
            _event(conn, org_id, "lot_revoked", lot_id, at)
            return remaining

    def lots(self, org_id: str) -> Sequence[tuple[Lot, str]]:
        def read(c: Connection) -> list[tuple[Lot, str]]:
            remaining = _remaining(c, org_id)
            rows = c.execute(
                select(credit_lots)
                .where(credit_lots.c.org_id == org_id)
                .order_by(credit_lots.c.created_at)
            )
            return [
                (
                    Lot(
                        r.id,
                        r.kind,
                        r.amount_micro,
                        remaining.get(r.id, 0),
                        r.created_at,
                        r.expires_at,
                        r.revoked_at is not None,
                    ),
                    r.note,
                )
                for r in rows
            ]

        return self._read(read)

    def totals(self, org_id: str) -> tuple[int, int]:
        def read(c: Connection) -> tuple[int, int]:
            held = c.execute(
                select(func.sum(holds.c.amount_micro)).where(
                    holds.c.org_id == org_id, holds.c.status == "open"
                )
            ).scalar()
            spent = c.execute(
                select(ledger_balances.c.amount_micro).where(
                    ledger_balances.c.org_id == org_id,
                    ledger_balances.c.account == "usage",
                    ledger_balances.c.lot_id == "",
                )
            ).scalar()
            return int(held or 0), int(spent or 0)

        return self._read(read)

    def payments(self, org_id: str) -> tuple[int, int | None]:
        paid, first = self._read(
            lambda c: c.execute(
                select(
                    func.sum(credit_lots.c.amount_micro), func.min(credit_lots.c.created_at)
                ).where(credit_lots.c.org_id == org_id, credit_lots.c.kind == "purchase")
            ).one()
        )
        return int(paid or 0), first

    def organizations_with_payments(self) -> Sequence[str]:
        return self._read(
            lambda c: list(
                c.execute(
                    select(credit_lots.c.org_id).where(credit_lots.c.kind == "purchase").distinct()
                ).scalars()
            )
        )

    def settings(self, org_id: str) -> BillingSettings | None:
        row = self._read(
            lambda c: c.execute(select(org_billing).where(org_billing.c.org_id == org_id)).first()
        )
        return _settings(row) if row else None

    def save_settings(self, s: BillingSettings, at: int) -> None:
        values = {
            "mode": s.mode.value, "usage_limit_micro": s.usage_limit, "budget_micro": s.budget,
            "auto_recharge": s.auto_recharge, "recharge_threshold_micro": s.recharge_threshold,
            "recharge_target_micro": s.recharge_target, "updated_at": at, "tier": s.tier,
            "billing_email": s.billing_email, "billing_address": address_json(s.billing_address),
        }  # fmt: skip
        with self._write() as conn:
            if not conn.execute(
                update(org_billing).where(org_billing.c.org_id == s.org_id).values(**values)
            ).rowcount:
                conn.execute(insert(org_billing).values(org_id=s.org_id, **values))
            _event(conn, s.org_id, "settings", None, at)

    def project_budget(self, project_id: str) -> int | None:
        return self._read(
            lambda c: c.execute(
                select(project_budgets.c.budget_micro).where(
                    project_budgets.c.project_id == project_id
                )
            ).scalar()
        )

    def save_project_budget(
        self, org_id: str, project_id: str, amount: int | None, at: int
    ) -> None:
        with self._write() as conn:
            conn.execute(delete(project_budgets).where(project_budgets.c.project_id == project_id))
            if amount is not None:
                conn.execute(
                    insert(project_budgets).values(
                        project_id=project_id, org_id=org_id, budget_micro=amount, updated_at=at
                    )
                )
            _event(conn, org_id, "settings", project_id, at)

    def alerts(self, org_id: str) -> Sequence[SpendAlert]:
        rows = self._read(
            lambda c: c.execute(
                select(spend_alerts)
                .where(spend_alerts.c.org_id == org_id)
                .order_by(spend_alerts.c.created_at, spend_alerts.c.id)
            ).all()
        )
        return [
            SpendAlert(
                r.id,
                r.org_id,
                r.project_id,
                r.threshold_micro,
                tuple(json.loads(r.recipients)) if r.recipients else None,
                r.created_at,
            )
            for r in rows
        ]

    def add_alert(self, alert: SpendAlert) -> None:
        with self._write() as conn:
            conn.execute(
                insert(spend_alerts).values(
                    id=alert.id, org_id=alert.org_id, project_id=alert.project_id,
                    threshold_micro=alert.threshold, created_at=alert.created_at,
                    recipients=json.dumps(list(alert.recipients)) if alert.recipients else None,
                )
            )  # fmt: skip

    def delete_alert(self, org_id: str, alert_id: str) -> bool:
        with self._write() as conn:
            return bool(
                conn.execute(
                    delete(spend_alerts).where(
                        and_(spend_alerts.c.id == alert_id, spend_alerts.c.org_id == org_id)
                    )
                ).rowcount
            )

    def month_spend(self, org_id: str, period: str) -> tuple[int, dict[str, int]]:
        per_project = dict(self._read(lambda c: _month_spend(c, org_id, period)))
        return sum(per_project.values()), per_project

    def events_since(self, seq: int | None) -> tuple[int, Sequence[MoneyEvent]]:
        def read(c: Connection) -> tuple[int, Sequence[MoneyEvent]]:
            if seq is not None:
                rows = c.execute(
                    select(money_events)
                    .where(money_events.c.seq > seq)
                    .order_by(money_events.c.seq)
                ).all()
                if rows:
                    return rows[-1].seq, [MoneyEvent(r.seq, r.org_id, r.kind, r.ref) for r in rows]
            latest = c.execute(select(func.max(money_events.c.seq))).scalar() or 0
            return (latest if seq is None else min(seq, latest)), []

        return self._read(read)

    def claim_idempotency(self, claim: Claim) -> str | None:
        keyed = (idempotency_keys.c.scope == claim.scope, idempotency_keys.c.key == claim.key)
        try:
            with self._write() as conn:
                conn.execute(
                    insert(idempotency_keys).values(
                        scope=claim.scope, key=claim.key, request_hash=claim.request_hash,
                        response="", created_at=claim.claimed_at,
                    )
                )  # fmt: skip
            return None
        except IntegrityError:
            pass
        row = self._read(lambda c: c.execute(select(idempotency_keys).where(*keyed)).first())
        if row is None:  # released between our insert and this read: the client may retry
            raise IdempotencyKeyReused("A request with this Idempotency-Key just failed; retry it.")
        if row.request_hash != claim.request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with different parameters."
            )
        if row.response:
            return str(row.response)
        if row.created_at <= claim.claimed_at - STALE_CLAIM_S:
            # Its run died before its write: this request takes the claim over (one only).
            with self._write() as conn:
                taken = conn.execute(
                    update(idempotency_keys)
                    .where(*keyed, idempotency_keys.c.response == "")
                    .where(idempotency_keys.c.created_at == row.created_at)
                    .values(created_at=claim.claimed_at)
                ).rowcount
            if taken == 1:
                return None
        raise IdempotencyKeyReused(
            "A request with this Idempotency-Key is still in progress; retry shortly."
        )

    def release_idempotency(self, claim: Claim) -> None:
        with self._write() as conn:
            conn.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.scope == claim.scope,
                    idempotency_keys.c.key == claim.key,
                    idempotency_keys.c.created_at == claim.claimed_at,
                    idempotency_keys.c.response == "",
                )
            )

    def enqueue_recharge(
        self, job_id: str, org_id: str, target: int, at: int, due_at: int | None = None
    ) -> bool:
        try:
            with self._write() as conn:
                conn.execute(
                    insert(recharge_jobs).values(
                        id=job_id, org_id=org_id, pending_org_id=org_id, target_micro=target,
                        status="pending", created_at=at, due_at=due_at,
                    )
                )  # fmt: skip
        except IntegrityError:
            return False
        return True
