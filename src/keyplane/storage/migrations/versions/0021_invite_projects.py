"""invite_projects: the projects an invitation makes its invitee a member of, with a role each

OpenAI's ``projects`` of an invitation. Invitations sent before this revision name none, as they
did not (their invitees join no project on accepting).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-09 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "invite_projects",
        sa.Column("invite_id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["invite_id"], ["invites.id"], name=op.f("fk_invite_projects_invite_id_invites")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_invite_projects_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("invite_id", "project_id", name=op.f("pk_invite_projects")),
    )


def downgrade() -> None:
    op.drop_table("invite_projects")
