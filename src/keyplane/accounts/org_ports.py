"""What organization administration needs from storage and from the email outbox, and the records
it exchanges with them (members, invitations, project members)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from keyplane.accounts.models import OrgRole, Project, ServiceAccount, User
from keyplane.limits.ratelimit import ModelLimits


class ProjectRole(enum.StrEnum):
    OWNER = "owner"  # manages the project's keys, service accounts and members
    MEMBER = "member"  # reads the project and manages the keys it owns


@dataclass(frozen=True, slots=True)
class Member:
    """A user's membership of an organization."""

    user: User
    role: OrgRole
    added_at: int


@dataclass(frozen=True, slots=True)
class ProjectMember:
    project_id: str
    user: User
    role: ProjectRole
    added_at: int


@dataclass(frozen=True, slots=True)
class InviteProject:
    """A project an invitation makes its invitee a member of, with that role, on acceptance."""

    project_id: str
    role: ProjectRole


class InviteStatus(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Invite:
    id: str
    org_id: str
    email: str
    role: OrgRole
    token_hash: str  # SHA-256 of the emailed token, hex; the token itself is never stored
    created_at: int
    expires_at: int
    accepted_at: int | None = None
    created_by: str | None = None
    projects: tuple[InviteProject, ...] = ()  # in the order the inviter listed them

    def status(self, now: float) -> InviteStatus:
        if self.accepted_at is not None:
            return InviteStatus.ACCEPTED
        return InviteStatus.PENDING if now < self.expires_at else InviteStatus.EXPIRED


class EmailQueue(Protocol):
    def enqueue(
        self,
        dedupe_key: str,
        to: Sequence[str],
        subject: str,
        body_text: str,
        body_html: str | None = None,
        *,
        now: float,
    ) -> bool:
        """Queues an email once per ``dedupe_key``; returns False if it was queued before.
        Raises StoreUnavailable."""
        ...


class OrgStore(Protocol):
    """Every method is one transaction. Raises StoreUnavailable when the database is down."""

    def user(self, user_id: str) -> User | None: ...

    def member(self, org_id: str, user_id: str) -> Member | None: ...

    def members(self, org_id: str) -> Sequence[Member]:
        """Returns the organization's members, longest-standing first."""
        ...

    def set_member_role(self, org_id: str, user_id: str, role: OrgRole) -> bool:
        """Returns False if the user is not a member. Raises Conflict when the change would
        leave the organization without an Owner (checked in the same transaction, so two Owners
        demoting each other at once cannot both succeed)."""
        ...

    def remove_member(self, org_id: str, user_id: str) -> bool:
        """Removes the membership and the user's memberships of the organization's projects.
        Returns False if the user is not a member. Raises Conflict when the user is the last
        Owner (checked in the same transaction)."""
        ...

    def invites(self, org_id: str) -> Sequence[Invite]:
        """Returns the organization's invitations, oldest first."""
        ...

    def add_invite(self, invite: Invite) -> None:
        """Stores the invitation with its projects, in one transaction."""
        ...

    def invite_by_token_hash(self, token_hash: str) -> Invite | None: ...

    def accept_invite(
        self, invite_id: str, user_id: str, at: int
    ) -> Sequence[InviteProject] | None:
        """Marks a pending, unexpired invitation accepted, makes the user a member with its role
        and a member of each of its projects not archived by then with the role it names, in one
        transaction. Returns the projects joined, or None if the invitation was used or expired
        meanwhile (so a token works once even when two requests race). Raises Conflict if the
        user is a member."""
        ...

    def delete_invite(self, org_id: str, invite_id: str) -> bool:
        """Deletes a pending invitation; returns False if there is none (accepted ones stay)."""
        ...

    def project(self, project_id: str) -> Project | None: ...

    def rename_project(self, project_id: str, name: str) -> None:
        """Raises Conflict if the organization has another project with that name."""
        ...

    def archive_project(self, project_id: str, at: int) -> bool:
        """Returns False if the project was already archived."""
        ...

    def project_members(self, project_id: str) -> Sequence[ProjectMember]:
        """Oldest first."""
        ...

    def project_member(self, project_id: str, user_id: str) -> ProjectMember | None: ...

    def add_project_member(self, project_id: str, user_id: str, role: ProjectRole, at: int) -> None:
        """Raises Conflict if the user is already a member of the project."""
        ...

    def set_project_role(self, project_id: str, user_id: str, role: ProjectRole) -> bool: ...

    def remove_project_member(self, project_id: str, user_id: str) -> bool: ...

    def service_accounts(self, project_id: str) -> Sequence[ServiceAccount]:
        """Oldest first."""
        ...

    def service_account(self, service_account_id: str) -> ServiceAccount | None: ...

    def add_service_account(self, account: ServiceAccount) -> None: ...

    def delete_service_account(self, service_account_id: str) -> bool: ...


class KeyLimits(Protocol):
    """A key's own rate limits (the rate-limit service)."""

    def key_limits(self, key_id: str) -> ModelLimits | None: ...

    def set_key_limits(self, org_id: str, key_id: str, limits: ModelLimits | None) -> None: ...
