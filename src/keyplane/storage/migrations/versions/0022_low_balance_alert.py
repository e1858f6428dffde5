"""org_billing: the low-balance alert ("Email me when my credit balance falls below $X")

``low_balance_alert_micro`` is its threshold (NULL: off, as every organization is after this
revision); ``low_balance_armed`` its arming (billing/low_balance.py): an id while the next fall of
the balance under the threshold is to be emailed (the email's dedupe key is built from it), NULL
once it was, until the balance is back at or above the threshold.

Revision ID: 0022
Revises: 0020
Create Date: 2026-12-10 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "org_billing", sa.Column("low_balance_alert_micro", sa.BigInteger(), nullable=True)
    )
    op.add_column(
        "org_billing", sa.Column("low_balance_armed", sa.String(length=40), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("org_billing", schema=None) as batch_op:
        batch_op.drop_column("low_balance_armed")
        batch_op.drop_column("low_balance_alert_micro")
