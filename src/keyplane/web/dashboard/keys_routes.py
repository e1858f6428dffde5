"""The API keys page (BRIEF C9, following the guide's screens): the organization's project keys,
"Create new secret key" (name, project, owner, permissions) with the secret shown once to copy,
and revoking a key after a confirmation page.

Who may do what is the Admin API's rule (``keyplane.web.authz.POLICY``) applied to the signed-in
user, and every change goes through the same service and audit log as the Admin API's."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.accounts.models import Project
from keyplane.accounts.orgs import UNCHANGED
from keyplane.errors import KeyplaneError, NotFound
from keyplane.keys.models import ApiKey
from keyplane.keys.permissions import ALL_READ, Access, Group, describe, scopes_for
from keyplane.web.authz import POLICY, permits
from keyplane.web.dashboard.session import (
    CurrentMember,
    Redirect,
    Viewer,
    client_ip,
    context,
    render,
)
from keyplane.web.principal import Principal

router = APIRouter()
PATH = "/api-keys"
ACCESS = frozenset(a.value for a in Access)
GROUP_LABELS = {
    Group.MODELS: "Models",
    Group.CHAT: "Model capabilities (chat, completions, responses)",
    Group.EMBEDDINGS: "Embeddings",
    Group.AUDIO: "Audio",
    Group.IMAGES: "Images",
    Group.MODERATIONS: "Moderations",
    Group.FILES: "Files",
    Group.BATCH: "Batch",
}


@dataclass(frozen=True, slots=True)
class KeyRow:
    key: ApiKey
    project: Project
    owner: str  # a person's email, or the service account's name
    permissions: str  # All / Restricted / Read only
    status: str  # active / expired (revoked keys are not listed)
    rotate: bool  # older than the rotation policy
    can_revoke: bool


def _principal(request: Request, viewer: Viewer) -> Principal:
    org = viewer.org
    assert org is not None  # CurrentMember has one
    member = context(request).services.orgs.get_member(org.id, viewer.user.id)
    return Principal.of_session(
        viewer.session_ref, org.id, member, client_ip(request), request.headers.get("user-agent")
    )


def _may(
    request: Request, principal: Principal, operation: str, project_id: str, key: ApiKey | None
) -> bool:
    """``POLICY`` for the signed-in user, as the Admin API decides it for an admin key."""
    grants = POLICY[operation]
    if permits(grants, principal):
        return True
    orgs = context(request).services.orgs
    role = orgs.project_role(principal.org_id, project_id, principal.user_id)
    owns = key is not None and key.owner_type == "user" and key.owner_id == principal.user_id
    return permits(grants, principal, project_role=role, owns_key=owns)


def _creatable(request: Request, principal: Principal) -> list[Project]:
    """The active projects the user may create keys in."""
    orgs = context(request).services.orgs
    return [
        p
        for p in orgs.projects(principal.org_id)
        if _may(request, principal, "project_api_keys.create", p.id, None)
    ]


def _rows(request: Request, principal: Principal) -> list[KeyRow]:
    services = context(request).services
    orgs, now = services.orgs, services.clock.now()
    max_age_s = services.settings.key_rotation_days * 86400
    people = {m.user.id: m.user.email for m in orgs.members(principal.org_id)}
    rows = []
    for project in orgs.projects(principal.org_id):
        accounts = {a.id: a.name for a in orgs.service_accounts(principal.org_id, project.id)}
        for key in orgs.project_keys(principal.org_id, project.id):
            owner = (
                people.get(key.owner_id, "a former member")
                if key.owner_type == "user"
                else f"{accounts.get(key.owner_id, 'service account')} (service account)"
            )
            can_revoke = _may(request, principal, "project_api_keys.delete", project.id, key)
            rotate = key.needs_rotation(now, max_age_s)
            status = key.status(now)
            rows.append(
                KeyRow(key, project, owner, describe(key.scopes), status, rotate, can_revoke)
            )
    rows.sort(key=lambda r: r.key.created_at, reverse=True)
    return rows


@router.get(PATH)
def keys_page(request: Request, viewer: CurrentMember) -> Response:
    principal = _principal(request, viewer)
    return render(
        request, "api_keys.html", viewer=viewer, rows=_rows(request, principal),
        can_create=bool(_creatable(request, principal)),
        rotation_days=context(request).services.settings.key_rotation_days,
    )  # fmt: skip


def _new_page(
    request: Request, viewer: Viewer, projects: Sequence[Project], *, status: int = 200,
    error: str | None = None, form: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    principal = _principal(request, viewer)
    can_service = {
        p.id for p in projects if _may(request, principal, "project_service_accounts.create", p.id, None)
    }  # fmt: skip
    return render(
        request, "api_key_new.html", status=status, viewer=viewer, projects=projects,
        service_projects=can_service, groups=GROUP_LABELS, error=error,
        form=form or {"permissions": "all", "owner": "you"},
    )  # fmt: skip


@router.get(PATH + "/new")
def new_key_page(request: Request, viewer: CurrentMember) -> Response:
    projects = _creatable(request, _principal(request, viewer))
    if not projects:
        raise HTTPException(403, "Your role does not allow creating API keys in any project.")
    return _new_page(request, viewer, projects)


def _scopes(form: dict[str, str]) -> tuple[str, ...] | None:
    """The scopes the form asks for (None: All). Raises ValueError for a choice not offered."""
    choice = form.get("permissions", "all")
    if choice == "all":
        return None
    if choice == "read_only":
        return (ALL_READ,)
    if choice != "restricted":
        raise ValueError("Choose All, Restricted or Read only.")
    chosen = {}
    for group in Group:
        value = form.get(f"perm_{group.value}", "none")
        if value not in ACCESS:
            raise ValueError(f"Choose None, Read or Write for {GROUP_LABELS[group]}.")
        chosen[group] = Access(value)
    scopes = scopes_for(chosen)
    if not scopes:
        raise ValueError(
            "A restricted key needs Read or Write on at least one group (or choose Read only)."
        )
    return scopes


@router.post(PATH)
async def create_key(request: Request, viewer: CurrentMember) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    return await asyncio.to_thread(_create, request, viewer, form)


def _create(request: Request, viewer: Viewer, form: dict[str, str]) -> Response:
    principal = _principal(request, viewer)
    projects = _creatable(request, principal)
    project = next((p for p in projects if p.id == form.get("project")), None)
    if project is None:
        raise HTTPException(403, "Your role does not allow creating API keys in that project.")
    orgs = context(request).services.orgs
    name = form.get("name", "").strip() or "Secret key"
    try:
        scopes = _scopes(form)
        if form.get("owner") == "service_account":
            if not _may(request, principal, "project_service_accounts.create", project.id, None):
                raise HTTPException(403, "Only the project's owners create service accounts.")
            _, key, secret = orgs.create_service_account(
                principal.actor, principal.org_id, project.id, name
            )
            if scopes is not None:
                key = orgs.update_project_key(
                    principal.actor, principal.org_id, project.id, key.id, scopes=scopes,
                    allowed_models=UNCHANGED, allowed_ips=UNCHANGED, limits={},
                )  # fmt: skip
        else:
            key, secret = orgs.create_project_key(
                principal.actor, principal.org_id, project.id, name, principal.user_id,
                scopes=scopes,
            )  # fmt: skip
    except (ValueError, KeyplaneError) as exc:
        message = exc.message if isinstance(exc, KeyplaneError) else str(exc)
        return _new_page(request, viewer, projects, status=400, error=message, form=form)
    return render(
        request, "api_key_created.html", viewer=viewer, key=key, secret=secret, project=project,
        permissions=describe(key.scopes), base_url=_api_base(request),
    )  # fmt: skip


def _api_base(request: Request) -> str:
    """The gateway's base URL for an SDK (``public_url`` is always set, without a final /)."""
    return context(request).services.settings.public_url + "/v1"


def _key_of(request: Request, principal: Principal, key_id: str) -> tuple[ApiKey, Project]:
    orgs = context(request).services.orgs
    for project in orgs.projects(principal.org_id):
        try:
            return orgs.project_key(principal.org_id, project.id, key_id), project
        except NotFound:
            continue
    raise HTTPException(404)


@router.get(PATH + "/{key_id}/revoke")
def revoke_page(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    principal = _principal(request, viewer)
    key, project = _key_of(request, principal, key_id)
    if not _may(request, principal, "project_api_keys.delete", project.id, key):
        raise HTTPException(403, "Your role does not allow revoking this key.")
    return render(request, "api_key_revoke.html", viewer=viewer, key=key, project=project)


@router.post(PATH + "/{key_id}/revoke")
def revoke_key(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    principal = _principal(request, viewer)
    key, project = _key_of(request, principal, key_id)
    if not _may(request, principal, "project_api_keys.delete", project.id, key):
        raise HTTPException(403, "Your role does not allow revoking this key.")
    context(request).services.orgs.revoke_project_key(
        principal.actor, principal.org_id, project.id, key.id
    )
    raise Redirect(PATH)
