"""Who is acting, however they signed in: an admin key on the Admin API or (with the dashboard) a
user's session. Authorization (``keyplane.web.authz``) and the audit log read only this, so both
ways in are checked and recorded the same way."""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.accounts.models import OrgRole
from keyplane.accounts.org_ports import Member
from keyplane.audit.models import Actor, ActorType
from keyplane.keys.models import ApiKey


@dataclass(frozen=True, slots=True)
class Principal:
    org_id: str
    role: OrgRole  # the user's role in the organization
    user_id: str
    email: str | None
    actor_type: ActorType
    actor_id: str  # the admin key's id, or the session's id
    ip_address: str | None
    user_agent: str | None

    @property
    def is_owner(self) -> bool:
        return self.role is OrgRole.OWNER

    @property
    def actor(self) -> Actor:
        return Actor(
            type=self.actor_type,
            id=self.actor_id,
            user_id=self.user_id,
            email=self.email,
            ip_address=self.ip_address,
            user_agent=self.user_agent,
        )

    @classmethod
    def of_admin_key(
        cls, key: ApiKey, member: Member, ip_address: str | None, user_agent: str | None
    ) -> Principal:
        """An admin key acts with the role its owner has in the organization now, so demoting
        or removing a user takes effect on their keys at once."""
        return cls(
            org_id=key.org_id,
            role=member.role,
            user_id=member.user.id,
            email=member.user.email,
            actor_type=ActorType.API_KEY,
            actor_id=key.id,
            ip_address=ip_address,
            user_agent=user_agent,
        )

    @classmethod
    def of_session(
        cls,
        session_id: str,
        org_id: str,
        member: Member,
        ip_address: str | None,
        user_agent: str | None,
    ) -> Principal:
        """A signed-in dashboard user acting in ``org_id``."""
        return cls(
            org_id=org_id,
            role=member.role,
            user_id=member.user.id,
            email=member.user.email,
            actor_type=ActorType.SESSION,
            actor_id=session_id,
            ip_address=ip_address,
            user_agent=user_agent,
        )
