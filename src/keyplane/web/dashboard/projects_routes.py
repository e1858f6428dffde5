"""The Projects pages (BRIEF C1/C9): the organization's projects, and each one's members and
service accounts. Owners create, rename and archive projects and manage their members; a Reader
reads, whatever their role in a project. The rule is the Admin API's ``POLICY``,
and changes go through the same ``OrgService`` calls, audited alike."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.accounts.models import Project
from keyplane.accounts.org_ports import ProjectRole
from keyplane.billing.amounts import parse_amount
from keyplane.billing.audit_details import budget_change
from keyplane.billing.periods import period_of
from keyplane.errors import KeyplaneError, NotFound, StoreUnavailable
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.session import (
    CurrentMember,
    Field,
    Redirect,
    Viewer,
    context,
    form_error,
    render,
    same_org,
)

router = APIRouter()
PATH = "/projects"


def _list(request: Request, viewer: Viewer, *, status: int = 200, **values: object) -> Response:
    principal = principal_of(request, viewer)
    orgs = context(request).services.orgs
    projects = orgs.projects(principal.org_id, include_archived=True)
    keys = {p.id: len(orgs.project_keys(principal.org_id, p.id)) for p in projects}
    return render(
        request, "projects.html", status=status, viewer=viewer,
        active=[p for p in projects if p.archived_at is None],
        archived=[p for p in projects if p.archived_at is not None], keys=keys,
        can_create=may(request, principal, "projects.create", None), **values,
    )  # fmt: skip


@router.get(PATH)
def projects_page(request: Request, viewer: CurrentMember) -> Response:
    return _list(request, viewer)


@router.post(PATH)
def create_project(
    request: Request, viewer: CurrentMember, name: Field = "", org_id: Field = ""
) -> Response:
    principal = principal_of(request, viewer)
    if not may(request, principal, "projects.create", None):
        raise HTTPException(403, "Only the organization's Owners create projects.")
    same_org(viewer, org_id)
    try:
        project = context(request).services.orgs.create_project(
            principal.actor, principal.org_id, name
        )
    except KeyplaneError as exc:
        return _list(request, viewer, status=400, error=exc.message, typed_name=name)
    raise Redirect(f"{PATH}/{project.id}")


def _project(request: Request, org_id: str, project_id: str) -> Project:
    try:
        return context(request).services.orgs.project(org_id, project_id)
    except NotFound:
        raise HTTPException(404) from None


def _detail(
    request: Request, viewer: Viewer, project_id: str, *, status: int = 200, **values: object
) -> Response:
    principal = principal_of(request, viewer)
    orgs = context(request).services.orgs
    project = _project(request, principal.org_id, project_id)
    members = orgs.project_members(principal.org_id, project.id)
    inside = {m.user.id for m in members}
    candidates = [m for m in orgs.members(principal.org_id) if m.user.id not in inside]
    active = project.archived_at is None
    services = context(request).services
    _, spent_by_project = services.money_store.month_spend(
        principal.org_id, period_of(services.clock.now())
    )
    return render(
        request, "project.html", status=status, viewer=viewer, project=project, members=members,
        candidates=candidates, accounts=orgs.service_accounts(principal.org_id, project.id),
        keys=len(orgs.project_keys(principal.org_id, project.id)),
        can_manage=active and may(request, principal, "project_users.create", project.id),
        can_rename=active and may(request, principal, "projects.update", project.id),
        can_archive=active and may(request, principal, "projects.archive", project.id),
        roles=[r.value for r in ProjectRole],
        budget=services.billing.project_budget(project.id),
        spent=spent_by_project.get(project.id, 0),
        can_budget=active and may(request, principal, "project_spend_limit.update", project.id),
        **values,
    )  # fmt: skip


@router.get(PATH + "/{project_id}")
def project_page(request: Request, viewer: CurrentMember, project_id: str) -> Response:
    return _detail(request, viewer, project_id)


def _act(request: Request, viewer: Viewer, project_id: str, operation: str) -> tuple[str, str]:
    """(the organization, the project) once ``POLICY`` allows ``operation`` on an active
    project; 404 for a project elsewhere, 403 for a caller without the right."""
    principal = principal_of(request, viewer)
    project = _project(request, principal.org_id, project_id)
    if project.archived_at is not None or not may(request, principal, operation, project.id):
        raise HTTPException(403, "Your role does not allow this change to the project.")
    return principal.org_id, project.id


@router.post(PATH + "/{project_id}/name")
def rename_project(
    request: Request, viewer: CurrentMember, project_id: str, name: Field = ""
) -> Response:
    org_id, pid = _act(request, viewer, project_id, "projects.update")
    try:
        context(request).services.orgs.rename_project(
            principal_of(request, viewer).actor, org_id, pid, name
        )
    except KeyplaneError as exc:
        return _detail(request, viewer, pid, status=400, error=exc.message, typed_name=name)
    raise Redirect(f"{PATH}/{pid}")


@router.post(PATH + "/{project_id}/members")
def add_member(
    request: Request, viewer: CurrentMember, project_id: str, user_id: Field = "",
    role: Field = "member",
) -> Response:  # fmt: skip
    org_id, pid = _act(request, viewer, project_id, "project_users.create")
    try:
        chosen = ProjectRole(role)
        context(request).services.orgs.add_project_member(
            principal_of(request, viewer).actor, org_id, pid, user_id, chosen
        )
    except ValueError:
        return _detail(request, viewer, pid, status=400, error="Choose Owner or Member.")
    except KeyplaneError as exc:
        return _detail(request, viewer, pid, status=400, error=exc.message)
    raise Redirect(f"{PATH}/{pid}")


@router.get(PATH + "/{project_id}/members/{user_id}/remove")
def remove_member_page(
    request: Request, viewer: CurrentMember, project_id: str, user_id: str
) -> Response:
    org_id, pid = _act(request, viewer, project_id, "project_users.delete")
    try:
        member = context(request).services.orgs.project_member(org_id, pid, user_id)
    except NotFound:
        raise HTTPException(404) from None
    return render(
        request, "confirm.html", viewer=viewer, heading="Remove from the project",
        message=f"{member.user.email} leaves this project, and the keys they own in it stop "
        "working on every gateway within a second.",
        action=f"{PATH}/{pid}/members/{user_id}/remove", button="Remove", back=f"{PATH}/{pid}",
    )  # fmt: skip


@router.post(PATH + "/{project_id}/members/{user_id}/remove")
def remove_member(
    request: Request, viewer: CurrentMember, project_id: str, user_id: str
) -> Response:
    org_id, pid = _act(request, viewer, project_id, "project_users.delete")
    try:
        context(request).services.orgs.remove_project_member(
            principal_of(request, viewer).actor, org_id, pid, user_id
        )
    except NotFound:
        raise HTTPException(404) from None
    raise Redirect(f"{PATH}/{pid}")


@router.get(PATH + "/{project_id}/archive")
def archive_page(request: Request, viewer: CurrentMember, project_id: str) -> Response:
    org_id, pid = _act(request, viewer, project_id, "projects.archive")
    name = _project(request, org_id, pid).name
    return render(
        request, "confirm.html", viewer=viewer, heading=f"Archive the project “{name}”?",
        message="Its keys stop working on every gateway within a second; its usage and audit "
        "history stay. This cannot be undone.",
        action=f"{PATH}/{pid}/archive", button="Archive project", back=f"{PATH}/{pid}",
    )  # fmt: skip


@router.post(PATH + "/{project_id}/budget")
def set_project_budget(
    request: Request, viewer: CurrentMember, project_id: str, amount: Field = ""
) -> Response:
    """The project's monthly budget in dollars (whole cents); an empty field is refused (Remove
    budget removes it: one click on Save must not)."""
    return _save_budget(request, viewer, project_id, amount)


@router.post(PATH + "/{project_id}/budget/remove")
def remove_project_budget(request: Request, viewer: CurrentMember, project_id: str) -> Response:
    return _save_budget(request, viewer, project_id, None)


def _save_budget(request: Request, viewer: Viewer, project_id: str, amount: str | None) -> Response:
    """Sets (``amount``, as typed) or removes (None) the project's budget, audited as the Admin
    API's ``spend_limit.updated``."""
    org_id, pid = _act(request, viewer, project_id, "project_spend_limit.update")
    services = context(request).services
    principal = principal_of(request, viewer)
    try:
        if amount is not None and not amount.strip():
            raise ValueError(
                "Enter the monthly budget, like 50 or 12.50 (to have none, use Remove budget)."
            )
        budget = None if amount is None else parse_amount(amount, cents=True)
        before = services.billing.project_budget(pid)
        with services.audit.atomic():
            services.billing.set_project_budget(org_id, pid, budget)
            services.audit.record(
                org_id, principal.actor, "spend_limit.updated", target_id=pid, project_id=pid,
                details=budget_change(before, budget),
            )  # fmt: skip
    except StoreUnavailable:
        raise  # (the 503 page: not a mistake in the form)
    except (ValueError, KeyplaneError) as exc:
        return _detail(
            request, viewer, pid, status=400, error=form_error(exc), typed_budget=amount or ""
        )
    raise Redirect(f"{PATH}/{pid}")


@router.post(PATH + "/{project_id}/archive")
def archive_project(request: Request, viewer: CurrentMember, project_id: str) -> Response:
    org_id, pid = _act(request, viewer, project_id, "projects.archive")
    context(request).services.orgs.archive_project(principal_of(request, viewer).actor, org_id, pid)
    raise Redirect(PATH)
