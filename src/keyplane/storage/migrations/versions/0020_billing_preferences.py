"""org_billing: the billing email and the billing address; payments: the address each was billed to

The billing email (NULL: billing emails go to the Owners, as before) and the billing address (a JSON
object, NULL: none) are Billing → Preferences'. A payment keeps a copy of the address as it was when
it was made (``billed_to``), which its receipt shows; payments made before this revision have none
(their receipts name the organization only, as they did).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("org_billing", sa.Column("billing_email", sa.String(length=254), nullable=True))
    op.add_column("org_billing", sa.Column("billing_address", sa.Text(), nullable=True))
    op.add_column("payments", sa.Column("billed_to", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("billed_to")
    with op.batch_alter_table("org_billing", schema=None) as batch_op:
        batch_op.drop_column("billing_address")
        batch_op.drop_column("billing_email")
