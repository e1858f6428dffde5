"""Admin API for a project's API keys (its users' and service accounts'), in OpenAI's shapes plus
keyplane's extensions: create, rotate, and the key's own allowlists and rate limits.

Scoped, authorized and audited as every project route is (``keyplane.web.project_routes``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from keyplane.accounts.models import OrgRole, ServiceAccount
from keyplane.accounts.org_keys import UNCHANGED
from keyplane.accounts.org_ports import Member, ProjectMember
from keyplane.keys.models import ApiKey
from keyplane.limits.ratelimit import API_NAMES, MAX_LIMIT, MAX_TOKEN_LIMIT, ModelLimits
from keyplane.web.authz import Allowed, OrgServices, Services, admin_router
from keyplane.web.org_routes import ExpiresIn, Name
from keyplane.web.params import After, Limit
from keyplane.web.project_user_routes import ProjectRoleName, ProjectUser
from keyplane.web.schemas import Deleted, ListPage, Request, page
from keyplane.web.service_account_routes import ProjectServiceAccount

router = admin_router("/v1/organization/projects")


class KeyOwnerUser(BaseModel):
    """OpenAI's project user, as a key's owner: the role is the one in the key's project; an
    organization Owner outside its member list manages it as an owner, since joining the
    organization (``added_at``). Name, email, role and ``added_at`` are null once the user left
    the organization."""

    object: Literal["organization.project.user"] = "organization.project.user"
    id: str
    name: str | None
    email: str | None
    role: ProjectRoleName | None
    added_at: int | None


class UserOwner(BaseModel):
    type: Literal["user"] = "user"
    user: KeyOwnerUser


class ServiceAccountOwner(BaseModel):
    type: Literal["service_account"] = "service_account"
    service_account: ProjectServiceAccount


class ProjectApiKey(BaseModel):
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    id: str
    name: str
    redacted_value: str
    created_at: int
    last_used_at: int | None
    expires_at: int | None
    owner: UserOwner | ServiceAccountOwner
    scopes: list[str] = Field(description='Empty: all permissions; ["api.all.read"]: read only.')
    allowed_models: list[str] | None = Field(description="null: every model the project allows.")
    allowed_ips: list[str] | None = Field(description="null: any address the project allows.")
    max_requests_per_1_minute: int | None = Field(None, description="The key's own limit, if any.")
    max_tokens_per_1_minute: int | None = Field(None, description="The key's own limit, if any.")
    max_requests_per_1_day: int | None = Field(None, description="The key's own limit, if any.")


KeyLimit = Annotated[int | None, Field(ge=1, le=MAX_LIMIT, strict=True)]


class ProjectApiKeyUpdate(Request):
    """OpenAI's key update (``scopes``, ``expires_in_seconds`` is not changeable here), plus
    keyplane's allowlists and the key's own rate limits (lower only, for every model)."""

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None  # (None: kept)
    scopes: list[str] | None = None
    allowed_models: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    allowed_ips: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = None
    max_requests_per_1_minute: KeyLimit = None
    max_tokens_per_1_minute: Annotated[int | None, Field(ge=1, le=MAX_TOKEN_LIMIT, strict=True)] = (
        None
    )
    max_requests_per_1_day: KeyLimit = None


class ProjectApiKeyCreated(ProjectApiKey):
    value: str = Field(description="The full key, shown in this answer only.")


class ProjectApiKeyRotate(Request):
    """A keyplane extension: a new secret; the old one keeps working for the grace period."""

    grace_period_seconds: int = Field(default=0, ge=0, le=7 * 86400, strict=True)


class ProjectApiKeyCreate(Request):
    """A keyplane extension (OpenAI creates project keys in its dashboard only)."""

    name: Name
    expires_in_seconds: ExpiresIn | None = None


def _owner(
    key: ApiKey, members: dict[str, Member], joined: dict[tuple[str | None, str], ProjectMember],
    accounts: dict[str, ServiceAccount],
) -> UserOwner | ServiceAccountOwner:  # fmt: skip
    if key.owner_type == "service_account":
        account = accounts.get(key.owner_id)
        if account is not None:
            return ServiceAccountOwner(service_account=ProjectServiceAccount.of(account))
    user = KeyOwnerUser(id=key.owner_id, name=None, email=None, role=None, added_at=None)
    member = members.get(key.owner_id)
    in_project = joined.get((key.project_id, key.owner_id))
    if in_project is not None:
        user = KeyOwnerUser(**ProjectUser.of(in_project).model_dump(exclude={"object"}))
    elif member is not None:
        role: ProjectRoleName | None = "owner" if member.role is OrgRole.OWNER else None
        user = KeyOwnerUser(
            id=key.owner_id, name=member.user.name, email=member.user.email, role=role,
            added_at=member.added_at,
        )  # fmt: skip
    return UserOwner(user=user)


def _keys(svc: OrgServices, org_id: str, keys: list[ApiKey]) -> list[ProjectApiKey]:
    members = {m.user.id: m for m in svc.orgs.members(org_id)}
    joined: dict[tuple[str | None, str], ProjectMember] = {}
    accounts: dict[str, ServiceAccount] = {}
    for project_id in {k.project_id for k in keys if k.project_id is not None}:
        joined.update(
            ((project_id, m.user.id), m) for m in svc.orgs.project_members(org_id, project_id)
        )
        if any(k.owner_type == "service_account" for k in keys):
            accounts.update((a.id, a) for a in svc.orgs.service_accounts(org_id, project_id))
    return [
        _key(k, _owner(k, members, joined, accounts), svc.orgs.project_key_limits(k.id))
        for k in keys
    ]


def _key(
    key: ApiKey, owner: UserOwner | ServiceAccountOwner, limits: ModelLimits | None
) -> ProjectApiKey:
    limits = limits or ModelLimits()
    return ProjectApiKey(
        id=key.id, name=key.name, redacted_value=key.redacted_value, created_at=key.created_at,
        last_used_at=key.last_used_at, expires_at=key.expires_at, owner=owner,
        scopes=list(key.scopes or ()), allowed_models=_list(key.allowed_models),
        allowed_ips=_list(key.allowed_cidrs), max_requests_per_1_minute=limits.rpm,
        max_tokens_per_1_minute=limits.tpm, max_requests_per_1_day=limits.rpd,
    )  # fmt: skip


def _list(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


@router.get("/{project_id}/api_keys", tags=["project api keys"], name="project_api_keys.list")
async def list_project_api_keys(
    svc: Services, principal: Allowed, project_id: str, limit: Limit = 20, after: After = None
) -> ListPage[ProjectApiKey]:
    """The project's keys (users' and service accounts'), newest first, values redacted."""

    def read() -> list[ProjectApiKey]:
        keys = list(svc.orgs.project_keys(principal.org_id, project_id))
        return _keys(svc, principal.org_id, keys)

    keys = await asyncio.to_thread(read)
    return page(keys, lambda k: k.id, limit=limit, after=after)


@router.post("/{project_id}/api_keys", tags=["project api keys"], name="project_api_keys.create")
async def create_project_api_key(
    svc: Services, principal: Allowed, project_id: str, body: ProjectApiKeyCreate
) -> ProjectApiKeyCreated:
    """A key owned by the caller's user (keyplane extension); ``value`` is shown here only."""

    def create() -> ProjectApiKeyCreated:
        key, text = svc.orgs.create_project_key(
            principal.actor, principal.org_id, project_id, body.name, principal.user_id,
            expires_in_s=body.expires_in_seconds,
        )  # fmt: skip
        (shown,) = _keys(svc, principal.org_id, [key])
        return ProjectApiKeyCreated(**shown.model_dump(), value=text)

    return await asyncio.to_thread(create)


@router.post(
    "/{project_id}/api_keys/{key_id}", tags=["project api keys"], name="project_api_keys.update"
)
async def update_project_api_key(
    svc: Services, principal: Allowed, project_id: str, key_id: str, body: ProjectApiKeyUpdate
) -> ProjectApiKey:
    """Changes the fields given: ``name``, ``scopes`` (``[]`` All, ``["api.all.read"]`` Read only, or
    ``<group>.read|write``), ``allowed_models`` and ``allowed_ips`` (``null`` lifts the key's own
    list), and the key's rate limits (each one given; ``null`` lifts it). Every gateway applies
    the change within a second. Project owners only: a member cannot lift the restrictions put on
    the member's own key."""
    given = body.model_fields_set
    limits = {name: getattr(body, field) for name, field in API_NAMES.items() if field in given}

    def update() -> ProjectApiKey:
        key = svc.orgs.update_project_key(
            principal.actor, principal.org_id, project_id, key_id,
            scopes=body.scopes if "scopes" in given else UNCHANGED,
            allowed_models=body.allowed_models if "allowed_models" in given else UNCHANGED,
            allowed_ips=body.allowed_ips if "allowed_ips" in given else UNCHANGED,
            limits=limits, name=UNCHANGED if body.name is None else body.name,
        )  # fmt: skip
        return _keys(svc, principal.org_id, [key])[0]

    return await asyncio.to_thread(update)


@router.post(
    "/{project_id}/api_keys/{key_id}/rotate",
    tags=["project api keys"],
    name="project_api_keys.rotate",
)
async def rotate_project_api_key(
    svc: Services, principal: Allowed, project_id: str, key_id: str, body: ProjectApiKeyRotate
) -> ProjectApiKeyCreated:
    """Issues a new secret (shown here only) with the same name, permissions and allowlists; the old
    secret keeps working for ``grace_period_seconds`` (0 to 7 days), then stops on every gateway."""

    def rotate() -> ProjectApiKeyCreated:
        key, text = svc.orgs.rotate_project_key(
            principal.actor, principal.org_id, project_id, key_id, grace_s=body.grace_period_seconds
        )
        (shown,) = _keys(svc, principal.org_id, [key])
        return ProjectApiKeyCreated(**shown.model_dump(), value=text)

    return await asyncio.to_thread(rotate)


@router.get(
    "/{project_id}/api_keys/{key_id}", tags=["project api keys"], name="project_api_keys.retrieve"
)
async def get_project_api_key(
    svc: Services, principal: Allowed, project_id: str, key_id: str
) -> ProjectApiKey:
    def read() -> ProjectApiKey:
        key = svc.orgs.project_key(principal.org_id, project_id, key_id)
        return _keys(svc, principal.org_id, [key])[0]

    return await asyncio.to_thread(read)


@router.delete(
    "/{project_id}/api_keys/{key_id}", tags=["project api keys"], name="project_api_keys.delete"
)
async def delete_project_api_key(
    svc: Services, principal: Allowed, project_id: str, key_id: str
) -> Deleted:
    """Revokes the key: every gateway refuses it within its poll interval (well under 1 s)."""
    await asyncio.to_thread(
        svc.orgs.revoke_project_key, principal.actor, principal.org_id, project_id, key_id
    )
    return Deleted(object="organization.project.api_key.deleted", id=key_id)
