"""running totals: settled spend per organization, month and project; ledger balances; the
usage records' month index dropped (only the sum it served read it)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 12:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "spend_totals",
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("charged_micro", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "period", "project_id", name=op.f("pk_spend_totals")),
    )
    # What the usage records written so far add up to.
    op.execute(
        "INSERT INTO spend_totals (org_id, period, project_id, charged_micro) "
        "SELECT org_id, period, COALESCE(project_id, ''), SUM(cost_micro_usd) FROM usage_records "
        "GROUP BY org_id, period, COALESCE(project_id, '')"
    )
    # Only that sum read usage records by month: one index less to write per record.
    op.drop_index("ix_usage_records_org_period", table_name="usage_records")
    op.create_table(
        "ledger_balances",
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("account", sa.String(length=20), nullable=False),
        sa.Column("lot_id", sa.String(length=40), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "account", "lot_id", name=op.f("pk_ledger_balances")),
    )
    # What the ledger says so far.
    op.execute(
        "INSERT INTO ledger_balances (org_id, account, lot_id, amount_micro) "
        "SELECT org_id, account, COALESCE(lot_id, ''), SUM(amount_micro) FROM ledger_entries "
        "GROUP BY org_id, account, COALESCE(lot_id, '')"
    )


def downgrade() -> None:
    op.drop_table("ledger_balances")
    op.create_index(
        "ix_usage_records_org_period", "usage_records", ["org_id", "period", "project_id"]
    )
    op.drop_table("spend_totals")
