"""Admin API for the organization: its users and their roles, invitations and admin keys.

Shapes follow OpenAI's Administration API. Every route is scoped to the caller's organization (an
id of another organization answers 404, like an unknown one), authorized by
``keyplane.web.authz.POLICY`` under the route's ``name``, and runs its service calls in one worker
thread. Changes are written to the audit log by the service (``keyplane.accounts.orgs``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from keyplane.accounts.invitations import MAX_INVITE_PROJECTS
from keyplane.accounts.models import OrgRole
from keyplane.accounts.org_ports import Invite, InviteProject, Member, ProjectRole
from keyplane.keys.models import ApiKey
from keyplane.keys.service import MAX_EXPIRES_IN_S
from keyplane.web.authz import CONFLICT, Allowed, Services, admin_router
from keyplane.web.params import After, Limit
from keyplane.web.schemas import Deleted, ListPage, Request, page

router = admin_router()

RoleName = Literal["owner", "reader"]
ProjectRoleName = Literal["member", "owner"]
Name = Annotated[str, Field(min_length=1, max_length=200)]
ExpiresIn = Annotated[int, Field(strict=True, ge=1, le=MAX_EXPIRES_IN_S)]


# -- schemas --------------------------------------------------------------------------------------
class OrgUser(BaseModel):
    object: Literal["organization.user"] = "organization.user"
    id: str
    name: str
    email: str
    role: RoleName
    added_at: int

    @classmethod
    def of(cls, member: Member) -> OrgUser:
        user = member.user
        return cls(
            id=user.id, name=user.name, email=user.email, role=member.role.value,
            added_at=member.added_at,
        )  # fmt: skip


class UserRoleUpdate(Request):
    role: RoleName


class AdminKeyOwner(BaseModel):
    """The user an admin key belongs to, as OpenAI's (plus ``email``); name, email, role and
    ``created_at`` (when the user signed up) are null once they left."""

    type: Literal["user"] = "user"
    object: Literal["organization.user"] = "organization.user"
    id: str
    name: str | None
    email: str | None
    role: RoleName | None
    created_at: int | None


class AdminApiKey(BaseModel):
    object: Literal["organization.admin_api_key"] = "organization.admin_api_key"
    id: str
    name: str
    redacted_value: str
    created_at: int
    last_used_at: int | None
    expires_at: int | None
    owner: AdminKeyOwner


class AdminApiKeyCreated(AdminApiKey):
    value: str = Field(description="The full key, shown in this answer only.")


class AdminApiKeyCreate(Request):
    name: Name
    expires_in_seconds: ExpiresIn | None = None


class OrgInviteProject(BaseModel):
    id: str = Field(description="The project's id.")
    role: ProjectRoleName = Field(description="The invitee's role in it.")


class OrgInvite(BaseModel):
    object: Literal["organization.invite"] = "organization.invite"
    id: str
    email: str
    role: RoleName
    status: Literal["pending", "accepted", "expired"]
    invited_at: int
    expires_at: int
    accepted_at: int | None
    projects: list[OrgInviteProject] = Field(
        description="The projects the invitee joins on accepting, with their role in each (those "
        "archived by then are skipped)."
    )


class InviteProjectCreate(Request):
    # (a length bound also makes pydantic refuse a lone surrogate, which PostgreSQL cannot take)
    id: Annotated[str, Field(min_length=1, max_length=64)]
    role: ProjectRoleName


class InviteCreate(Request):
    email: Annotated[str, Field(min_length=3, max_length=254)]
    role: RoleName
    projects: Annotated[list[InviteProjectCreate], Field(max_length=MAX_INVITE_PROJECTS)] | None = (
        Field(
            default=None,
            description="Active projects of this organization, each listed once, that the invitee "
            "joins on accepting, with that role. Omitted, null or empty: none.",
        )
    )


def _admin_key(key: ApiKey, members: dict[str, Member]) -> AdminApiKey:
    member = members.get(key.owner_id)
    owner = AdminKeyOwner(id=key.owner_id, name=None, email=None, role=None, created_at=None)
    if member is not None:
        owner = AdminKeyOwner(
            id=key.owner_id, name=member.user.name, email=member.user.email,
            role=member.role.value, created_at=member.user.created_at,
        )  # fmt: skip
    return AdminApiKey(
        id=key.id, name=key.name, redacted_value=key.redacted_value, created_at=key.created_at,
        last_used_at=key.last_used_at, expires_at=key.expires_at, owner=owner,
    )  # fmt: skip


def _invite(invite: Invite, now: float) -> OrgInvite:
    return OrgInvite(
        id=invite.id, email=invite.email, role=invite.role.value,
        status=invite.status(now).value, invited_at=invite.created_at,
        expires_at=invite.expires_at, accepted_at=invite.accepted_at,
        projects=[OrgInviteProject(id=p.project_id, role=p.role.value) for p in invite.projects],
    )  # fmt: skip


# -- admin keys -----------------------------------------------------------------------------------
@router.get("/admin_api_keys", tags=["admin keys"], name="admin_api_keys.list")
async def list_admin_api_keys(
    svc: Services,
    principal: Allowed,
    limit: Limit = 20,
    after: After = None,
    order: Annotated[
        Literal["asc", "desc"], Query(description="asc: oldest first (OpenAI's default).")
    ] = "asc",
) -> ListPage[AdminApiKey]:
    """The organization's admin keys that were not deleted (values redacted)."""

    def read() -> list[AdminApiKey]:
        members = {m.user.id: m for m in svc.orgs.members(principal.org_id)}
        newest_first = [_admin_key(k, members) for k in svc.orgs.admin_keys(principal.org_id)]
        return newest_first[::-1] if order == "asc" else newest_first

    keys = await asyncio.to_thread(read)
    return page(keys, lambda k: k.id, limit=limit, after=after)


@router.post("/admin_api_keys", tags=["admin keys"], name="admin_api_keys.create")
async def create_admin_api_key(
    svc: Services, principal: Allowed, body: AdminApiKeyCreate
) -> AdminApiKeyCreated:
    """A new admin key owned by the caller's user; ``value`` is shown in this answer only."""

    def create() -> AdminApiKeyCreated:
        key, text = svc.orgs.create_admin_key(
            principal.actor, principal.org_id, body.name, principal.user_id,
            expires_in_s=body.expires_in_seconds,
        )  # fmt: skip
        members = {principal.user_id: svc.orgs.get_member(principal.org_id, principal.user_id)}
        return AdminApiKeyCreated(**_admin_key(key, members).model_dump(), value=text)

    return await asyncio.to_thread(create)


@router.get("/admin_api_keys/{key_id}", tags=["admin keys"], name="admin_api_keys.retrieve")
async def get_admin_api_key(svc: Services, principal: Allowed, key_id: str) -> AdminApiKey:
    def read() -> AdminApiKey:
        key = svc.orgs.admin_key(principal.org_id, key_id)
        members = {m.user.id: m for m in svc.orgs.members(principal.org_id)}
        return _admin_key(key, members)

    return await asyncio.to_thread(read)


@router.delete("/admin_api_keys/{key_id}", tags=["admin keys"], name="admin_api_keys.delete")
async def delete_admin_api_key(svc: Services, principal: Allowed, key_id: str) -> Deleted:
    """Revokes the key everywhere (every gateway drops it within its poll interval)."""
    await asyncio.to_thread(svc.orgs.revoke_admin_key, principal.actor, principal.org_id, key_id)
    return Deleted(object="organization.admin_api_key.deleted", id=key_id)


# -- users ----------------------------------------------------------------------------------------
@router.get("/users", tags=["users"], name="users.list")
async def list_users(
    svc: Services, principal: Allowed, limit: Limit = 20, after: After = None
) -> ListPage[OrgUser]:
    members = await asyncio.to_thread(svc.orgs.members, principal.org_id)
    return page([OrgUser.of(m) for m in members], lambda u: u.id, limit=limit, after=after)


@router.get("/users/{user_id}", tags=["users"], name="users.retrieve")
async def get_user(svc: Services, principal: Allowed, user_id: str) -> OrgUser:
    return OrgUser.of(await asyncio.to_thread(svc.orgs.get_member, principal.org_id, user_id))


@router.post("/users/{user_id}", tags=["users"], name="users.update", responses=CONFLICT)
async def modify_user(
    svc: Services, principal: Allowed, user_id: str, body: UserRoleUpdate
) -> OrgUser:
    """Changes a user's role. The last Owner cannot become a Reader (409)."""
    member = await asyncio.to_thread(
        svc.orgs.change_role, principal.actor, principal.org_id, user_id, OrgRole(body.role)
    )
    return OrgUser.of(member)


@router.delete("/users/{user_id}", tags=["users"], name="users.delete", responses=CONFLICT)
async def delete_user(svc: Services, principal: Allowed, user_id: str) -> Deleted:
    """Removes the user from the organization and its projects and revokes their keys here. The
    last Owner cannot be removed (409)."""
    await asyncio.to_thread(svc.orgs.remove_member, principal.actor, principal.org_id, user_id)
    return Deleted(object="organization.user.deleted", id=user_id)


# -- invitations ----------------------------------------------------------------------------------
@router.get("/invites", tags=["invites"], name="invites.list")
async def list_invites(
    svc: Services, principal: Allowed, limit: Limit = 20, after: After = None
) -> ListPage[OrgInvite]:
    invites = await asyncio.to_thread(svc.orgs.invites, principal.org_id)
    now = svc.orgs.now()
    return page([_invite(i, now) for i in invites], lambda i: i.id, limit=limit, after=after)


@router.post("/invites", tags=["invites"], name="invites.create", responses=CONFLICT)
async def create_invite(svc: Services, principal: Allowed, body: InviteCreate) -> OrgInvite:
    """Emails a single-use link, valid for 7 days; ``projects`` are joined on accepting. 400 for a
    project that is not an active one of this organization or is listed twice; 409 if the address
    is a member already or has a pending invitation."""
    projects = [InviteProject(p.id, ProjectRole(p.role)) for p in body.projects or ()]
    invite = await asyncio.to_thread(
        svc.orgs.invite, principal.actor, principal.org_id, body.email, OrgRole(body.role),
        projects,
    )  # fmt: skip
    return _invite(invite, svc.orgs.now())


@router.get("/invites/{invite_id}", tags=["invites"], name="invites.retrieve")
async def get_invite(svc: Services, principal: Allowed, invite_id: str) -> OrgInvite:
    invite = await asyncio.to_thread(svc.orgs.get_invite, principal.org_id, invite_id)
    return _invite(invite, svc.orgs.now())


@router.delete("/invites/{invite_id}", tags=["invites"], name="invites.delete")
async def delete_invite(svc: Services, principal: Allowed, invite_id: str) -> Deleted:
    """Withdraws an invitation that was not accepted (400 once it was)."""
    await asyncio.to_thread(svc.orgs.delete_invite, principal.actor, principal.org_id, invite_id)
    return Deleted(object="organization.invite.deleted", id=invite_id)
