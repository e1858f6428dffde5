"""Administering an organization: members and roles, invitations, projects and their members,
service accounts and the keys of all of them (BRIEF C1, C2). Invitations are in invitations.py,
the writing of keys in org_keys.py; this service checks where each object is and delegates.

Every change is written to the audit log here, in the service, so the Admin API and the dashboard
record the same events without repeating themselves, in the change's own transaction
(``AuditService.atomic``): no change without its record. ``actor`` says who asked and from where.
Reads take the organization id and answer NotFound for another organization's objects, exactly as
for objects that do not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from keyplane.accounts.invitations import Invitations
from keyplane.accounts.models import OrgRole, Project, ServiceAccount
from keyplane.accounts.org_keys import UNCHANGED, OrgKeys, Unchanged
from keyplane.accounts.org_ports import (
    EmailQueue,
    Invite,
    InviteProject,
    KeyLimits,
    Member,
    OrgStore,
    ProjectMember,
    ProjectRole,
)
from keyplane.accounts.service import AccountService
from keyplane.audit.models import Actor
from keyplane.audit.service import AuditService, changed
from keyplane.clock import Clock
from keyplane.errors import InvalidRequest, NotFound
from keyplane.ids import new_id
from keyplane.keys.access import ip_allowlist, model_allowlist
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.keys.service import KeyService
from keyplane.limits.ratelimit import ModelLimits
from keyplane.text import refuse_control_characters


def _name(name: str, what: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidRequest(f"A {what} name needs 1 to 200 characters.", param="name")
    return refuse_control_characters(name, f"A {what} name", "name")


class OrgService:
    def __init__(
        self,
        store: OrgStore,
        accounts: AccountService,
        keys: KeyService,
        outbox: EmailQueue,
        audit: AuditService,
        clock: Clock,
        *,
        public_url: str,
        require_can_create_keys: Callable[[str], None] = lambda user_id: None,
        key_limits: KeyLimits | None = None,
        require_org_verified: Callable[[str], None] = lambda org_id: None,
    ) -> None:
        self._require_org_verified = require_org_verified
        self._store = store
        self._accounts = accounts
        self._keys = keys
        self._audit = audit
        self._clock = clock
        self._invitations = Invitations(
            store, accounts, outbox, audit, clock, public_url=public_url.rstrip("/")
        )
        self._org_keys = OrgKeys(
            keys, audit, require_can_create_keys=require_can_create_keys, key_limits=key_limits,
            require_org_verified=require_org_verified,
        )  # fmt: skip

    def now(self) -> float:
        return self._clock.now()

    def _now(self) -> int:
        return int(self._clock.now())

    # -- members ----------------------------------------------------------------------------------
    def member(self, org_id: str, user_id: str) -> Member | None:
        return self._store.member(org_id, user_id)

    def members(self, org_id: str) -> Sequence[Member]:
        return self._store.members(org_id)

    def get_member(self, org_id: str, user_id: str) -> Member:
        found = self._store.member(org_id, user_id)
        if found is None:
            raise NotFound(f"No user '{user_id}' in this organization.", param="user_id")
        return found

    def change_role(self, actor: Actor, org_id: str, user_id: str, role: OrgRole) -> Member:
        """Raises Conflict when it would leave the organization without an Owner."""
        before = self.get_member(org_id, user_id)
        if before.role is not role:
            with self._audit.atomic():
                if not self._store.set_member_role(org_id, user_id, role):
                    raise NotFound(f"No user '{user_id}' in this organization.", param="user_id")
                self._audit.record(
                    org_id, actor, "user.updated", target_id=user_id,
                    details=changed({"role": before.role.value}, {"role": role.value}),
                )  # fmt: skip
        return self.get_member(org_id, user_id)

    def remove_member(self, actor: Actor, org_id: str, user_id: str) -> Member:
        """Removes a member (never the last Owner) and revokes the keys they own here."""
        member = self.get_member(org_id, user_id)
        with self._audit.atomic():
            if not self._store.remove_member(org_id, user_id):
                raise NotFound(f"No user '{user_id}' in this organization.", param="user_id")
            owned = [k for k in self._keys.list(org_id) if k.owner_type == "user"]
            revoked = self._org_keys.revoke_all([k for k in owned if k.owner_id == user_id])
            self._audit.record(
                org_id, actor, "user.deleted", target_id=user_id,
                details={"data": {"email": member.user.email, "role": member.role.value},
                         "revoked_keys": revoked},
            )  # fmt: skip
        return member

    # -- invitations (invitations.py) -------------------------------------------------------------
    def invites(self, org_id: str) -> Sequence[Invite]:
        return self._invitations.invites(org_id)

    def get_invite(self, org_id: str, invite_id: str) -> Invite:
        return self._invitations.get_invite(org_id, invite_id)

    def invite(
        self, actor: Actor, org_id: str, email: str, role: OrgRole,
        projects: Sequence[InviteProject] = (),
    ) -> Invite:  # fmt: skip
        return self._invitations.invite(actor, org_id, email, role, projects)

    def delete_invite(self, actor: Actor, org_id: str, invite_id: str) -> Invite:
        return self._invitations.delete_invite(actor, org_id, invite_id)

    def invitation(self, token: str) -> tuple[Invite, str]:
        return self._invitations.invitation(token)

    def accept_invite(self, actor: Actor, token: str, user_id: str) -> Member:
        invite = self._invitations.accept_invite(actor, token, user_id)
        return self.get_member(invite.org_id, user_id)

    # -- projects ---------------------------------------------------------------------------------
    def projects(self, org_id: str, *, include_archived: bool = False) -> Sequence[Project]:
        found = self._accounts.projects(org_id)
        return [p for p in found if include_archived or p.archived_at is None]

    def project(self, org_id: str, project_id: str) -> Project:
        found = self._store.project(project_id)
        if found is None or found.org_id != org_id:
            raise NotFound(f"No project '{project_id}' in this organization.", param="project_id")
        return found

    def _active_project(self, org_id: str, project_id: str) -> Project:
        project = self.project(org_id, project_id)
        if project.archived_at is not None:
            raise InvalidRequest(f"The project '{project.name}' is archived.", param="project_id")
        return project

    def create_project(self, actor: Actor, org_id: str, name: str) -> Project:
        with self._audit.atomic():
            project = self._accounts.create_project(org_id, name)
            self._audit.record(
                org_id, actor, "project.created", target_id=project.id, project_id=project.id,
                details={"data": {"name": project.name}},
            )  # fmt: skip
        return project

    def rename_project(self, actor: Actor, org_id: str, project_id: str, name: str) -> Project:
        before = self._active_project(org_id, project_id)
        name = _name(name, "project")
        if name != before.name:
            with self._audit.atomic():
                self._store.rename_project(project_id, name)
                self._audit.record(
                    org_id, actor, "project.updated", target_id=project_id, project_id=project_id,
                    details=changed({"name": before.name}, {"name": name}),
                )  # fmt: skip
        return self.project(org_id, project_id)

    def archive_project(self, actor: Actor, org_id: str, project_id: str) -> Project:
        """Archives (never deletes) a project; its keys stop working. Archiving twice is a no-op."""
        self.project(org_id, project_id)
        with self._audit.atomic():
            if self._store.archive_project(project_id, self._now()):
                revoked = self._org_keys.revoke_all(self._keys.list(org_id, project_id))
                self._audit.record(
                    org_id, actor, "project.archived", target_id=project_id, project_id=project_id,
                    details={"revoked_keys": revoked},
                )  # fmt: skip
        return self.project(org_id, project_id)

    # -- project members --------------------------------------------------------------------------
    def project_members(self, org_id: str, project_id: str) -> Sequence[ProjectMember]:
        self.project(org_id, project_id)
        return self._store.project_members(project_id)

    def project_member(self, org_id: str, project_id: str, user_id: str) -> ProjectMember:
        self.project(org_id, project_id)
        found = self._store.project_member(project_id, user_id)
        if found is None:
            raise NotFound(f"No user '{user_id}' in this project.", param="user_id")
        return found

    def project_role(self, org_id: str, project_id: str, user_id: str) -> ProjectRole | None:
        """The user's role in the project, or None (also for another organization's project)."""
        project = self._store.project(project_id)
        if project is None or project.org_id != org_id:
            return None
        found = self._store.project_member(project_id, user_id)
        return None if found is None else found.role

    def add_project_member(
        self, actor: Actor, org_id: str, project_id: str, user_id: str, role: ProjectRole
    ) -> ProjectMember:
        """Only members of the organization can join its projects. Raises Conflict if present."""
        self._active_project(org_id, project_id)
        self.get_member(org_id, user_id)
        with self._audit.atomic():
            self._store.add_project_member(project_id, user_id, role, self._now())
            self._audit.record(
                org_id, actor, "project_user.added", target_id=user_id, project_id=project_id,
                details={"data": {"role": role.value}},
            )  # fmt: skip
        return self.project_member(org_id, project_id, user_id)

    def change_project_role(
        self, actor: Actor, org_id: str, project_id: str, user_id: str, role: ProjectRole
    ) -> ProjectMember:
        before = self.project_member(org_id, project_id, user_id)
        if before.role is not role:
            with self._audit.atomic():
                self._store.set_project_role(project_id, user_id, role)
                self._audit.record(
                    org_id, actor, "project_user.updated", target_id=user_id,
                    project_id=project_id,
                    details=changed({"role": before.role.value}, {"role": role.value}),
                )  # fmt: skip
        return self.project_member(org_id, project_id, user_id)

    def remove_project_member(
        self, actor: Actor, org_id: str, project_id: str, user_id: str
    ) -> ProjectMember:
        """Removes a user from a project and revokes the keys they own in it (as removing them
        from the organization revokes all theirs)."""
        member = self.project_member(org_id, project_id, user_id)
        owned = [
            k
            for k in self._keys.list(org_id, project_id)
            if k.owner_type == "user" and k.owner_id == user_id
        ]
        with self._audit.atomic():
            self._store.remove_project_member(project_id, user_id)
            revoked = self._org_keys.revoke_all(owned)
            self._audit.record(
                org_id, actor, "project_user.deleted", target_id=user_id, project_id=project_id,
                details={"data": {"role": member.role.value}, "revoked_keys": revoked},
            )  # fmt: skip
        return member

    # -- service accounts -------------------------------------------------------------------------
    def service_accounts(self, org_id: str, project_id: str) -> Sequence[ServiceAccount]:
        self.project(org_id, project_id)
        return self._store.service_accounts(project_id)

    def service_account(self, org_id: str, project_id: str, account_id: str) -> ServiceAccount:
        found = self._store.service_account(account_id)
        if found is None or found.org_id != org_id or found.project_id != project_id:
            raise NotFound(
                f"No service account '{account_id}' in this project.", param="service_account_id"
            )
        return found

    def create_service_account(
        self, actor: Actor, org_id: str, project_id: str, name: str, *,
        key_name: str = "Secret key", scopes: Sequence[str] | None = None,
        allowed_models: Sequence[str] | None = None, allowed_ips: Sequence[str] | None = None,
    ) -> tuple[ServiceAccount, ApiKey, str]:  # fmt: skip
        """A service account and its first key (``key_name``, ``scopes``: None for All; its
        allowlists: None for none); the key's text is returned here only. Nothing is stored when
        keys cannot be created yet, or when the allowlists are malformed."""
        self._active_project(org_id, project_id)
        self._require_org_verified(org_id)
        model_allowlist(allowed_models)  # raise now, before the account is made
        ip_allowlist(allowed_ips)
        account = ServiceAccount(
            id=new_id("svc_acct_"), org_id=org_id, project_id=project_id,
            name=_name(name, "service account"), created_at=self._now(),
        )  # fmt: skip
        with self._audit.atomic():  # (an account whose key cannot be made is not kept)
            self._store.add_service_account(account)
            self._audit.record(
                org_id, actor, "service_account.created", target_id=account.id,
                project_id=project_id, details={"data": {"name": account.name, "role": "member"}},
            )  # fmt: skip
            key, text = self._org_keys.create(
                actor, org_id, project_id, KeyKind.SERVICE_ACCOUNT, key_name,
                owner_type="service_account", owner_id=account.id, scopes=scopes,
                allowed_models=allowed_models, allowed_ips=allowed_ips,
            )  # fmt: skip
        return account, key, text

    def delete_service_account(
        self, actor: Actor, org_id: str, project_id: str, account_id: str
    ) -> ServiceAccount:
        """Deletes the account and revokes its keys."""
        account = self.service_account(org_id, project_id, account_id)
        keys = [
            k
            for k in self._keys.list(org_id, project_id)
            if k.owner_type == "service_account" and k.owner_id == account_id
        ]
        with self._audit.atomic():
            revoked = self._org_keys.revoke_all(keys)
            self._store.delete_service_account(account_id)
            self._audit.record(
                org_id, actor, "service_account.deleted", target_id=account_id,
                project_id=project_id,
                details={"data": {"name": account.name}, "revoked_keys": revoked},
            )  # fmt: skip
        return account

    # -- keys -------------------------------------------------------------------------------------
    def project_keys(self, org_id: str, project_id: str) -> Sequence[ApiKey]:
        """The project's keys that were not deleted (revoked), newest first."""
        self.project(org_id, project_id)
        return [k for k in self._keys.list(org_id, project_id) if k.revoked_at is None]

    def project_key(self, org_id: str, project_id: str, key_id: str) -> ApiKey:
        found = next((k for k in self.project_keys(org_id, project_id) if k.id == key_id), None)
        if found is None:
            raise NotFound(f"No API key '{key_id}' in this project.", param="key_id")
        return found

    def create_project_key(
        self, actor: Actor, org_id: str, project_id: str, name: str, owner_id: str,
        *, expires_in_s: int | None = None, scopes: Sequence[str] | None = None,
        allowed_models: Sequence[str] | None = None, allowed_ips: Sequence[str] | None = None,
    ) -> tuple[ApiKey, str]:  # fmt: skip
        """A project key owned by the user ``owner_id``, with ``scopes`` (None: All) and its own
        allowlists (None: none); its text is returned here only."""
        self._active_project(org_id, project_id)
        self.get_member(org_id, owner_id)
        return self._org_keys.create(
            actor, org_id, project_id, KeyKind.PROJECT, name,
            owner_type="user", owner_id=owner_id, expires_in_s=expires_in_s, scopes=scopes,
            allowed_models=allowed_models, allowed_ips=allowed_ips,
        )  # fmt: skip

    def update_project_key(
        self, actor: Actor, org_id: str, project_id: str, key_id: str, *,
        scopes: Sequence[str] | Unchanged | None, allowed_models: Sequence[str] | Unchanged | None,
        allowed_ips: Sequence[str] | Unchanged | None, limits: Mapping[str, int | None],
        name: str | Unchanged = UNCHANGED,
    ) -> ApiKey:  # fmt: skip
        """Changes a project key's permissions, allowlists, (lower-only) rate limits and name: the
        limits ``limits`` names (``rpm``, ``tpm``, ``rpd``; None lifts one), keeping the others."""
        key = self.project_key(org_id, project_id, key_id)
        return self._org_keys.update(
            actor, org_id, project_id, key,
            scopes=scopes, allowed_models=allowed_models, allowed_ips=allowed_ips, limits=limits,
            name=name,
        )  # fmt: skip

    def project_key_limits(self, key_id: str) -> ModelLimits | None:
        return self._org_keys.limits(key_id)

    def rotate_project_key(
        self, actor: Actor, org_id: str, project_id: str, key_id: str, *, grace_s: int
    ) -> tuple[ApiKey, str]:
        """A new secret for a project key, with its permissions, allowlists and rate limits; the
        old one works for ``grace_s`` (0 to 7 days)."""
        old = self.project_key(org_id, project_id, key_id)
        return self._org_keys.rotate(actor, org_id, project_id, old, grace_s=grace_s)

    def revoke_project_key(self, actor: Actor, org_id: str, project_id: str, key_id: str) -> ApiKey:
        return self._org_keys.delete(actor, self.project_key(org_id, project_id, key_id))

    def admin_keys(self, org_id: str) -> Sequence[ApiKey]:
        return [
            k for k in self._keys.list(org_id) if k.kind is KeyKind.ADMIN and k.revoked_at is None
        ]

    def admin_key(self, org_id: str, key_id: str) -> ApiKey:
        found = next((k for k in self.admin_keys(org_id) if k.id == key_id), None)
        if found is None:
            raise NotFound(f"No admin key '{key_id}' in this organization.", param="key_id")
        return found

    def create_admin_key(
        self, actor: Actor, org_id: str, name: str, owner_id: str, *, expires_in_s: int | None
    ) -> tuple[ApiKey, str]:
        self.get_member(org_id, owner_id)
        return self._org_keys.create(
            actor, org_id, None, KeyKind.ADMIN, name,
            owner_type="user", owner_id=owner_id, expires_in_s=expires_in_s,
        )  # fmt: skip

    def rotate_admin_key(
        self, actor: Actor, org_id: str, key_id: str, *, grace_s: int
    ) -> tuple[ApiKey, str]:
        """A new secret for an admin key (the same name and owner); the old one works for
        ``grace_s`` (0 to 7 days). Audited as a project key's rotation, as the CLI does."""
        old = self.admin_key(org_id, key_id)
        return self._org_keys.rotate(actor, org_id, None, old, grace_s=grace_s)

    def revoke_admin_key(self, actor: Actor, org_id: str, key_id: str) -> ApiKey:
        return self._org_keys.delete(actor, self.admin_key(org_id, key_id))
