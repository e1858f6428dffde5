"""Admin API for a project's users (members of the organization added to the project, as owner or
member), in OpenAI's shapes.

Scoped, authorized and audited as every project route is (``keyplane.web.project_routes``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from keyplane.accounts.org_ports import ProjectMember, ProjectRole
from keyplane.web.authz import CONFLICT, Allowed, Services, admin_router
from keyplane.web.params import After, Limit
from keyplane.web.schemas import Deleted, ListPage, Request, page

router = admin_router("/v1/organization/projects")

ProjectRoleName = Literal["owner", "member"]


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
