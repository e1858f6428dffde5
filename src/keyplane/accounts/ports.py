"""What the accounts slice needs from storage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from keyplane.accounts.models import Organization, OrgRole, Project, User


class AccountStore(Protocol):
    def add_owner_setup(self, user: User, org: Organization, project: Project) -> None:
        """Stores a first user, their organization (with them as Owner) and its first project in
        one transaction. Raises Conflict if the email is taken."""
        ...

    def count_users(self) -> int: ...

    def organizations(self) -> Sequence[Organization]:
        """Returns every organization, oldest first."""
        ...

    def owners(self, org_id: str) -> Sequence[User]:
        """Returns the organization's members with the Owner role."""
        ...

    def member_role(self, org_id: str, user_id: str) -> OrgRole | None: ...

    def projects(self, org_id: str) -> Sequence[Project]:
        """Returns the organization's projects, oldest first."""
        ...

    def add_project(self, project: Project) -> None:
        """Raises Conflict if the organization already has a project with that name."""
        ...
