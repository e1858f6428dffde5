"""Authorization, written once as data: ``POLICY`` says who may perform each Admin API operation,
and ``authorize`` (a dependency of every Admin API router) checks it before a route runs.

An operation is the route's ``name`` ("projects.create"). A route whose name is missing from
``POLICY`` is refused to everyone (and the authorization-matrix test fails), so a new route cannot
be reachable by accident.

Who may do what (BRIEF C1):

- an **Owner** of the organization may do everything;
- a **Reader** may read everything (no read answers a secret: key values are shown only in the
  answer that creates them) and change nothing, whatever role they hold in a project: a Reader
  "cannot change keys, billing or limits", so a project role adds no right to theirs (they may
  be a project's member, to be listed there, but create, rotate and revoke no key in it);
- the project grants below say what a project role would let a member of another organization
  role do: an **Owner of a project** manages that project (its name, keys, service accounts and
  members), a **Member of a project** creates keys in it (owned by themselves), and rotates and
  deletes the keys they own there (not change their permissions, allowlists or limits). Today's
  two organization roles leave them nothing to grant (an Owner may do everything already, a
  Reader nothing); they stay written down for a role between the two (OpenAI's "Member").

An admin key acts with the role its owner holds now (see ``Principal.of_admin_key``). Denials
answer 403; an id of another organization answers 404 from the route, exactly like an unknown id.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request

from keyplane.accounts.models import OrgRole
from keyplane.accounts.org_ports import ProjectRole
from keyplane.accounts.orgs import OrgService
from keyplane.audit.service import AuditService
from keyplane.errors import NotFound
from keyplane.gateway.errors import ApiError
from keyplane.web.auth import Admin, AdminServices, Caller, Ctx
from keyplane.web.errors import ERROR_RESPONSES, AdminApiError
from keyplane.web.principal import Principal
from keyplane.web.schemas import ErrorEnvelope

log = logging.getLogger("keyplane.admin")


class Grant(enum.StrEnum):
    ORG_OWNER = "organization owner"
    ORG_MEMBER = "organization member"  # any role: Owner or Reader
    PROJECT_OWNER = "project owner"  # of the project in the path
    PROJECT_MEMBER = "project member"  # any role in the project in the path
    KEY_OWNER = "key owner"  # the user who owns the key in the path, if a project member


READ = frozenset({Grant.ORG_MEMBER})
OWNER = frozenset({Grant.ORG_OWNER})
PROJECT_ADMIN = frozenset({Grant.ORG_OWNER, Grant.PROJECT_OWNER})

POLICY: Mapping[str, frozenset[Grant]] = {
    # money (credit_routes, spend_routes, billing_settings_routes): Readers see usage and billing,
    # never change it
    "credit_balance.retrieve": READ,
    "credit_grants.list": READ,
    "credit_grants.create": OWNER,
    "credit_grants.retrieve": READ,
    "credit_grants.revoke": OWNER,
    "spend_limit.retrieve": READ,
    "spend_limit.update": OWNER,
    "spend_limit.delete": OWNER,
    "project_spend_limit.retrieve": READ,
    "project_spend_limit.update": OWNER,
    "project_spend_limit.delete": OWNER,
    "spend_alerts.list": READ,
    "spend_alerts.create": OWNER,
    "spend_alerts.delete": OWNER,
    "project_spend_alerts.list": READ,
    "project_spend_alerts.create": OWNER,
    "project_spend_alerts.delete": OWNER,
    "billing_settings.retrieve": READ,
    "billing_settings.update": OWNER,
    # payments (payment_routes): only Owners spend the organization's money
    "payment_methods.list": READ,
    "payment_methods.create": OWNER,
    "payment_methods.update": OWNER,  # make it the default
    "payment_methods.delete": OWNER,
    "credit_purchases.create": OWNER,
    "billing_history.list": READ,
    # webhooks (webhook_routes)
    "webhooks.list": READ,
    "webhooks.create": OWNER,
    "webhooks.delete": OWNER,
    # rate limits and tiers (limits_routes)
    "project_rate_limits.list": READ,
    "project_rate_limits.update": OWNER,
    "usage_tier.retrieve": READ,
    # organization verification (verification_routes)
    "verification.retrieve": READ,
    "verification.start": OWNER,
    # organization (org_routes)
    "admin_api_keys.list": READ,
    "admin_api_keys.create": OWNER,
    "admin_api_keys.retrieve": READ,
    "admin_api_keys.delete": OWNER,
    "users.list": READ,
    "users.retrieve": READ,
    "users.update": OWNER,
    "users.delete": OWNER,
    "invites.list": READ,
    "invites.create": OWNER,
    "invites.retrieve": READ,
    "invites.delete": OWNER,
    "audit_logs.list": READ,
    # usage and costs (usage_api_routes, cost_routes): read by every member, as the Usage page
    "usage.completions": READ,
    "usage.embeddings": READ,
    "usage.moderations": READ,
    "usage.images": READ,
    "usage.audio_transcriptions": READ,
    "usage.audio_speeches": READ,
    "usage.vector_stores": READ,  # (tool_usage_routes)
    "usage.code_interpreter_sessions": READ,
    "costs.list": READ,
    # projects (project_routes, project_key_routes, service_account_routes, project_user_routes)
    "projects.list": READ,
    "projects.create": OWNER,
    "projects.retrieve": READ,
    "projects.update": PROJECT_ADMIN,
    "projects.archive": OWNER,
    "project_api_keys.list": READ,
    "project_api_keys.create": PROJECT_ADMIN | {Grant.PROJECT_MEMBER},
    "project_api_keys.retrieve": READ,
    "project_api_keys.delete": PROJECT_ADMIN | {Grant.KEY_OWNER},
    "project_api_keys.rotate": PROJECT_ADMIN | {Grant.KEY_OWNER},
    "project_api_keys.update": PROJECT_ADMIN,  # a member may not lift the restrictions on a key
    "project_service_accounts.list": READ,
    "project_service_accounts.create": PROJECT_ADMIN,
    "project_service_accounts.retrieve": READ,
    "project_service_accounts.delete": PROJECT_ADMIN,
    "project_users.list": READ,
    "project_users.create": PROJECT_ADMIN,
    "project_users.retrieve": READ,
    "project_users.update": PROJECT_ADMIN,
    "project_users.delete": PROJECT_ADMIN,
}

AUTHZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    403: {"description": "Your role does not allow this operation", "model": ErrorEnvelope},
    413: {"description": "The request body is too large", "model": ErrorEnvelope},
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "Conflicts with the current state", "model": ErrorEnvelope}
}


def permits(
    grants: frozenset[Grant],
    principal: Principal,
    *,
    project_role: ProjectRole | None = None,
    owns_key: bool = False,
) -> bool:
    """The rule itself, with no I/O: ``project_role`` is the principal's role in the project the
    operation names, ``owns_key`` whether they own the key it names."""
    if Grant.ORG_MEMBER in grants or (Grant.ORG_OWNER in grants and principal.is_owner):
        return True
    if project_role is None or principal.role is OrgRole.READER:
        # (BRIEF C1: a Reader changes no key, billing or limit: a project role adds nothing.)
        return False
    return (
        Grant.PROJECT_MEMBER in grants
        or (Grant.PROJECT_OWNER in grants and project_role is ProjectRole.OWNER)
        or (Grant.KEY_OWNER in grants and owns_key)
    )


# -- the services these routes reach ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OrgServices:
    orgs: OrgService
    audit: AuditService


def wire_org_services(services: AdminServices) -> OrgServices:
    """The composition root's organization and audit services."""
    container = cast(Any, services)
    return OrgServices(container.orgs, container.audit)


async def org_services(request: Request, ctx: Ctx) -> OrgServices:
    # Runs on the event loop (async), so two first requests cannot build two sets.
    found = getattr(request.app.state, "org_services", None)
    if not isinstance(found, OrgServices):
        found = wire_org_services(ctx.services)
        request.app.state.org_services = found
    return found


Services = Annotated[OrgServices, Depends(org_services)]


# -- the check ------------------------------------------------------------------------------------
def _forbidden(message: str) -> AdminApiError:
    return AdminApiError(ApiError(403, message, code="insufficient_permissions"))


def _decide(
    svc: OrgServices, principal: Principal, operation: str, path: Mapping[str, str]
) -> None:
    """Raises 403 unless ``POLICY`` lets the principal perform ``operation``. Blocking: it may
    read the principal's role in the project of the path, and the owner of the key of the path."""
    grants = POLICY.get(operation)
    if grants is None:
        log.error("refused %s: the operation has no entry in keyplane.web.authz.POLICY", operation)
        raise _forbidden(f"The operation '{operation}' is not allowed to anyone.")
    if permits(grants, principal):
        return
    project_id = path.get("project_id")
    project_role = None
    if project_id is not None:
        project_role = svc.orgs.project_role(principal.org_id, project_id, principal.user_id)
    owns_key = False
    if project_role is not None and Grant.KEY_OWNER in grants and "key_id" in path:
        try:
            key = svc.orgs.project_key(principal.org_id, str(project_id), path["key_id"])
            owns_key = key.owner_type == "user" and key.owner_id == principal.user_id
        except NotFound:
            owns_key = False
    if not permits(grants, principal, project_role=project_role, owns_key=owns_key):
        who = ", ".join(sorted(g.value for g in grants))
        raise _forbidden(
            f"Your role ({principal.role.value.capitalize()}) does not allow '{operation}'; "
            f"it needs: {who}."
        )


def _admin_key_principal(
    svc: OrgServices, caller: Caller, user_agent: str | None, operation: str, path: dict[str, str]
) -> Principal:
    key = caller.key
    member = svc.orgs.member(key.org_id, key.owner_id) if key.owner_type == "user" else None
    if member is None:
        raise _forbidden("This admin key's owner is no longer a member of the organization.")
    principal = Principal.of_admin_key(key, member, caller.client_ip, user_agent)
    _decide(svc, principal, operation, path)
    return principal


async def authorize(request: Request, caller: Admin, svc: Services) -> Principal:
    """The principal of an admin-key request, once ``POLICY`` allows it the route's operation
    (the route's ``name``). One worker-thread hop for the role and, if needed, project lookups."""
    operation = str(getattr(request.scope.get("route"), "name", ""))
    path = {k: str(v) for k, v in request.path_params.items()}
    user_agent = request.headers.get("user-agent")
    return await asyncio.to_thread(_admin_key_principal, svc, caller, user_agent, operation, path)


Allowed = Annotated[Principal, Depends(authorize)]


def admin_router(prefix: str = "/v1/organization") -> APIRouter:
    """A router of Admin API routes: ``authorize`` checks every one of them, and the OpenAPI
    document lists the refusals that check answers."""
    return APIRouter(prefix=prefix, responses=AUTHZ_RESPONSES, dependencies=[Depends(authorize)])


class Recorder:
    """The audit log, bound to the request's principal. Blocking: call it from the route's
    worker thread, in the unit of work of the change it records:
    ``with audit.atomic(): <the change>; audit(...)`` (``AuditService.atomic``)."""

    def __init__(self, audit: AuditService, principal: Principal) -> None:
        self._audit = audit
        self._principal = principal

    def atomic(self) -> AbstractContextManager[None]:
        return self._audit.atomic()

    def __call__(
        self,
        event_type: str,
        *,
        target_id: str | None = None,
        project_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self._audit.record(
            self._principal.org_id, self._principal.actor, event_type,
            target_id=target_id, project_id=project_id, details=details,
        )  # fmt: skip


async def recorder(svc: Services, principal: Allowed) -> Recorder:
    return Recorder(svc.audit, principal)


Audit = Annotated[Recorder, Depends(recorder)]
