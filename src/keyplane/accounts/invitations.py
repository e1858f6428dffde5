"""Invitations to an organization, for OrgService: sent by email with a single-use link, listed,
withdrawn, and accepted by the user they were sent to. Each change is audited.

An invitation may name projects (OpenAI's ``projects``), each with a project role: the invitee
joins them when accepting, in the transaction that makes them a member, except those archived by
then (an archived project takes no one new, and failing the acceptance would punish the invitee
for a change they could not see)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from keyplane.accounts.models import OrgRole, Project
from keyplane.accounts.org_ports import EmailQueue, Invite, InviteProject, InviteStatus, OrgStore
from keyplane.accounts.service import AccountService
from keyplane.audit.models import Actor
from keyplane.audit.service import AuditService
from keyplane.clock import Clock
from keyplane.emails import normalize_email
from keyplane.errors import Conflict, InvalidRequest, NotFound
from keyplane.ids import new_id
from keyplane.notify.email_html import render_html

INVITE_TTL_S = 7 * 86400
INVITE_PATH = "/invites/accept"  # the dashboard page that takes ?token=
_DEAD_INVITE = "This invitation link is invalid, used or expired."
TOKEN_BYTES = 32  # 256 bits from `secrets`
MAX_INVITE_PROJECTS = 100  # projects one invitation may name


def token_hash(token: str) -> str:
    """A fast hash is enough: the token is 256 random bits, not a password."""
    return hashlib.sha256(token.encode()).hexdigest()


class Invitations:
    def __init__(
        self,
        store: OrgStore,
        accounts: AccountService,
        outbox: EmailQueue,
        audit: AuditService,
        clock: Clock,
        *,
        public_url: str,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._outbox = outbox
        self._audit = audit
        self._clock = clock
        self._public_url = public_url

    def _now(self) -> int:
        return int(self._clock.now())

    def invites(self, org_id: str) -> Sequence[Invite]:
        return self._store.invites(org_id)

    def get_invite(self, org_id: str, invite_id: str) -> Invite:
        for invite in self._store.invites(org_id):
            if invite.id == invite_id:
                return invite
        raise NotFound(f"No invite '{invite_id}' in this organization.", param="invite_id")

    def _projects(self, org_id: str, wanted: Sequence[InviteProject]) -> list[Project]:
        """The projects ``wanted`` names, checked: each an active project of this organization,
        named once. Raises InvalidRequest naming the entry (``projects.<n>.id``); another
        organization's project is unknown here, as everywhere."""
        if len(wanted) > MAX_INVITE_PROJECTS:
            raise InvalidRequest(
                f"An invitation can name at most {MAX_INVITE_PROJECTS} projects.", param="projects"
            )
        found: list[Project] = []
        for n, entry in enumerate(wanted):
            param = f"projects.{n}.id"
            if any(p.id == entry.project_id for p in found):
                raise InvalidRequest(
                    f"The project '{entry.project_id}' is listed more than once.", param=param
                )
            project = self._store.project(entry.project_id)
            if project is None or project.org_id != org_id:
                raise InvalidRequest(
                    f"No project '{entry.project_id}' in this organization.", param=param
                )
            if project.archived_at is not None:
                raise InvalidRequest(f"The project '{project.name}' is archived.", param=param)
            found.append(project)
        return found

    def invite(
        self, actor: Actor, org_id: str, email: str, role: OrgRole,
        projects: Sequence[InviteProject] = (),
    ) -> Invite:  # fmt: skip
        """Stores an invitation and queues the email with its single-use link (valid 7 days).
        ``projects``: those the invitee joins on accepting, with the role each names.

        Raises InvalidRequest for a project that is not an active one of this organization, or
        named twice; Conflict if the address is a member or has a pending invitation."""
        email = normalize_email(email)
        named = self._projects(org_id, projects)
        now = self._now()
        if any(m.user.email.lower() == email for m in self._store.members(org_id)):
            raise Conflict(f"'{email}' is already a member of this organization.", param="email")
        if any(
            i.email == email and i.status(now) is InviteStatus.PENDING
            for i in self._store.invites(org_id)
        ):
            raise Conflict(f"'{email}' already has a pending invitation.", param="email")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        invite = Invite(
            id=new_id("invite-"), org_id=org_id, email=email, role=role,
            token_hash=token_hash(token), created_at=now, expires_at=now + INVITE_TTL_S,
            created_by=actor.user_id, projects=tuple(projects),
        )  # fmt: skip
        org = self._accounts.org_name(org_id)
        subject = f"You are invited to join {org} on keyplane"
        url = f"{self._public_url}{INVITE_PATH}?token={token}"
        said = _projects_said(named, projects)
        text = (
            f"You have been invited to join the organization {org} on keyplane as "
            f"{role.value.capitalize()}{said}.\n\n"
            f"Accept the invitation within 7 days:\n"
            f"{url}\n\n"
            "The link works once. If you did not expect this email, ignore it.\n"
        )
        page = render_html(
            "invitation.html",
            subject=subject,
            org=org,
            role=role.value.capitalize(),
            projects=said,
            url=url,
        )
        data: dict[str, object] = {"email": email, "role": role.value}
        if projects:  # (OpenAI's event carries the payload; without projects, as before)
            data["projects"] = [{"id": p.project_id, "role": p.role.value} for p in projects]
        with self._audit.atomic():  # the invitation, its email and its entry, or none of them
            self._store.add_invite(invite)
            self._outbox.enqueue(f"invite:{invite.id}", [email], subject, text, page, now=now)
            self._audit.record(
                org_id, actor, "invite.sent", target_id=invite.id, details={"data": data}
            )
        return invite

    def delete_invite(self, actor: Actor, org_id: str, invite_id: str) -> Invite:
        """Withdraws a pending or expired invitation. Raises InvalidRequest once accepted."""
        invite = self.get_invite(org_id, invite_id)
        if invite.accepted_at is not None:
            raise InvalidRequest("This invitation was accepted and cannot be deleted.")
        with self._audit.atomic():
            if not self._store.delete_invite(org_id, invite_id):
                raise NotFound(f"No invite '{invite_id}' in this organization.", param="invite_id")
            self._audit.record(
                org_id, actor, "invite.deleted", target_id=invite_id,
                details={"data": {"email": invite.email, "role": invite.role.value}},
            )  # fmt: skip
        return invite

    def invitation(self, token: str) -> tuple[Invite, str]:
        """The pending invitation emailed with ``token`` and its organization's name, for the page
        that accepts it. Raises InvalidRequest when the link is invalid, used or expired."""
        invite = self._store.invite_by_token_hash(token_hash(token))
        if invite is None or invite.status(self._now()) is not InviteStatus.PENDING:
            raise InvalidRequest(_DEAD_INVITE)
        return invite, self._accounts.org_name(invite.org_id)

    def accept_invite(self, actor: Actor, token: str, user_id: str) -> Invite:
        """Makes ``user_id`` a member with the invitation's role, and of its projects not archived
        since with their roles; returns the invitation. The token works once, until it expires,
        and only for the address it was sent to. Raises InvalidRequest, Conflict."""
        invite, _ = self.invitation(token)
        user = self._store.user(user_id)
        if user is None:
            raise InvalidRequest(_DEAD_INVITE)
        if user.email.lower() != invite.email:
            raise InvalidRequest("This invitation was sent to another email address.")
        with self._audit.atomic():
            joined = self._store.accept_invite(invite.id, user_id, self._now())
            if joined is None:
                raise InvalidRequest(_DEAD_INVITE)
            self._audit.record(invite.org_id, actor, "invite.accepted", target_id=invite.id)
            self._audit.record(
                invite.org_id, actor, "user.added", target_id=user_id,
                details={"data": {"email": user.email, "role": invite.role.value}},
            )  # fmt: skip
            for project in joined:  # as OrgService.add_project_member records it
                self._audit.record(
                    invite.org_id, actor, "project_user.added", target_id=user_id,
                    project_id=project.project_id, details={"data": {"role": project.role.value}},
                )  # fmt: skip
        return invite


def _projects_said(named: Sequence[Project], roles: Sequence[InviteProject]) -> str:
    """ ", and its projects A (Owner) and B (Member)" for the email; "" without projects."""
    said = [f"{p.name} ({r.role.value.capitalize()})" for p, r in zip(named, roles, strict=True)]
    if not said:
        return ""
    listed = said[0] if len(said) == 1 else f"{', '.join(said[:-1])} and {said[-1]}"
    return f", and its project{'s' if len(said) > 1 else ''} {listed}"
