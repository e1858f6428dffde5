"""refunds and disputes of credit purchases: payment_adjustments, credit_lots.adjusted_micro, and
an index on payments.provider_ref

Each of the payment provider's events that refunds or disputes a paid charge (or gives its credit
back) is a row of ``payment_adjustments``, its event's id unique, with the credit it moved as
ledger entries (the row's id their transaction). ``credit_lots.adjusted_micro`` is each lot's net
credit so moved (0 for every lot until now), which the gateways' change feed applies. The provider
names the payment by its id (``payments.provider_ref``), now indexed.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("credit_lots", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("adjusted_micro", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.create_index("ix_payments_provider_ref", "payments", ["provider_ref"])
    op.create_table(
        "payment_adjustments",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("payment_id", sa.String(40), sa.ForeignKey("payments.id"), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False, unique=True),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("total_micro", sa.BigInteger(), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_payment_adjustments_payment", "payment_adjustments", ["payment_id"])
    op.create_index(
        "ix_payment_adjustments_org_created", "payment_adjustments", ["org_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("payment_adjustments")
    op.drop_index("ix_payments_provider_ref", table_name="payments")
    with op.batch_alter_table("credit_lots", schema=None) as batch_op:
        batch_op.drop_column("adjusted_micro")
