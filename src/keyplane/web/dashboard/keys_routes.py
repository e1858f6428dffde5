"""The API keys page (BRIEF C9, following the guide's screens): the organization's project keys,
"Create new secret key" (name, project, owner, permissions, allowed models and IPs) with the
secret shown once to copy, editing a key (its name, permissions and allowlists, the create
form's fields, and its own rate limits: ``key_form``), rotating one (a new secret shown once; the
old one works for the grace period chosen) and revoking one, each after a confirmation page.

Who may do what is the Admin API's rule (``keyplane.web.authz.POLICY``) applied to the signed-in
user, and every change goes through the same service and audit log as the Admin API's. The pages
that show a secret once, confirm a revocation or a rotation, are shared with the Admin keys page
(``key_pages``)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.accounts.models import Project
from keyplane.accounts.org_ports import ProjectRole
from keyplane.errors import InvalidRequest, KeyplaneError, NotFound
from keyplane.keys.models import ApiKey
from keyplane.keys.permissions import describe
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.key_form import (
    GROUP_LABELS,
    LIMIT_FIELDS,
    fields_of,
    limits_of,
    notes_of,
    restrictions_of,
    scopes_of,
)
from keyplane.web.dashboard.key_pages import (
    FORMS,
    PROJECT_KEYS,
    ListedKey,
    Sent,
    again_page,
    back_to_list,
    created_page,
    listed_key,
    refuse_replaced,
    replaced_ids,
    revoked_notice,
    rotate_once,
    rotate_page,
    status_of,
)
from keyplane.web.dashboard.session import (
    CurrentMember,
    Redirect,
    Viewer,
    context,
    form_error,
    render,
    same_org,
)
from keyplane.web.principal import Principal

router = APIRouter()
PATH = PROJECT_KEYS.path


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRow(ListedKey):
    project: Project
    owner: str  # a person's email, or the service account's name
    permissions: str  # All / Restricted / Read only
    notes: tuple[tuple[str, str], ...]  # its own allowlists and rate limits: (said, in full)


def _owner(key: ApiKey, people: dict[str, str], accounts: dict[str, str]) -> str:
    """Who owns a key, as the dashboard says it: ``people`` and ``accounts`` name them by id."""
    if key.owner_type == "user":
        return people.get(key.owner_id, "a former member")
    return f"{accounts.get(key.owner_id, 'service account')} (service account)"


def _creatable(request: Request, principal: Principal) -> list[Project]:
    """The active projects the user may create keys in."""
    orgs = context(request).services.orgs
    roles: dict[str, ProjectRole | None] = {}
    return [
        p
        for p in orgs.projects(principal.org_id)
        if may(request, principal, "project_api_keys.create", p.id, roles=roles)
    ]


def _rows(request: Request, principal: Principal) -> list[KeyRow]:
    services = context(request).services
    orgs, now = services.orgs, services.clock.now()
    max_age_s = services.settings.key_rotation_days * 86400
    people = {m.user.id: m.user.email for m in orgs.members(principal.org_id)}
    roles: dict[str, ProjectRole | None] = {}  # (one lookup a project, not one a key)
    rows = []
    for project in orgs.projects(principal.org_id):
        accounts = {a.id: a.name for a in orgs.service_accounts(principal.org_id, project.id)}
        keys = orgs.project_keys(principal.org_id, project.id)
        replaced = replaced_ids(keys)
        for key in keys:
            owner = _owner(key, people, accounts)
            can_revoke = may(
                request, principal, "project_api_keys.delete", project.id, key, roles=roles
            )
            status, rotate = status_of(key, replaced, now, max_age_s)
            can_rotate = status == "active" and may(
                request, principal, "project_api_keys.rotate", project.id, key, roles=roles
            )
            can_edit = status == "active" and may(
                request, principal, "project_api_keys.update", project.id, key, roles=roles
            )
            rows.append(
                KeyRow(
                    key=key, status=status, rotate=rotate, can_revoke=can_revoke,
                    can_rotate=can_rotate, can_edit=can_edit, project=project, owner=owner,
                    permissions=describe(key.scopes),
                    notes=notes_of(key, orgs.project_key_limits(key.id)),
                )
            )  # fmt: skip
    rows.sort(key=lambda r: r.key.created_at, reverse=True)
    return rows


@router.get(PATH)
def keys_page(
    request: Request, viewer: CurrentMember, revoked: str = "", updated: str = ""
) -> Response:
    """``revoked``, ``updated``: the key just revoked or edited (Revoke and Save lead here), said
    in a notice."""
    principal = principal_of(request, viewer)
    rows = _rows(request, principal)
    key = listed_key(request, principal.org_id, revoked or updated) if revoked or updated else None
    notice = revoked_notice(key)
    if notice is None and key is not None and updated:
        notice = (
            f"{key.name} ({key.redacted_value}) is saved: every gateway applies the change "
            "within a second."
        )
    return render(
        request, "api_keys.html", viewer=viewer, rows=rows, notice=notice,
        can_create=bool(_creatable(request, principal)), listing=PROJECT_KEYS,
        rotation_days=context(request).services.settings.key_rotation_days,
    )  # fmt: skip


def _new_page(
    request: Request, viewer: Viewer, projects: Sequence[Project], *, status: int = 200,
    error: str | None = None, error_field: str | None = None, form: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    principal = principal_of(request, viewer)
    can_service = {
        p.id for p in projects if may(request, principal, "project_service_accounts.create", p.id)
    }  # fmt: skip
    return render(
        request, "api_key_new.html", status=status, viewer=viewer, listing=PROJECT_KEYS,
        projects=projects,
        service_projects=can_service, groups=GROUP_LABELS, error=error, error_field=error_field,
        form=form or {"permissions": "all", "owner": "you"}, form_id=secrets.token_urlsafe(16),
    )  # fmt: skip


@router.get(PATH + "/new")
def new_key_page(request: Request, viewer: CurrentMember) -> Response:
    projects = _creatable(request, principal_of(request, viewer))
    if not projects:
        raise HTTPException(403, "Your role does not allow creating API keys in any project.")
    return _new_page(request, viewer, projects)


@router.post(PATH)
def create_key(request: Request, viewer: CurrentMember, form: Sent) -> Response:
    same_org(viewer, form.get("org_id", ""))
    principal = principal_of(request, viewer)
    projects = _creatable(request, principal)
    if not projects:
        raise HTTPException(403, "Your role does not allow creating API keys in any project.")
    orgs = context(request).services.orgs
    name = form.get("name", "").strip() or "Secret key"
    form_id = form.get("form_id", "")
    try:
        project = next((p for p in projects if p.id == form.get("project")), None)
        if project is None:
            raise ValueError("Choose one of the projects listed.")
        scopes = scopes_of(form)
        models, ips = restrictions_of(form)
        service = form.get("owner") == "service_account"
        if service and not may(request, principal, "project_service_accounts.create", project.id):
            raise ValueError(
                f"Only the owners of {project.name} create service accounts in it: choose You."
            )
        if not FORMS.claim(form_id):
            return again_page(request, viewer, PROJECT_KEYS, rotated=False)
        with FORMS.taking(form_id):
            if service:
                _, key, secret = orgs.create_service_account(
                    principal.actor, principal.org_id, project.id, name, key_name=name,
                    scopes=scopes, allowed_models=models, allowed_ips=ips,
                )  # fmt: skip
            else:
                key, secret = orgs.create_project_key(
                    principal.actor, principal.org_id, project.id, name, principal.user_id,
                    scopes=scopes, allowed_models=models, allowed_ips=ips,
                )  # fmt: skip
    except (ValueError, KeyplaneError) as exc:
        field = exc.param if isinstance(exc, KeyplaneError) else None
        return _new_page(
            request, viewer, projects, status=400, error=form_error(exc), error_field=field,
            form=form,
        )  # fmt: skip
    return created_page(request, viewer, PROJECT_KEYS, key, secret, project)


def _key_of(request: Request, principal: Principal, key_id: str) -> tuple[ApiKey, Project]:
    orgs = context(request).services.orgs
    for project in orgs.projects(principal.org_id):
        try:
            return orgs.project_key(principal.org_id, project.id, key_id), project
        except NotFound:
            continue
    raise HTTPException(404)


def _revocable(request: Request, viewer: Viewer, key_id: str) -> tuple[Principal, ApiKey, Project]:
    """The key the user may revoke (404 unknown here, 403 not theirs to revoke)."""
    principal = principal_of(request, viewer)
    key, project = _key_of(request, principal, key_id)
    if not may(request, principal, "project_api_keys.delete", project.id, key):
        raise HTTPException(403, "Your role does not allow revoking this key.")
    return principal, key, project


@router.get(PATH + "/{key_id}/revoke")
def revoke_page(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    _, key, project = _revocable(request, viewer, key_id)
    return render(
        request, "api_key_revoke.html", viewer=viewer, listing=PROJECT_KEYS, key=key,
        project=project,
    )  # fmt: skip


@router.post(PATH + "/{key_id}/revoke")
def revoke_key(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    principal, key, project = _revocable(request, viewer, key_id)
    context(request).services.orgs.revoke_project_key(
        principal.actor, principal.org_id, project.id, key.id
    )
    back_to_list(PROJECT_KEYS, key)


def _current(
    request: Request, viewer: Viewer, key_id: str, operation: str, verb: str
) -> tuple[Principal, ApiKey, Project]:
    """The key the user may rotate or edit (404 unknown here, 403 not theirs to change; a key
    already replaced by a rotation is refused: rotating it again would make a second replacement,
    and its replacement is the one to change)."""
    principal = principal_of(request, viewer)
    key, project = _key_of(request, principal, key_id)
    if not may(request, principal, operation, project.id, key):
        raise HTTPException(403, f"Your role does not allow {verb.removesuffix('e')}ing this key.")
    keys = context(request).services.orgs.project_keys(principal.org_id, project.id)
    refuse_replaced(key, keys, verb, PROJECT_KEYS)
    return principal, key, project


def _rotatable(request: Request, viewer: Viewer, key_id: str) -> tuple[Principal, ApiKey, Project]:
    return _current(request, viewer, key_id, "project_api_keys.rotate", "rotate")


@router.get(PATH + "/{key_id}/rotate")
def rotate_key_page(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    _, key, project = _rotatable(request, viewer, key_id)
    return rotate_page(request, viewer, PROJECT_KEYS, key, project)


@router.post(PATH + "/{key_id}/rotate")
def rotate_key(request: Request, viewer: CurrentMember, key_id: str, form: Sent) -> Response:
    orgs = context(request).services.orgs

    def rotate(principal: Principal, key: ApiKey, grace_s: int) -> tuple[ApiKey, str]:
        return orgs.rotate_project_key(
            principal.actor, principal.org_id, str(key.project_id), key.id, grace_s=grace_s
        )

    find = partial(_rotatable, request, viewer, key_id)
    return rotate_once(request, viewer, PROJECT_KEYS, form, find, rotate)


def _editable(request: Request, viewer: Viewer, key_id: str) -> tuple[Principal, ApiKey, Project]:
    """The key the user may edit: project owners (and organization Owners) only, as the Admin
    API's update; a key's owner may not lift the restrictions put on it. An expired key is
    refused: nothing it could be given would make it work again."""
    principal, key, project = _current(request, viewer, key_id, "project_api_keys.update", "edit")
    if not key.is_usable(context(request).services.clock.now()):
        raise InvalidRequest(f"The key {key.redacted_value} has expired: create a new one.")
    return principal, key, project


@router.get(PATH + "/{key_id}/edit")
def edit_page(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    _, key, project = _editable(request, viewer, key_id)
    limits = context(request).services.orgs.project_key_limits(key.id)
    return _edit_page(request, viewer, key, project, fields_of(key, limits))  # as the key is now


@router.post(PATH + "/{key_id}/edit")
def edit_key(request: Request, viewer: CurrentMember, key_id: str, form: Sent) -> Response:
    same_org(viewer, form.get("org_id", ""))
    principal, key, project = _editable(request, viewer, key_id)
    try:
        scopes = scopes_of(form)
        models, ips = restrictions_of(form)
        # A list of the key's own left empty means "no list", but an empty list (no model, or no
        # address: set through the Admin API) cannot be typed: keep it rather than open the key.
        if models is None and key.allowed_models == ():
            models = ()
        if ips is None and key.allowed_cidrs == ():
            ips = ()
        context(request).services.orgs.update_project_key(
            principal.actor, principal.org_id, project.id, key.id, name=form.get("name", ""),
            scopes=scopes, allowed_models=models, allowed_ips=ips, limits=limits_of(form),
        )  # fmt: skip
    except (ValueError, KeyplaneError) as exc:
        field = exc.param if isinstance(exc, KeyplaneError) else None
        return _edit_page(
            request, viewer, key, project, form, status=400, error=form_error(exc),
            error_field=field,
        )  # fmt: skip
    raise Redirect(f"{PATH}?updated={key.id}")


def _edit_page(
    request: Request, viewer: Viewer, key: ApiKey, project: Project, form: dict[str, str], *,
    status: int = 200, error: str | None = None, error_field: str | None = None,
) -> Response:  # fmt: skip
    orgs, org_id = context(request).services.orgs, project.org_id
    people = {m.user.id: m.user.email for m in orgs.members(org_id)}
    accounts = {a.id: a.name for a in orgs.service_accounts(org_id, project.id)}
    lists = {"allowed_ips": key.allowed_cidrs, "allowed_models": key.allowed_models}
    return render(
        request, "api_key_edit.html", status=status, viewer=viewer, key=key, project=project,
        owner=_owner(key, people, accounts), groups=GROUP_LABELS, form=form,
        error=error, error_field=error_field, closed=[f for f, v in lists.items() if v == ()],
        limit_fields=LIMIT_FIELDS,
    )  # fmt: skip
