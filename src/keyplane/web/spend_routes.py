"""Admin API for spend controls, in OpenAI's shapes (amounts in cents): the hard monthly spend
limits (the organization's and each project's) and the spend alerts (email notification
thresholds, the organization's and each project's).

Scoped, threaded and applied to the gateway as every money route is (``keyplane.web.money``).
"""

from __future__ import annotations

import asyncio

from keyplane.billing.audit_details import budget_change
from keyplane.billing.periods import period_of
from keyplane.billing.ports import SpendAlert as AlertRecord
from keyplane.errors import NotFound
from keyplane.web.auth import Admin, AdminContext, AdminServices, Ctx
from keyplane.web.authz import CONFLICT, Audit, Recorder, admin_router
from keyplane.web.errors import params_named
from keyplane.web.money import applied
from keyplane.web.params import After, Limit
from keyplane.web.schemas import (
    Deleted,
    EmailChannel,
    Enforcement,
    ListPage,
    SpendAlert,
    SpendAlertCreate,
    SpendLimit,
    SpendLimitKind,
    SpendLimitSet,
    cents_to_micro,
    micro_to_cents,
    page,
)

router = admin_router()


def _require_project(s: AdminServices, org_id: str, project_id: str) -> None:
    # By id only: project names are not ids, and another organization's id is "not found".
    if not any(p.id == project_id for p in s.accounts.projects(org_id)):
        raise NotFound(f"No project '{project_id}' in this organization.", param="project_id")


# -- spend limits (hard monthly budgets) ------------------------------------------------------
def _limit(kind: SpendLimitKind, budget: int | None, spent: int) -> SpendLimit:
    enforcing = budget is not None and spent >= budget
    return SpendLimit(
        object=kind,
        threshold_amount=None if budget is None else micro_to_cents(budget),
        enforcement=Enforcement(status="enforcing" if enforcing else "inactive"),
    )


def _org_limit(s: AdminServices, org_id: str) -> SpendLimit:
    budget = s.billing.settings(org_id).budget
    spent, _ = s.money_store.month_spend(org_id, period_of(s.clock.now()))
    return _limit("organization.spend_limit", budget, spent)


def _project_limit(s: AdminServices, org_id: str, project_id: str) -> SpendLimit:
    budget = s.billing.project_budget(project_id)
    _, per_project = s.money_store.month_spend(org_id, period_of(s.clock.now()))
    return _limit("organization.project.spend_limit", budget, per_project.get(project_id, 0))


async def _set_org_limit(
    ctx: AdminContext, audit: Recorder, org_id: str, amount: int | None
) -> SpendLimit:
    def write() -> SpendLimit:
        before = ctx.services.billing.settings(org_id).budget
        with audit.atomic():
            with params_named({"budget": "threshold_amount"}):
                ctx.services.billing.update_settings(org_id, budget=amount)
            audit("spend_limit.updated", details=budget_change(before, amount))
        return _org_limit(ctx.services, org_id)

    limit = await asyncio.to_thread(write)
    await applied(ctx)
    return limit


async def _set_project_limit(
    ctx: AdminContext, audit: Recorder, org_id: str, project_id: str, amount: int | None
) -> SpendLimit:
    def write() -> SpendLimit:
        _require_project(ctx.services, org_id, project_id)
        before = ctx.services.billing.project_budget(project_id)
        with audit.atomic():
            ctx.services.billing.set_project_budget(org_id, project_id, amount)
            audit(
                "spend_limit.updated",
                target_id=project_id,
                project_id=project_id,
                details=budget_change(before, amount),
            )
        return _project_limit(ctx.services, org_id, project_id)

    limit = await asyncio.to_thread(write)
    await applied(ctx)
    return limit


@router.get("/spend_limit", tags=["limits"], name="spend_limit.retrieve")
async def get_spend_limit(ctx: Ctx, caller: Admin) -> SpendLimit:
    """The organization's monthly hard limit in cents; ``enforcing`` once this month's settled
    spend has reached it (requests then get 429 ``organization_spend_limit_exceeded``)."""
    return await asyncio.to_thread(_org_limit, ctx.services, caller.org_id)


@router.post("/spend_limit", tags=["limits"], name="spend_limit.update")
async def set_spend_limit(ctx: Ctx, caller: Admin, audit: Audit, body: SpendLimitSet) -> SpendLimit:
    """Sets the limit; the gateway applies it to the next request."""
    return await _set_org_limit(ctx, audit, caller.org_id, cents_to_micro(body.threshold_amount))


@router.delete("/spend_limit", tags=["limits"], name="spend_limit.delete")
async def delete_spend_limit(ctx: Ctx, caller: Admin, audit: Audit) -> SpendLimit:
    """Removes the limit and answers the limit as it now is (``threshold_amount: null``)."""
    return await _set_org_limit(ctx, audit, caller.org_id, None)


@router.get(
    "/projects/{project_id}/spend_limit", tags=["limits"], name="project_spend_limit.retrieve"
)
async def get_project_spend_limit(ctx: Ctx, caller: Admin, project_id: str) -> SpendLimit:
    def read() -> SpendLimit:
        _require_project(ctx.services, caller.org_id, project_id)
        return _project_limit(ctx.services, caller.org_id, project_id)

    return await asyncio.to_thread(read)


@router.post(
    "/projects/{project_id}/spend_limit", tags=["limits"], name="project_spend_limit.update"
)
async def set_project_spend_limit(
    ctx: Ctx, caller: Admin, audit: Audit, project_id: str, body: SpendLimitSet
) -> SpendLimit:
    amount = cents_to_micro(body.threshold_amount)
    return await _set_project_limit(ctx, audit, caller.org_id, project_id, amount)


@router.delete(
    "/projects/{project_id}/spend_limit", tags=["limits"], name="project_spend_limit.delete"
)
async def delete_project_spend_limit(
    ctx: Ctx, caller: Admin, audit: Audit, project_id: str
) -> SpendLimit:
    return await _set_project_limit(ctx, audit, caller.org_id, project_id, None)


# -- spend alerts (notification thresholds) ---------------------------------------------------
def _alert(alert: AlertRecord, owners: list[str]) -> SpendAlert:
    return SpendAlert(
        id=alert.id,
        threshold_amount=micro_to_cents(alert.threshold),
        project_id=alert.project_id,
        notification_channel=EmailChannel(recipients=list(alert.recipients or owners)),
    )


def _owner_emails(s: AdminServices, org_id: str) -> list[str]:
    """Who an alert without recipients of its own emails: the billing email, else the Owners."""
    return s.billing.billing_emails(org_id, s.accounts.owner_emails)


def _alerts(s: AdminServices, org_id: str, project_id: str | None) -> list[SpendAlert]:
    """The organization's own alerts (project_id None) or one project's."""
    if project_id is not None:
        _require_project(s, org_id, project_id)
    alerts = [a for a in s.billing.alerts(org_id) if a.project_id == project_id]
    owners = _owner_emails(s, org_id) if any(a.recipients is None for a in alerts) else []
    return [_alert(a, owners) for a in alerts]


def _add_alert(
    s: AdminServices,
    audit: Recorder,
    org_id: str,
    project_id: str | None,
    body: SpendAlertCreate,
) -> SpendAlert:
    if project_id is not None:
        _require_project(s, org_id, project_id)
    channel = body.notification_channel
    with audit.atomic():
        with params_named({"recipients": "notification_channel.recipients"}):
            alert = s.billing.add_alert(
                org_id,
                cents_to_micro(body.threshold_amount),
                project_id=project_id,
                recipients=channel.recipients if channel and channel.recipients else None,
            )
        created = _alert(alert, _owner_emails(s, org_id))
        data = created.model_dump(include={"threshold_amount", "notification_channel"})
        audit(
            "spend_alert.created", target_id=alert.id, project_id=project_id,
            details={"data": data},
        )  # fmt: skip
    return created


def _delete_alert(
    s: AdminServices, audit: Recorder, org_id: str, project_id: str | None, alert_id: str
) -> Deleted:
    if project_id is not None:
        _require_project(s, org_id, project_id)
    # Deleting through the organization's path reaches only its own alerts, a project's path only
    # that project's: an id from elsewhere is not found.
    found = [a for a in s.billing.alerts(org_id) if a.id == alert_id and a.project_id == project_id]
    if not found:
        raise NotFound(f"No spend alert '{alert_id}'.", param="alert_id")
    data = {"threshold_amount": micro_to_cents(found[0].threshold)}
    with audit.atomic():
        s.billing.delete_alert(org_id, alert_id)
        audit(
            "spend_alert.deleted", target_id=alert_id, project_id=project_id,
            details={"data": data},
        )  # fmt: skip
    return Deleted(object="organization.spend_alert.deleted", id=alert_id)


@router.get("/spend_alerts", tags=["limits"], name="spend_alerts.list")
async def list_spend_alerts(
    ctx: Ctx, caller: Admin, limit: Limit = 20, after: After = None
) -> ListPage[SpendAlert]:
    """The organization-wide alerts (each project's are under its own path)."""
    alerts = await asyncio.to_thread(_alerts, ctx.services, caller.org_id, None)
    return page(alerts, lambda a: a.id, limit=limit, after=after)


@router.post("/spend_alerts", tags=["limits"], name="spend_alerts.create", responses=CONFLICT)
async def create_spend_alert(
    ctx: Ctx, caller: Admin, audit: Audit, body: SpendAlertCreate
) -> SpendAlert:
    """An email the first time this month's spend reaches the threshold (cents); recipients
    default to the organization's Owners. Traffic continues after an alert."""
    return await asyncio.to_thread(_add_alert, ctx.services, audit, caller.org_id, None, body)


@router.delete("/spend_alerts/{alert_id}", tags=["limits"], name="spend_alerts.delete")
async def delete_spend_alert(ctx: Ctx, caller: Admin, audit: Audit, alert_id: str) -> Deleted:
    return await asyncio.to_thread(
        _delete_alert, ctx.services, audit, caller.org_id, None, alert_id
    )


@router.get(
    "/projects/{project_id}/spend_alerts", tags=["limits"], name="project_spend_alerts.list"
)
async def list_project_spend_alerts(
    ctx: Ctx, caller: Admin, project_id: str, limit: Limit = 20, after: After = None
) -> ListPage[SpendAlert]:
    alerts = await asyncio.to_thread(_alerts, ctx.services, caller.org_id, project_id)
    return page(alerts, lambda a: a.id, limit=limit, after=after)


@router.post(
    "/projects/{project_id}/spend_alerts",
    tags=["limits"],
    name="project_spend_alerts.create",
    responses=CONFLICT,
)
async def create_project_spend_alert(
    ctx: Ctx, caller: Admin, audit: Audit, project_id: str, body: SpendAlertCreate
) -> SpendAlert:
    return await asyncio.to_thread(_add_alert, ctx.services, audit, caller.org_id, project_id, body)


@router.delete(
    "/projects/{project_id}/spend_alerts/{alert_id}",
    tags=["limits"],
    name="project_spend_alerts.delete",
)
async def delete_project_spend_alert(
    ctx: Ctx, caller: Admin, audit: Audit, project_id: str, alert_id: str
) -> Deleted:
    return await asyncio.to_thread(
        _delete_alert, ctx.services, audit, caller.org_id, project_id, alert_id
    )
