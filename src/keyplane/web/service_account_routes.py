"""Admin API for a project's service accounts (each created with its first API key), in OpenAI's
shapes.

Scoped, authorized and audited as every project route is (``keyplane.web.project_routes``).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, Field

from keyplane.accounts.models import ServiceAccount
from keyplane.web.authz import Allowed, Services, admin_router
from keyplane.web.org_routes import Name
from keyplane.web.params import After, Limit
from keyplane.web.schemas import Deleted, ListPage, Request, page

router = admin_router("/v1/organization/projects")


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
