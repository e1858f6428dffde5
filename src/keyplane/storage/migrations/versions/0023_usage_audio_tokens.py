"""usage records count the audio tokens among a request's input and output tokens

A chat model that hears or speaks audio reports them (``prompt_tokens_details.audio_tokens``,
``completion_tokens_details.audio_tokens``); the Admin API's completions usage shows them as
``input_audio_tokens`` and ``output_audio_tokens``. Records written before this revision have 0.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        for name in ("input_audio_tokens", "output_audio_tokens"):
            batch_op.add_column(
                sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)
            )


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_column("output_audio_tokens")
        batch_op.drop_column("input_audio_tokens")
