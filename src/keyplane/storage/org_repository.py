"""SqlOrgStore: members, invitations, projects, project members and service accounts in SQL."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, RowMapping, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from keyplane.accounts.models import Organization, OrgRole, Project, ServiceAccount, User
from keyplane.accounts.org_ports import Invite, InviteProject, Member, ProjectMember, ProjectRole
from keyplane.accounts.verification import OrgVerification, VerificationStatus
from keyplane.errors import Conflict
from keyplane.storage import tables as t
from keyplane.storage.org_tables import (
    invite_projects,
    invites,
    org_verifications,
    project_members,
)
from keyplane.storage.store import SqlStore

LAST_OWNER = "An organization needs at least one Owner: make someone else an Owner first."


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__slots__}


def _user(row: RowMapping) -> User:
    return User(**{f: row[f] for f in User.__slots__})


def _invites(conn: Connection, rows: Sequence[RowMapping]) -> list[Invite]:
    """The invitations of ``rows`` (of ``invites``) with their projects, read in one query."""
    ip = invite_projects
    named: defaultdict[str, list[InviteProject]] = defaultdict(list)
    if rows:
        query = (
            select(ip.c.invite_id, ip.c.project_id, ip.c.role)
            .where(ip.c.invite_id.in_([r["id"] for r in rows]))
            .order_by(ip.c.invite_id, ip.c.position)
        )
        for found in conn.execute(query):
            named[found.invite_id].append(InviteProject(found.project_id, ProjectRole(found.role)))
    return [
        Invite(**{**r, "role": OrgRole(r["role"]), "projects": tuple(named[r["id"]])}) for r in rows
    ]


def _owners_left(conn: Connection, org_id: str, without: str) -> int:
    """Owners other than ``without``, read with their rows locked (PostgreSQL) so that two
    concurrent demotions cannot each see the other as the remaining Owner."""
    m = t.org_members
    rows = conn.execute(
        select(m.c.user_id)
        .where(m.c.org_id == org_id, m.c.role == OrgRole.OWNER.value)
        .with_for_update()
    ).scalars()
    return sum(1 for user_id in rows if user_id != without)


def _join_invited_projects(
    conn: Connection, invite_id: str, user_id: str, at: int
) -> list[InviteProject]:
    """Makes the user a member of the invitation's projects that are not archived, with their
    roles; returns those. Their rows stay locked until the acceptance commits (PostgreSQL), so a
    project archived meanwhile is either skipped here or archived with the newcomer in it, as
    with any member."""
    ip, p = invite_projects, t.projects
    rows = conn.execute(
        select(ip.c.project_id, ip.c.role)
        .join(p, p.c.id == ip.c.project_id)
        .where(ip.c.invite_id == invite_id, p.c.archived_at.is_(None))
        .order_by(ip.c.position)
        .with_for_update(of=p)
    ).all()
    joined = [InviteProject(r.project_id, ProjectRole(r.role)) for r in rows]
    if joined:
        conn.execute(
            insert(project_members),
            [
                {"project_id": j.project_id, "user_id": user_id, "role": j.role.value,
                 "created_at": at}
                for j in joined
            ],
        )  # fmt: skip
    return joined


class SqlOrgStore(SqlStore):
    # -- users and organizations ------------------------------------------------------------------
    def user(self, user_id: str) -> User | None:
        row = self._read(
            lambda c: c.execute(select(t.users).where(t.users.c.id == user_id)).mappings().first()
        )
        return None if row is None else _user(row)

    # Not part of the OrgStore port: sign-up owns creating users and organizations; these two
    # let tests and scripts set up members and a second organization without raw SQL.
    def add_user(self, user: User) -> None:
        try:
            with self._write() as conn:
                conn.execute(insert(t.users).values(**_fields(user)))
        except IntegrityError:
            raise Conflict(f"A user with email '{user.email}' already exists.") from None

    def add_organization(self, org: Organization, owner_id: str, project: Project) -> None:
        with self._write() as conn:
            conn.execute(insert(t.organizations).values(**_fields(org)))
            conn.execute(
                insert(t.org_members).values(
                    org_id=org.id,
                    user_id=owner_id,
                    role=OrgRole.OWNER.value,
                    created_at=org.created_at,
                )
            )
            conn.execute(insert(t.projects).values(**_fields(project)))

    # -- members ----------------------------------------------------------------------------------
    def _members(self, org_id: str, user_id: str | None = None) -> list[Member]:
        m = t.org_members
        query = (
            select(t.users, m.c.role, m.c.created_at.label("added_at"))
            .join(m, m.c.user_id == t.users.c.id)
            .where(m.c.org_id == org_id)
            .order_by(m.c.created_at, t.users.c.id)
        )
        if user_id is not None:
            query = query.where(m.c.user_id == user_id)
        rows = self._read(lambda c: c.execute(query).mappings().all())
        return [Member(_user(r), OrgRole(r["role"]), r["added_at"]) for r in rows]

    def member(self, org_id: str, user_id: str) -> Member | None:
        found = self._members(org_id, user_id)
        return found[0] if found else None

    def members(self, org_id: str) -> Sequence[Member]:
        return self._members(org_id)

    def set_member_role(self, org_id: str, user_id: str, role: OrgRole) -> bool:
        m = t.org_members
        with self._write() as conn:
            if role is not OrgRole.OWNER and _owners_left(conn, org_id, user_id) == 0:
                # Demoting the last Owner; also refused when the user is no Owner at all but
                # the organization has none, which cannot happen through this store.
                raise Conflict(LAST_OWNER, param="role")
            done = conn.execute(
                update(m)
                .where(m.c.org_id == org_id, m.c.user_id == user_id)
                .values(role=role.value)
            ).rowcount
        return bool(done)

    def remove_member(self, org_id: str, user_id: str) -> bool:
        m = t.org_members
        with self._write() as conn:
            if _owners_left(conn, org_id, user_id) == 0:
                raise Conflict(LAST_OWNER, param="user_id")
            done = conn.execute(
                delete(m).where(m.c.org_id == org_id, m.c.user_id == user_id)
            ).rowcount
            if done:
                in_org = select(t.projects.c.id).where(t.projects.c.org_id == org_id)
                conn.execute(
                    delete(project_members).where(
                        project_members.c.user_id == user_id,
                        project_members.c.project_id.in_(in_org),
                    )
                )
        return bool(done)

    # -- invitations ------------------------------------------------------------------------------
    def invites(self, org_id: str) -> Sequence[Invite]:
        query = (
            select(invites)
            .where(invites.c.org_id == org_id)
            .order_by(invites.c.created_at, invites.c.id)
        )
        return self._read(lambda c: _invites(c, c.execute(query).mappings().all()))

    def add_invite(self, invite: Invite) -> None:
        fields = {f: v for f, v in _fields(invite).items() if f != "projects"}
        with self._write() as conn:
            conn.execute(insert(invites).values(**fields))
            if invite.projects:
                conn.execute(
                    insert(invite_projects),
                    [
                        {"invite_id": invite.id, "project_id": p.project_id,
                         "role": p.role.value, "position": n}
                        for n, p in enumerate(invite.projects)
                    ],
                )  # fmt: skip

    def invite_by_token_hash(self, token_hash: str) -> Invite | None:
        query = select(invites).where(invites.c.token_hash == token_hash)
        found = self._read(lambda c: _invites(c, c.execute(query).mappings().all()))
        return found[0] if found else None

    def accept_invite(
        self, invite_id: str, user_id: str, at: int
    ) -> Sequence[InviteProject] | None:
        try:
            with self._write() as conn:
                # The conditional UPDATE is the single-use guard: of two racing accepts, one
                # matches the row and the other (blocked on its lock, then re-checking) does not.
                done = conn.execute(
                    update(invites)
                    .where(
                        invites.c.id == invite_id,
                        invites.c.accepted_at.is_(None),
                        invites.c.expires_at > at,
                    )
                    .values(accepted_at=at)
                ).rowcount
                if not done:
                    return None
                row = conn.execute(
                    select(invites.c.org_id, invites.c.role).where(invites.c.id == invite_id)
                ).one()
                conn.execute(
                    insert(t.org_members).values(
                        org_id=row.org_id, user_id=user_id, role=row.role, created_at=at
                    )
                )
                joined = _join_invited_projects(conn, invite_id, user_id, at)
        except IntegrityError:
            raise Conflict("You are already a member of this organization.") from None
        return joined

    def delete_invite(self, org_id: str, invite_id: str) -> bool:
        pending = select(invites.c.id).where(
            invites.c.org_id == org_id, invites.c.id == invite_id, invites.c.accepted_at.is_(None)
        )
        with self._write() as conn:
            # Locked first (PostgreSQL): an acceptance racing this waits, then finds no invitation,
            # rather than keeping an invitation whose projects were deleted from under it.
            if conn.execute(pending.with_for_update()).first() is None:
                return False
            conn.execute(delete(invite_projects).where(invite_projects.c.invite_id == invite_id))
            conn.execute(delete(invites).where(invites.c.id == invite_id))
        return True

    # -- projects ---------------------------------------------------------------------------------
    def project(self, project_id: str) -> Project | None:
        query = select(t.projects).where(t.projects.c.id == project_id)
        row = self._read(lambda c: c.execute(query).mappings().first())
        return None if row is None else Project(**row)

    def rename_project(self, project_id: str, name: str) -> None:
        try:
            with self._write() as conn:
                conn.execute(
                    update(t.projects).where(t.projects.c.id == project_id).values(name=name)
                )
        except IntegrityError:
            raise Conflict(f"A project named '{name}' already exists.", param="name") from None

    def archive_project(self, project_id: str, at: int) -> bool:
        p = t.projects
        with self._write() as conn:
            done = conn.execute(
                update(p)
                .where(p.c.id == project_id, p.c.archived_at.is_(None))
                .values(archived_at=at)
            ).rowcount
        return bool(done)

    def _project_members(self, project_id: str, user_id: str | None = None) -> list[ProjectMember]:
        pm = project_members
        query = (
            select(t.users, pm.c.role, pm.c.created_at.label("added_at"))
            .join(pm, pm.c.user_id == t.users.c.id)
            .where(pm.c.project_id == project_id)
            .order_by(pm.c.created_at, t.users.c.id)
        )
        if user_id is not None:
            query = query.where(pm.c.user_id == user_id)
        rows = self._read(lambda c: c.execute(query).mappings().all())
        return [
            ProjectMember(project_id, _user(r), ProjectRole(r["role"]), r["added_at"]) for r in rows
        ]

    def project_members(self, project_id: str) -> Sequence[ProjectMember]:
        return self._project_members(project_id)

    def project_member(self, project_id: str, user_id: str) -> ProjectMember | None:
        found = self._project_members(project_id, user_id)
        return found[0] if found else None

    def add_project_member(self, project_id: str, user_id: str, role: ProjectRole, at: int) -> None:
        try:
            with self._write() as conn:
                conn.execute(
                    insert(project_members).values(
                        project_id=project_id, user_id=user_id, role=role.value, created_at=at
                    )
                )
        except IntegrityError:
            raise Conflict(
                f"The user '{user_id}' is already a member of this project.", param="user_id"
            ) from None

    def set_project_role(self, project_id: str, user_id: str, role: ProjectRole) -> bool:
        pm = project_members
        with self._write() as conn:
            done = conn.execute(
                update(pm)
                .where(pm.c.project_id == project_id, pm.c.user_id == user_id)
                .values(role=role.value)
            ).rowcount
        return bool(done)

    def remove_project_member(self, project_id: str, user_id: str) -> bool:
        pm = project_members
        with self._write() as conn:
            done = conn.execute(
                delete(pm).where(pm.c.project_id == project_id, pm.c.user_id == user_id)
            ).rowcount
        return bool(done)

    # -- service accounts -------------------------------------------------------------------------
    def service_accounts(self, project_id: str) -> Sequence[ServiceAccount]:
        sa = t.service_accounts
        query = select(sa).where(sa.c.project_id == project_id).order_by(sa.c.created_at, sa.c.id)
        return [
            ServiceAccount(**r) for r in self._read(lambda c: c.execute(query).mappings().all())
        ]

    def service_account(self, service_account_id: str) -> ServiceAccount | None:
        sa = t.service_accounts
        query = select(sa).where(sa.c.id == service_account_id)
        row = self._read(lambda c: c.execute(query).mappings().first())
        return None if row is None else ServiceAccount(**row)

    def add_service_account(self, account: ServiceAccount) -> None:
        with self._write() as conn:
            conn.execute(insert(t.service_accounts).values(**_fields(account)))

    def delete_service_account(self, service_account_id: str) -> bool:
        sa = t.service_accounts
        with self._write() as conn:
            done = conn.execute(delete(sa).where(sa.c.id == service_account_id)).rowcount
        return bool(done)


class SqlVerificationStore(SqlStore):
    def get(self, org_id: str) -> OrgVerification | None:
        row = self._read(
            lambda c: c.execute(
                select(org_verifications).where(org_verifications.c.org_id == org_id)
            ).first()
        )
        if row is None:
            return None
        return OrgVerification(
            row.org_id, VerificationStatus(row.status), row.legal_name, row.website,
            row.requested_at, row.requested_by, row.decided_at, row.note,
        )  # fmt: skip

    def save(self, v: OrgVerification) -> None:
        values = {
            "status": v.status.value, "legal_name": v.legal_name, "website": v.website,
            "requested_at": v.requested_at, "requested_by": v.requested_by,
            "decided_at": v.decided_at, "note": v.note,
        }  # fmt: skip
        with self._write() as conn:
            conn.execute(delete(org_verifications).where(org_verifications.c.org_id == v.org_id))
            conn.execute(insert(org_verifications).values(org_id=v.org_id, **values))
