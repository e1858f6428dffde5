"""SQL implementation of the PaymentStore port."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from keyplane.audit.models import AuditEvent
from keyplane.billing.address import address_from_json, address_json
from keyplane.billing.payment_ports import (
    Adjustment,
    Payment,
    PaymentMethod,
    ProviderReport,
    RechargeJob,
)
from keyplane.billing.ports import Done
from keyplane.billing.reversals import Moves, decide, give_back, take
from keyplane.billing.wallet import Lot
from keyplane.ids import ordered_id
from keyplane.storage.audit_repository import insert_event
from keyplane.storage.billing_tables import ledger_entries, recharge_jobs
from keyplane.storage.idempotency_repository import complete_claim
from keyplane.storage.ledger_repository import insert_lot, lots_of, move_credit, record_event
from keyplane.storage.payment_tables import payment_adjustments, payment_methods, payments
from keyplane.storage.store import SqlStore

_METHOD_FIELDS = (
    "id", "org_id", "provider", "provider_ref", "brand", "last4", "exp_month", "exp_year",
    "is_default", "created_at",
)  # fmt: skip


def _method(row: Any) -> PaymentMethod:
    return PaymentMethod(**{f: getattr(row, f) for f in _METHOD_FIELDS})


def _payment(row: Any) -> Payment:
    return Payment(
        id=row.id, org_id=row.org_id, kind=row.kind, amount=row.amount_micro, status=row.status,
        method_id=row.method_id, brand=row.brand, last4=row.last4, failure=row.failure,
        lot_id=row.lot_id, created_at=row.created_at, provider_ref=row.provider_ref,
        billed_to=address_from_json(row.billed_to),
    )  # fmt: skip


def _adjustment(row: Any) -> Adjustment:
    return Adjustment(
        id=row.id, org_id=row.org_id, payment_id=row.payment_id, kind=row.kind, ref=row.ref,
        event_id=row.event_id, status=row.status, total=row.total_micro, amount=row.amount_micro,
        created_at=row.created_at,
    )  # fmt: skip


def _history(conn: Connection, txns: Sequence[str]) -> list[Moves]:
    """The lot moves of the adjustments ``txns``, a list per transaction, oldest first."""
    if not txns:
        return []
    rows = conn.execute(
        select(ledger_entries.c.txn_id, ledger_entries.c.lot_id, ledger_entries.c.amount_micro)
        .where(ledger_entries.c.txn_id.in_(txns), ledger_entries.c.account == "lot")
        .order_by(ledger_entries.c.id)
    )
    history: dict[str, Moves] = {}
    for txn, lot_id, amount in rows:
        history.setdefault(txn, []).append((lot_id, -int(amount)))
    return list(history.values())


def _insert_payment(conn: Connection, payment: Payment, audit: AuditEvent | None) -> None:
    conn.execute(
        insert(payments).values(
            id=payment.id, org_id=payment.org_id, kind=payment.kind, amount_micro=payment.amount,
            status=payment.status, method_id=payment.method_id, brand=payment.brand,
            last4=payment.last4, failure=payment.failure, lot_id=payment.lot_id,
            created_at=payment.created_at, provider_ref=payment.provider_ref,
            billed_to=address_json(payment.billed_to),
        )
    )  # fmt: skip
    if audit is not None:
        insert_event(conn, audit)


def _line_of_lot(conn: Connection, payment: Payment) -> Payment | None:
    """The line stored for ``payment``'s lot, if it has one and one is."""
    if payment.lot_id is None:
        return None
    row = conn.execute(select(payments).where(payments.c.lot_id == payment.lot_id)).first()
    return None if row is None else _payment(row)


class SqlPaymentStore(SqlStore):
    def add_method(self, method: PaymentMethod) -> None:
        with self._write() as conn:
            if method.is_default:
                conn.execute(
                    update(payment_methods)
                    .where(payment_methods.c.org_id == method.org_id)
                    .values(is_default=False)
                )
            conn.execute(
                insert(payment_methods).values(
                    **{f: getattr(method, f) for f in _METHOD_FIELDS}, removed_at=None
                )
            )

    def method_by_ref(self, org_id: str, provider_ref: str) -> PaymentMethod | None:
        row = self._read(
            lambda c: c.execute(
                select(payment_methods)
                .where(
                    payment_methods.c.org_id == org_id,
                    payment_methods.c.provider_ref == provider_ref,
                )
                # (a card saved, removed and saved again: its row in use, else the latest)
                .order_by(payment_methods.c.removed_at.is_not(None), payment_methods.c.id.desc())
                .limit(1)
            ).first()
        )
        return None if row is None else _method(row)

    def methods(self, org_id: str) -> Sequence[PaymentMethod]:
        rows = self._read(
            lambda c: c.execute(
                select(payment_methods)
                .where(payment_methods.c.org_id == org_id, payment_methods.c.removed_at.is_(None))
                # (ids are time-ordered: the newest first, also within one second)
                .order_by(payment_methods.c.is_default.desc(), payment_methods.c.id.desc())
            ).all()
        )
        return [_method(r) for r in rows]

    def remove_method(self, org_id: str, method_id: str, at: int) -> bool:
        with self._write() as conn:
            done = conn.execute(
                update(payment_methods)
                .where(
                    payment_methods.c.org_id == org_id,
                    payment_methods.c.id == method_id,
                    payment_methods.c.removed_at.is_(None),
                )
                .values(removed_at=at, is_default=False)
            )
        return done.rowcount == 1

    def set_default(self, org_id: str, method_id: str) -> bool:
        mine = and_(payment_methods.c.org_id == org_id, payment_methods.c.removed_at.is_(None))
        with self._write() as conn:
            conn.execute(update(payment_methods).where(mine).values(is_default=False))
            done = conn.execute(
                update(payment_methods)
                .where(mine, payment_methods.c.id == method_id)
                .values(is_default=True)
            )
        return done.rowcount == 1

    def add_payment(
        self, payment: Payment, done: Done | None = None, audit: AuditEvent | None = None
    ) -> Payment | None:
        try:
            with self._write() as conn:
                stored = conn.execute(select(payments.c.id).where(payments.c.id == payment.id))
                known = stored.first() is not None
                if not known and (other := _line_of_lot(conn, payment)) is not None:
                    return other  # (nothing written: the transaction commits nothing)
                complete_claim(conn, done)
                if not known:
                    _insert_payment(conn, payment, audit)
        except IntegrityError:
            # Another run's line for the lot committed between the read and the insert
            # (PostgreSQL's READ COMMITTED; SQLite's writers take turns): all was rolled back.
            other = self._read(lambda c: _line_of_lot(c, payment))
            if other is None:
                raise
            return other
        return None

    def add_purchase(
        self, payment: Payment, lot: Lot, note: str, source: str, done: Done | None = None,
        audit: AuditEvent | None = None,
    ) -> None:  # fmt: skip
        # (The lot is new, so no line has it: the lot's unique index never refuses this one.)
        with self._write() as conn:
            complete_claim(conn, done)
            insert_lot(conn, payment.org_id, lot, note, source)
            _insert_payment(conn, payment, audit)

    def payment_for_lot(self, org_id: str, lot_id: str) -> Payment | None:
        row = self._read(
            lambda c: c.execute(
                select(payments).where(payments.c.org_id == org_id, payments.c.lot_id == lot_id)
            ).first()
        )
        return None if row is None else _payment(row)

    def payments(self, org_id: str, limit: int) -> Sequence[Payment]:
        rows = self._read(
            lambda c: c.execute(
                select(payments)
                .where(payments.c.org_id == org_id)
                .order_by(payments.c.created_at.desc(), payments.c.id.desc())
                .limit(limit)
            ).all()
        )
        return [_payment(r) for r in rows]

    def payment(self, org_id: str, payment_id: str) -> Payment | None:
        row = self._read(
            lambda c: c.execute(
                select(payments).where(payments.c.org_id == org_id, payments.c.id == payment_id)
            ).first()
        )
        return None if row is None else _payment(row)

    def payment_by_ref(self, payment_ref: str) -> Payment | None:
        row = self._read(
            lambda c: c.execute(
                select(payments)
                .where(payments.c.provider_ref == payment_ref, payments.c.status == "succeeded")
                .limit(1)
            ).first()
        )
        return None if row is None else _payment(row)

    def adjust(
        self, payment: Payment, report: ProviderReport, at: int,
        audit: Callable[[Adjustment], AuditEvent | None],
    ) -> Adjustment | None:  # fmt: skip
        assert payment.lot_id is not None
        table = payment_adjustments.c
        with self._write() as conn:
            # One adjustment of a payment at a time (PostgreSQL: the row's lock; SQLite's
            # writers take turns anyway): each reads what the ones before it took.
            conn.execute(select(payments.c.id).where(payments.c.id == payment.id).with_for_update())
            done = conn.execute(
                select(payment_adjustments).where(table.event_id == report.event_id)
            ).first()
            if done is not None:
                return _adjustment(done)
            previous = [
                _adjustment(r)
                for r in conn.execute(
                    select(payment_adjustments)
                    .where(table.payment_id == payment.id)
                    .order_by(table.created_at, table.id)
                )
            ]
            decided = decide(report, previous, payment.amount)
            if decided is None:
                return None
            taking, status, total = decided
            adjustment = Adjustment(
                id=ordered_id("adj_"), org_id=payment.org_id, payment_id=payment.id,
                kind=report.kind, ref=report.ref, event_id=report.event_id, status=status,
                total=total, amount=-taking, created_at=report.at or at,
            )  # fmt: skip
            conn.execute(
                insert(payment_adjustments).values(
                    id=adjustment.id, org_id=adjustment.org_id, payment_id=payment.id,
                    kind=adjustment.kind, ref=adjustment.ref, event_id=adjustment.event_id,
                    status=status, total_micro=total, amount_micro=adjustment.amount,
                    created_at=adjustment.created_at,
                )
            )  # fmt: skip
            if taking:
                if taking > 0:
                    lots = [lot for lot, _ in lots_of(conn, payment.org_id)]
                    moves = take(lots, payment.lot_id, taking, at)
                else:
                    mine = [a.id for a in previous if (a.kind, a.ref) == (report.kind, report.ref)]
                    moves = give_back(_history(conn, mine), -taking, payment.lot_id)
                account = "refunds" if report.kind == "refund" else "disputes"
                move_credit(conn, payment.org_id, adjustment.id, moves, account, at)
                record_event(conn, payment.org_id, "lots_adjusted", adjustment.id, at)
            entry = audit(adjustment)
            if entry is not None:
                insert_event(conn, entry)
            return adjustment

    def adjustments(self, org_id: str, payment_id: str | None = None) -> Sequence[Adjustment]:
        table = payment_adjustments.c
        query = select(payment_adjustments).where(table.org_id == org_id)
        if payment_id is not None:
            query = query.where(table.payment_id == payment_id)
        rows = self._read(lambda c: c.execute(query.order_by(table.created_at, table.id)).all())
        return [_adjustment(r) for r in rows]

    def claim_recharges(self, now: int, lease_s: int) -> Sequence[RechargeJob]:
        jobs = recharge_jobs.c
        due = and_(
            jobs.status == "pending",
            or_(jobs.due_at.is_(None), jobs.due_at <= now),
            or_(jobs.claimed_until.is_(None), jobs.claimed_until <= now),
        )
        rows = self._claim(
            select(recharge_jobs).where(due).limit(50), recharge_jobs, due,
            claimed_until=now + lease_s,
        )  # fmt: skip
        return [RechargeJob(r.id, r.org_id, r.target_micro, r.attempts) for r in rows]

    def finish_recharge(self, job_id: str, status: str, at: int) -> None:
        with self._write() as conn:
            conn.execute(
                update(recharge_jobs)
                .where(recharge_jobs.c.id == job_id)
                .values(status=status, finished_at=at, pending_org_id=None, claimed_until=None)
            )

    def retry_recharge(self, job_id: str, not_before: int) -> None:
        with self._write() as conn:
            conn.execute(
                update(recharge_jobs)
                .where(recharge_jobs.c.id == job_id)
                .values(
                    attempts=recharge_jobs.c.attempts + 1, due_at=not_before, claimed_until=None
                )
            )
