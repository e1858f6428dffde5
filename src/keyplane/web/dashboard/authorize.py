"""The Admin API's rule (``keyplane.web.authz.POLICY``), applied to the dashboard's signed-in
user: one decision for both ways in."""

from __future__ import annotations

from fastapi import Request

from keyplane.accounts.org_ports import ProjectRole
from keyplane.keys.models import ApiKey
from keyplane.web.authz import POLICY, permits
from keyplane.web.dashboard.session import Viewer, client_ip, context
from keyplane.web.principal import Principal


def principal_of(request: Request, viewer: Viewer) -> Principal:
    """The signed-in user acting in the organization the dashboard shows."""
    org = viewer.org
    assert org is not None  # CurrentMember has one
    member = context(request).services.orgs.get_member(org.id, viewer.user.id)
    return Principal.of_session(
        viewer.session_ref, org.id, member, client_ip(request), request.headers.get("user-agent")
    )


def may(
    request: Request,
    principal: Principal,
    operation: str,
    project_id: str | None,
    key: ApiKey | None = None,
    roles: dict[str, ProjectRole | None] | None = None,
) -> bool:
    """Whether ``POLICY`` lets the principal perform ``operation`` (on ``project_id``'s project,
    and ``key`` when it names one), as the Admin API decides it for an admin key. ``roles``
    keeps the principal's project roles once read, for a page that asks about many keys."""
    grants = POLICY[operation]
    if permits(grants, principal):
        return True
    if project_id is None:
        return False
    if roles is not None and project_id in roles:
        role = roles[project_id]
    else:
        orgs = context(request).services.orgs
        role = orgs.project_role(principal.org_id, project_id, principal.user_id)
        if roles is not None:
            roles[project_id] = role
    owns = key is not None and key.owner_type == "user" and key.owner_id == principal.user_id
    return permits(grants, principal, project_role=role, owns_key=owns)
