"""Invitations to an organization, for OrgService: sent by email with a single-use link, listed,
withdrawn, and accepted by the user they were sent to. Each change is audited."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from keyplane.accounts.models import OrgRole
from keyplane.accounts.org_ports import EmailQueue, Invite, InviteStatus, OrgStore
from keyplane.accounts.service import AccountService
from keyplane.audit.models import Actor
from keyplane.audit.service import AuditService
from keyplane.clock import Clock
from keyplane.emails import normalize_email
from keyplane.errors import Conflict, InvalidRequest, NotFound
from keyplane.ids import new_id

INVITE_TTL_S = 7 * 86400
INVITE_PATH = "/invites/accept"  # the dashboard page that takes ?token=
_DEAD_INVITE = "This invitation link is invalid, used or expired."
TOKEN_BYTES = 32  # 256 bits from `secrets`


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

    def invite(self, actor: Actor, org_id: str, email: str, role: OrgRole) -> Invite:
        """Stores an invitation and queues the email with its single-use link (valid 7 days).

        Raises Conflict if the address is a member or has a pending invitation."""
        email = normalize_email(email)
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
            created_by=actor.user_id,
        )  # fmt: skip
        self._store.add_invite(invite)
        org = self._accounts.org_name(org_id)
        self._outbox.enqueue(
            f"invite:{invite.id}",
            [email],
            f"You are invited to join {org} on keyplane",
            f"You have been invited to join the organization {org} on keyplane as "
            f"{role.value.capitalize()}.\n\nAccept the invitation within 7 days:\n"
            f"{self._public_url}{INVITE_PATH}?token={token}\n\n"
            "The link works once. If you did not expect this email, ignore it.\n",
            now=now,
        )
        self._audit.record(
            org_id, actor, "invite.sent", target_id=invite.id,
            details={"data": {"email": email, "role": role.value}},
        )  # fmt: skip
        return invite

    def delete_invite(self, actor: Actor, org_id: str, invite_id: str) -> Invite:
        """Withdraws a pending or expired invitation. Raises InvalidRequest once accepted."""
        invite = self.get_invite(org_id, invite_id)
        if invite.accepted_at is not None:
            raise InvalidRequest("This invitation was accepted and cannot be deleted.")
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
        """Makes ``user_id`` a member with the invitation's role; returns the invitation. The token
        works once, until it expires, and only for the address it was sent to. Raises
        InvalidRequest, Conflict."""
        invite, _ = self.invitation(token)
        user = self._store.user(user_id)
        if user is None:
            raise InvalidRequest(_DEAD_INVITE)
        if user.email.lower() != invite.email:
            raise InvalidRequest("This invitation was sent to another email address.")
        if not self._store.accept_invite(invite.id, user_id, self._now()):
            raise InvalidRequest(_DEAD_INVITE)
        self._audit.record(invite.org_id, actor, "invite.accepted", target_id=invite.id)
        self._audit.record(
            invite.org_id, actor, "user.added", target_id=user_id,
            details={"data": {"email": user.email, "role": invite.role.value}},
        )  # fmt: skip
        return invite
