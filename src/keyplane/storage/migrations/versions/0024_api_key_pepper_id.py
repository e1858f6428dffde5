"""api keys record the id of the pepper their hash was made with

Rotating the pepper (KEYPLANE_PEPPER_PREVIOUS): each key's ``pepper_id`` says which pepper checks
its hash, and ``keyplane secrets status`` counts the keys still on each. Keys stored before this
revision are marked with the pepper keyplane runs with when it upgrades (``keyplane.storage.
migrate`` passes its id), since none could have been hashed with another and still work; when it
upgrades with previous peppers configured too, it cannot tell which, and leaves them NULL (each
configured pepper is tried, and the key's id is recorded when it is next used).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pepper_id", sa.String(length=16), nullable=True))
    pepper_id = context.config.attributes.get("pepper_id")
    if pepper_id:
        op.execute(
            sa.text("UPDATE api_keys SET pepper_id = :id WHERE pepper_id IS NULL").bindparams(
                id=pepper_id
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("pepper_id")
