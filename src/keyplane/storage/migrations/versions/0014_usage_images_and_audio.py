"""usage records count the images a request generated and the seconds of audio it transcribed
(billed per image and per audio minute)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("images", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("audio_seconds", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("audio_seconds")
        batch_op.drop_column("images")
