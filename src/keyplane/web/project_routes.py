"""Admin API for projects themselves, in OpenAI's shapes: list, create, retrieve, rename and
archive (archived, never deleted). Their API keys, service accounts and users have modules of
their own (``project_key_routes``, ``service_account_routes``, ``project_user_routes``).

A project of another organization answers 404 like an unknown one. Authorization is
``keyplane.web.authz.POLICY`` under each route's ``name``; the service
(``keyplane.accounts.orgs``) writes every change to the audit log.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel

from keyplane.accounts.models import Project
from keyplane.web.authz import CONFLICT, Allowed, Services, admin_router
from keyplane.web.org_routes import Name
from keyplane.web.params import After, Limit
from keyplane.web.schemas import ListPage, Request, page

router = admin_router("/v1/organization/projects")


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
