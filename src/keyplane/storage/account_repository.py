"""SqlAccountStore: the first Owner's setup, organizations, their Owners and projects."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from keyplane.accounts.models import Organization, OrgRole, Project, User
from keyplane.errors import Conflict
from keyplane.storage import tables as t
from keyplane.storage.store import SqlStore, fields_of


class SqlAccountStore(SqlStore):
    def add_owner_setup(self, user: User, org: Organization, project: Project) -> None:
        try:
            with self._write() as conn:
                conn.execute(insert(t.users).values(**fields_of(user)))
                conn.execute(insert(t.organizations).values(**fields_of(org)))
                conn.execute(
                    insert(t.org_members).values(
                        org_id=org.id,
                        user_id=user.id,
                        role=OrgRole.OWNER.value,
                        created_at=org.created_at,
                    )
                )
                conn.execute(insert(t.projects).values(**fields_of(project)))
        except IntegrityError:
            raise Conflict(f"A user with email '{user.email}' already exists.") from None

    def count_users(self) -> int:
        return int(
            self._read(lambda c: c.execute(select(func.count()).select_from(t.users)).scalar() or 0)
        )

    def organizations(self) -> Sequence[Organization]:
        rows = self._read(
            lambda c: (
                c.execute(select(t.organizations).order_by(t.organizations.c.created_at))
                .mappings()
                .all()
            )
        )
        return [Organization(**r) for r in rows]

    def owners(self, org_id: str) -> Sequence[User]:
        query = (
            select(t.users)
            .join(t.org_members, t.org_members.c.user_id == t.users.c.id)
            .where(t.org_members.c.org_id == org_id, t.org_members.c.role == OrgRole.OWNER.value)
            .order_by(t.users.c.created_at)
        )
        return [User(**r) for r in self._read(lambda c: c.execute(query).mappings().all())]

    def member_role(self, org_id: str, user_id: str) -> OrgRole | None:
        role = self._read(
            lambda c: c.execute(
                select(t.org_members.c.role).where(
                    t.org_members.c.org_id == org_id, t.org_members.c.user_id == user_id
                )
            ).scalar()
        )
        return None if role is None else OrgRole(role)

    def projects(self, org_id: str) -> Sequence[Project]:
        query = (
            select(t.projects)
            .where(t.projects.c.org_id == org_id)
            .order_by(t.projects.c.created_at)
        )
        return [Project(**r) for r in self._read(lambda c: c.execute(query).mappings().all())]

    def add_project(self, project: Project) -> None:
        try:
            with self._write() as conn:
                conn.execute(insert(t.projects).values(**fields_of(project)))
        except IntegrityError:
            raise Conflict(
                f"A project named '{project.name}' already exists.", param="name"
            ) from None
