"""payments: one line of the billing history a credit lot (a unique index on lot_id), and the
provider's id of each payment (provider_ref: Stripe's pi_…)

Until now only the code kept a lot to one line: whoever records a paid charge (the charging run, its
retry, or Stripe's webhook) writes the lot and its line in one transaction. The database now refuses
a second line for a lot; failed charges have no lot (NULL), and a unique index lets NULL repeat on
SQLite and PostgreSQL alike.

Lines an older keyplane may have written twice for one lot are removed first, keeping the earliest
(by ``created_at``, then id): between revisions 0010 and this one a charge run again after a crash
could list a lot its first run had listed already (an auto-recharge job taken over after its lease
ran out, before the line was found by its lot; a purchase retried before its key's response was
stored with the line). Such lines tell of the same payment — the lot's key derives from the
charge's idempotency key, so the provider charged once — and listed twice it reads as two
payments. What is lost with a removed line: its receipt's address (and the id an audit entry or a
stored Idempotency-Key response names) now answers 404; the money is untouched (lots and the ledger
are not changed). Each removed line is logged (``keyplane.storage``, a warning). A database
without such lines, the expected case, loses nothing.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 07:00:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("keyplane.storage")


def upgrade() -> None:
    payments = sa.table(
        "payments",
        sa.column("id", sa.String()),
        sa.column("org_id", sa.String()),
        sa.column("lot_id", sa.String()),
        sa.column("created_at", sa.BigInteger()),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(payments.c.id, payments.c.org_id, payments.c.lot_id)
        .where(payments.c.lot_id.is_not(None))
        .order_by(payments.c.lot_id, payments.c.created_at, payments.c.id)
    ).all()
    seen: set[str] = set()
    for line_id, org_id, lot_id in rows:
        if lot_id not in seen:
            seen.add(lot_id)
            continue
        log.warning(
            "migration 0019: removed billing history line %s of %s, a second line for credit "
            "lot %s (the same payment; the lot and the ledger are unchanged)",
            line_id, org_id, lot_id,
        )  # fmt: skip
        conn.execute(sa.delete(payments).where(payments.c.id == line_id))
    op.add_column("payments", sa.Column("provider_ref", sa.String(length=255), nullable=True))
    op.create_index("ix_payments_lot_id", "payments", ["lot_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_payments_lot_id", table_name="payments")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("provider_ref")
