"""spend totals: settled spend per organization, month and project

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


def downgrade() -> None:
    op.drop_table("spend_totals")
