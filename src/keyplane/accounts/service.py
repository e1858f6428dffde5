"""Setting up the first Owner, and finding organizations and projects by name or id."""

from __future__ import annotations

from collections.abc import Sequence

from keyplane.accounts.models import Organization, Project, User
from keyplane.accounts.passwords import MIN_LENGTH, hash_password
from keyplane.accounts.ports import AccountStore
from keyplane.clock import Clock
from keyplane.emails import normalize_email
from keyplane.errors import Conflict, InvalidRequest, NotFound
from keyplane.ids import new_id
from keyplane.text import refuse_control_characters

DEFAULT_PROJECT = "Default project"


class AccountService:
    def __init__(self, store: AccountStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def initialize(
        self, *, email: str, password: str, org_name: str
    ) -> tuple[User, Organization, Project]:
        """Creates the first Owner, their organization and its ``Default project``.

        Raises Conflict when keyplane already has users, InvalidRequest on bad input."""
        if self._store.count_users() > 0:
            raise Conflict(
                "keyplane is already initialized; add users from the dashboard or the Admin API."
            )
        email = normalize_email(email)
        if len(password) < MIN_LENGTH:
            raise InvalidRequest(
                f"A password needs at least {MIN_LENGTH} characters.", param="password"
            )
        org_name = org_name.strip()
        if not org_name or len(org_name) > 200:
            raise InvalidRequest("An organization name needs 1 to 200 characters.", param="org")
        refuse_control_characters(org_name, "An organization name", "org")
        now = int(self._clock.now())
        user = User(
            id=new_id("user-"),
            email=email,
            name="",
            password_hash=hash_password(password),
            created_at=now,
            # The operator who runs `init` proves control of the machine, not of the mailbox, but
            # there is nobody else to verify with yet; sign-ups through the dashboard verify by email.
            email_verified_at=now,
        )
        org = Organization(id=new_id("org-"), name=org_name, created_at=now)
        project = Project(id=new_id("proj_"), org_id=org.id, name=DEFAULT_PROJECT, created_at=now)
        self._store.add_owner_setup(user, org, project)
        return user, org, project

    def organizations(self) -> Sequence[Organization]:
        return self._store.organizations()

    def find_organization(self, ref: str | None) -> Organization:
        """Returns the organization with this id or name; with None, the only one there is."""
        orgs = self._store.organizations()
        if not orgs:
            raise NotFound("keyplane is not initialized yet: run `keyplane init` first.")
        if ref is None:
            if len(orgs) > 1:
                raise InvalidRequest("There are several organizations: say which with --org.")
            return orgs[0]
        for org in orgs:
            if ref in (org.id, org.name):
                return org
        raise NotFound(f"No organization '{ref}'.")

    def find_project(self, org_id: str, ref: str) -> Project:
        for project in self._store.projects(org_id):
            if ref in (project.id, project.name):
                return project
        raise NotFound(f"No project '{ref}' in this organization.")

    def projects(self, org_id: str) -> Sequence[Project]:
        return self._store.projects(org_id)

    def create_project(self, org_id: str, name: str) -> Project:
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidRequest("A project name needs 1 to 200 characters.", param="name")
        refuse_control_characters(name, "A project name", "name")
        project = Project(
            id=new_id("proj_"), org_id=org_id, name=name, created_at=int(self._clock.now())
        )
        self._store.add_project(project)
        return project

    def owners(self, org_id: str) -> Sequence[User]:
        return self._store.owners(org_id)

    def owner_emails(self, org_id: str) -> list[str]:
        """Who receives billing and limit emails: the organization's Owners."""
        return [user.email for user in self._store.owners(org_id)]

    def org_name(self, org_id: str) -> str:
        return self.find_organization(org_id).name

    def project_name(self, org_id: str, project_id: str) -> str:
        return self.find_project(org_id, project_id).name
