"""Admin API for projects: the projects themselves (archived, never deleted), their API keys,
service accounts and members, in OpenAI's shapes.

A project of another organization answers 404 like an unknown one. Authorization is
``keyplane.web.authz.POLICY`` under each route's ``name``; the service
(``keyplane.accounts.orgs``) writes every change to the audit log.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from keyplane.accounts.models import OrgRole, Project, ServiceAccount
from keyplane.accounts.org_keys import UNCHANGED
from keyplane.accounts.org_ports import Member, ProjectMember, ProjectRole
from keyplane.keys.models import ApiKey
from keyplane.limits.ratelimit import API_NAMES, MAX_LIMIT, MAX_TOKEN_LIMIT, ModelLimits
from keyplane.web.authz import AUTHZ_RESPONSES, CONFLICT, Allowed, OrgServices, Services, authorize
from keyplane.web.billing_routes import After, Limit
from keyplane.web.org_routes import ExpiresIn, Name
from keyplane.web.schemas import Deleted, ListPage, Request, page

router = APIRouter(
    prefix="/v1/organization/projects",
    responses=AUTHZ_RESPONSES,
    dependencies=[Depends(authorize)],
)

ProjectRoleName = Literal["owner", "member"]


# -- schemas --------------------------------------------------------------------------------------
class OrgProject(BaseModel):
    object: Literal["organization.project"] = "organization.project"
    id: str
    name: str
    created_at: int
    archived_at: int | None
    status: Literal["active", "archived"]

    @classmethod
    def of(cls, p: Project) -> OrgProject:
        status: Literal["active", "archived"] = "archived" if p.archived_at else "active"
        return cls(
            id=p.id, name=p.name, created_at=p.created_at, archived_at=p.archived_at, status=status
        )


class ProjectCreate(Request):
    name: Name


class ProjectUpdate(Request):
    name: Name


class ProjectUser(BaseModel):
    object: Literal["organization.project.user"] = "organization.project.user"
    id: str
    name: str
    email: str
    role: ProjectRoleName
    added_at: int

    @classmethod
    def of(cls, m: ProjectMember) -> ProjectUser:
        return cls(
            id=m.user.id, name=m.user.name, email=m.user.email, role=m.role.value,
            added_at=m.added_at,
        )  # fmt: skip


class ProjectUserCreate(Request):
    user_id: Annotated[str, Field(min_length=1, max_length=40)]
    role: ProjectRoleName


class ProjectUserUpdate(Request):
    role: ProjectRoleName


class ProjectServiceAccount(BaseModel):
    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    id: str
    name: str
    role: Literal["member"] = "member"
    created_at: int

    @classmethod
    def of(cls, sa: ServiceAccount) -> ProjectServiceAccount:
        return cls(id=sa.id, name=sa.name, created_at=sa.created_at)


class ServiceAccountCreate(Request):
    name: Name


class ServiceAccountApiKey(BaseModel):
    object: Literal["organization.project.service_account.api_key"] = (
        "organization.project.service_account.api_key"
    )
    id: str
    name: str
    value: str = Field(description="The full key, shown in this answer only.")
    created_at: int


class ServiceAccountCreated(ProjectServiceAccount):
    api_key: ServiceAccountApiKey


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


# -- projects -------------------------------------------------------------------------------------
@router.get("", tags=["projects"], name="projects.list")
async def list_projects(
    svc: Services,
    principal: Allowed,
    limit: Limit = 20,
    after: After = None,
    include_archived: Annotated[
        bool, Query(description="Whether to include archived projects.")
    ] = False,
) -> ListPage[OrgProject]:
    """The organization's projects, oldest first."""
    projects = await asyncio.to_thread(
        svc.orgs.projects, principal.org_id, include_archived=include_archived
    )
    return page([OrgProject.of(p) for p in projects], lambda p: p.id, limit=limit, after=after)


@router.post("", tags=["projects"], name="projects.create", responses=CONFLICT)
async def create_project(svc: Services, principal: Allowed, body: ProjectCreate) -> OrgProject:
    """409 if the organization has a project with that name (archived ones included)."""
    project = await asyncio.to_thread(
        svc.orgs.create_project, principal.actor, principal.org_id, body.name
    )
    return OrgProject.of(project)


@router.get("/{project_id}", tags=["projects"], name="projects.retrieve")
async def get_project(svc: Services, principal: Allowed, project_id: str) -> OrgProject:
    return OrgProject.of(await asyncio.to_thread(svc.orgs.project, principal.org_id, project_id))


@router.post("/{project_id}", tags=["projects"], name="projects.update", responses=CONFLICT)
async def modify_project(
    svc: Services, principal: Allowed, project_id: str, body: ProjectUpdate
) -> OrgProject:
    """Renames an active project (archived ones answer 400)."""
    project = await asyncio.to_thread(
        svc.orgs.rename_project, principal.actor, principal.org_id, project_id, body.name
    )
    return OrgProject.of(project)


@router.post("/{project_id}/archive", tags=["projects"], name="projects.archive")
async def archive_project(svc: Services, principal: Allowed, project_id: str) -> OrgProject:
    """Archives the project (it is never deleted): its keys are revoked and stop working on every
    gateway; its usage and audit history stay."""
    project = await asyncio.to_thread(
        svc.orgs.archive_project, principal.actor, principal.org_id, project_id
    )
    return OrgProject.of(project)


# -- API keys -------------------------------------------------------------------------------------
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


# -- service accounts -----------------------------------------------------------------------------
@router.get(
    "/{project_id}/service_accounts", tags=["service accounts"],
    name="project_service_accounts.list",
)  # fmt: skip
async def list_service_accounts(
    svc: Services, principal: Allowed, project_id: str, limit: Limit = 20, after: After = None
) -> ListPage[ProjectServiceAccount]:
    accounts = await asyncio.to_thread(svc.orgs.service_accounts, principal.org_id, project_id)
    shown = [ProjectServiceAccount.of(a) for a in accounts]
    return page(shown, lambda a: a.id, limit=limit, after=after)


@router.post(
    "/{project_id}/service_accounts", tags=["service accounts"],
    name="project_service_accounts.create",
)  # fmt: skip
async def create_service_account(
    svc: Services, principal: Allowed, project_id: str, body: ServiceAccountCreate
) -> ServiceAccountCreated:
    """A service account with its first key, whose ``value`` is shown in this answer only."""
    account, key, text = await asyncio.to_thread(
        svc.orgs.create_service_account, principal.actor, principal.org_id, project_id, body.name
    )
    api_key = ServiceAccountApiKey(id=key.id, name=key.name, value=text, created_at=key.created_at)
    return ServiceAccountCreated(**ProjectServiceAccount.of(account).model_dump(), api_key=api_key)


@router.get(
    "/{project_id}/service_accounts/{service_account_id}", tags=["service accounts"],
    name="project_service_accounts.retrieve",
)  # fmt: skip
async def get_service_account(
    svc: Services, principal: Allowed, project_id: str, service_account_id: str
) -> ProjectServiceAccount:
    account = await asyncio.to_thread(
        svc.orgs.service_account, principal.org_id, project_id, service_account_id
    )
    return ProjectServiceAccount.of(account)


@router.delete(
    "/{project_id}/service_accounts/{service_account_id}", tags=["service accounts"],
    name="project_service_accounts.delete",
)  # fmt: skip
async def delete_service_account(
    svc: Services, principal: Allowed, project_id: str, service_account_id: str
) -> Deleted:
    """Deletes the service account and revokes its keys."""
    await asyncio.to_thread(
        svc.orgs.delete_service_account,
        principal.actor, principal.org_id, project_id, service_account_id,
    )  # fmt: skip
    return Deleted(object="organization.project.service_account.deleted", id=service_account_id)


# -- project users --------------------------------------------------------------------------------
@router.get("/{project_id}/users", tags=["project users"], name="project_users.list")
async def list_project_users(
    svc: Services, principal: Allowed, project_id: str, limit: Limit = 20, after: After = None
) -> ListPage[ProjectUser]:
    members = await asyncio.to_thread(svc.orgs.project_members, principal.org_id, project_id)
    return page([ProjectUser.of(m) for m in members], lambda u: u.id, limit=limit, after=after)


@router.post(
    "/{project_id}/users", tags=["project users"], name="project_users.create",
    responses=CONFLICT,
)  # fmt: skip
async def add_project_user(
    svc: Services, principal: Allowed, project_id: str, body: ProjectUserCreate
) -> ProjectUser:
    """Adds a member of the organization to the project (409 if they are in it already)."""
    member = await asyncio.to_thread(
        svc.orgs.add_project_member, principal.actor, principal.org_id, project_id,
        body.user_id, ProjectRole(body.role),
    )  # fmt: skip
    return ProjectUser.of(member)


@router.get("/{project_id}/users/{user_id}", tags=["project users"], name="project_users.retrieve")
async def get_project_user(
    svc: Services, principal: Allowed, project_id: str, user_id: str
) -> ProjectUser:
    member = await asyncio.to_thread(svc.orgs.project_member, principal.org_id, project_id, user_id)
    return ProjectUser.of(member)


@router.post("/{project_id}/users/{user_id}", tags=["project users"], name="project_users.update")
async def modify_project_user(
    svc: Services, principal: Allowed, project_id: str, user_id: str, body: ProjectUserUpdate
) -> ProjectUser:
    member = await asyncio.to_thread(
        svc.orgs.change_project_role, principal.actor, principal.org_id, project_id, user_id,
        ProjectRole(body.role),
    )  # fmt: skip
    return ProjectUser.of(member)


@router.delete("/{project_id}/users/{user_id}", tags=["project users"], name="project_users.delete")
async def remove_project_user(
    svc: Services, principal: Allowed, project_id: str, user_id: str
) -> Deleted:
    await asyncio.to_thread(
        svc.orgs.remove_project_member, principal.actor, principal.org_id, project_id, user_id
    )
    return Deleted(object="organization.project.user.deleted", id=user_id)
