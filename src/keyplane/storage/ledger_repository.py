"""Credit lots and the ledger (part of SqlMoneyStore): lots granted, bought and revoked, the
double-entry ledger with its running balances, settled spend per month, and the change feed of
money events the gateways follow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Select, and_, func, insert, select, update

from keyplane.billing.ports import Done, MoneyEvent, PaidSoFar
from keyplane.billing.reversals import repay
from keyplane.billing.wallet import Lot
from keyplane.storage.billing_tables import (
    credit_lots,
    holds,
    ledger_balances,
    ledger_entries,
    money_events,
    spend_totals,
)
from keyplane.storage.idempotency_repository import complete_claim
from keyplane.storage.payment_tables import payment_adjustments
from keyplane.storage.settlement_writer import add_sql, balances, items
from keyplane.storage.store import SqlStore, append_to_feed


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
    post_entries(
        conn,
        [
            {"txn_id": lot.id, "org_id": org_id, "account": "lot", "lot_id": lot.id,
             "amount_micro": lot.amount, "created_at": lot.created_at},
            {"txn_id": lot.id, "org_id": org_id, "account": source, "lot_id": None,
             "amount_micro": -lot.amount, "created_at": lot.created_at},
        ],
    )  # fmt: skip
    repaid = repay([known for known, _ in lots_of(conn, org_id)], lot)
    if repaid:  # (the gateway's feed reads the lot with the rest: "lot_added" brings both)
        move_credit(conn, org_id, f"repay:{lot.id}", repaid, None, lot.created_at)
    record_event(conn, org_id, "lot_added", lot.id, lot.created_at)


def move_credit(
    conn: Connection, org_id: str, txn: str, moves: Sequence[tuple[str, int]], account: str | None,
    at: int,
) -> None:  # fmt: skip
    """Moves credit off lots (each ``(lot id, amount taken)``, < 0 given), as one ledger
    transaction balanced by ``account`` (None: the moves balance each other), and keeps each lot's
    ``adjusted`` (the gateway's feed applies its change) in step."""
    rows = [
        {"txn_id": txn, "org_id": org_id, "account": "lot", "lot_id": lot_id,
         "amount_micro": -moved, "created_at": at}
        for lot_id, moved in moves
    ]  # fmt: skip
    net = sum(moved for _, moved in moves)
    if account is not None and net:
        rows.append(
            {"txn_id": txn, "org_id": org_id, "account": account, "lot_id": None,
             "amount_micro": net, "created_at": at}
        )  # fmt: skip
    post_entries(conn, rows)
    for lot_id, moved in moves:
        conn.execute(
            update(credit_lots)
            .where(credit_lots.c.id == lot_id)
            .values(adjusted_micro=credit_lots.c.adjusted_micro + moved)
        )


def lot_rows(org_id: str) -> Select[Any]:
    """The organization's lots with their remaining credit (``remaining_micro``) in one statement:
    read apart, a refund committing in between (PostgreSQL's READ COMMITTED) would give a lot its
    new ``adjusted_micro`` with its old remaining credit, and a gateway never the difference."""
    balance = ledger_balances.c
    joined = and_(
        balance.org_id == credit_lots.c.org_id,
        balance.account == "lot",
        balance.lot_id == credit_lots.c.id,
    )
    return (
        select(credit_lots, balance.amount_micro.label("remaining_micro"))
        .outerjoin(ledger_balances, joined)
        .where(credit_lots.c.org_id == org_id)
    )


def lot_of(r: Any) -> Lot:
    return Lot(
        r.id, r.kind, r.amount_micro, int(r.remaining_micro or 0), r.created_at, r.expires_at,
        r.revoked_at is not None, r.adjusted_micro,
    )  # fmt: skip


def lots_of(conn: Connection, org_id: str) -> list[tuple[Lot, str]]:
    """Every lot of the organization with its note, remaining computed from entries."""
    rows = conn.execute(lot_rows(org_id).order_by(credit_lots.c.created_at))
    return [(lot_of(r), r.note) for r in rows]


def record_event(conn: Connection, org_id: str, kind: str, ref: str | None, at: int) -> None:
    append_to_feed(conn, money_events, org_id=org_id, kind=kind, ref=ref, at=at)


def remaining_credit(conn: Connection, org_id: str) -> dict[str, int]:
    """Each lot's remaining credit (its ledger balance)."""
    rows = conn.execute(
        select(ledger_balances.c.lot_id, ledger_balances.c.amount_micro).where(
            ledger_balances.c.org_id == org_id, ledger_balances.c.account == "lot"
        )
    )
    return {lot_id: int(amount) for lot_id, amount in rows}


def post_entries(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Writes ledger entries and adds them to the accounts' balances (SQLAlchemy callers; the
    settlement writer does the same through ``Writer``)."""
    conn.execute(insert(ledger_entries), rows)
    totals = balances((r["org_id"], r["account"], r["lot_id"], r["amount_micro"]) for r in rows)
    conn.exec_driver_sql(add_sql("ledger_balances", _marker(conn)), list(items(totals)))


def _marker(conn: Connection) -> str:
    """The driver's parameter placeholder (``?`` for sqlite3, ``%s`` for psycopg)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def month_spend_rows(conn: Connection, org_id: str, period: str) -> list[tuple[str, int]]:
    """(project id or "", settled spend) of the organization's month, from ``spend_totals``."""
    rows = conn.execute(
        select(spend_totals.c.project_id, spend_totals.c.charged_micro).where(
            spend_totals.c.org_id == org_id, spend_totals.c.period == period
        )
    )
    return [(pid, int(amount)) for pid, amount in rows]


class SqlLedger(SqlStore):
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
            remaining = remaining_credit(conn, org_id).get(lot_id, 0)
            if remaining:
                txn = f"revoke:{lot_id}"
                post_entries(
                    conn,
                    [
                        {"txn_id": txn, "org_id": org_id, "account": "lot", "lot_id": lot_id,
                         "amount_micro": -remaining, "created_at": at},
                        {"txn_id": txn, "org_id": org_id, "account": "grants", "lot_id": None,
                         "amount_micro": remaining, "created_at": at},
                    ],
                )  # fmt: skip
            record_event(conn, org_id, "lot_revoked", lot_id, at)
            return remaining

    def lots(self, org_id: str) -> Sequence[tuple[Lot, str]]:
        return self._read(lambda c: lots_of(c, org_id))

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

    def payments(self, org_id: str) -> PaidSoFar:
        def read(c: Connection) -> PaidSoFar:
            bought, first = c.execute(
                select(
                    func.sum(credit_lots.c.amount_micro), func.min(credit_lots.c.created_at)
                ).where(credit_lots.c.org_id == org_id, credit_lots.c.kind == "purchase")
            ).one()
            # (Each adjustment's credit moved: < 0 taken back, > 0 given back.)
            moved = c.execute(
                select(func.sum(payment_adjustments.c.amount_micro)).where(
                    payment_adjustments.c.org_id == org_id
                )
            ).scalar()
            return PaidSoFar(int(bought or 0), -int(moved or 0), first)

        return self._read(read)

    def organizations_with_payments(self) -> Sequence[str]:
        return self._read(
            lambda c: list(
                c.execute(
                    select(credit_lots.c.org_id).where(credit_lots.c.kind == "purchase").distinct()
                ).scalars()
            )
        )

    def month_spend(self, org_id: str, period: str) -> tuple[int, dict[str, int]]:
        per_project = dict(self._read(lambda c: month_spend_rows(c, org_id, period)))
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
