"""SQL implementation of the PaymentStore port."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from keyplane.audit.models import AuditEvent
from keyplane.billing.address import address_from_json, address_json
from keyplane.billing.payment_ports import Payment, PaymentMethod, RechargeJob
from keyplane.billing.ports import Done
from keyplane.billing.wallet import Lot
from keyplane.storage.audit_repository import insert_event
from keyplane.storage.billing_tables import recharge_jobs
from keyplane.storage.idempotency_repository import complete_claim
from keyplane.storage.ledger_repository import insert_lot
from keyplane.storage.payment_tables import payment_methods, payments
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
