"""key activity: the networks each key was used from and its spend per hour (anomaly alerts)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "key_networks",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("first_seen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "network", name=op.f("pk_key_networks")),
    )
    op.create_table(
        "key_spend_hours",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("spend_micro", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "hour", name=op.f("pk_key_spend_hours")),
    )


def downgrade() -> None:
    op.drop_table("key_spend_hours")
    op.drop_table("key_networks")
