"""stored responses are forgotten after their retention: an index to find the oldest

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 00:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_stored_responses_created_at", "stored_responses", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_stored_responses_created_at", table_name="stored_responses")
