"""Admin API for money: credit grants and balance, spend limits, spend alerts, billing settings.

Every route is scoped to the caller's organization: an id that belongs to another organization is
answered exactly like an id that does not exist (404). Service calls do blocking database I/O, so
each route runs its reads and writes in one worker thread (``asyncio.to_thread``) and keeps the
event loop free. Money changes end with ``on_money_change`` so this process's gateway enforces
them on the very next request instead of at its next poll.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query

from keyplane.audit.service import changed
from keyplane.billing.address import parse_address
from keyplane.billing.audit_details import budget_change
from keyplane.billing.periods import period_of
from keyplane.billing.ports import BillingSettings as SettingsRecord
from keyplane.billing.ports import SpendAlert as AlertRecord
from keyplane.billing.wallet import BillingMode, Lot
from keyplane.errors import Conflict, NotFound, StoreUnavailable
from keyplane.gateway.errors import ApiError
from keyplane.web.auth import Admin, AdminContext, AdminServices, Ctx
from keyplane.web.authz import AUTHZ_RESPONSES, CONFLICT, Audit, Recorder, authorize
from keyplane.web.errors import AdminApiError, params_named
from keyplane.web.schemas import (
    AutoRecharge,
    BillingAddress,
    BillingSettings,
    BillingSettingsUpdate,
    CreditBalance,
    CreditGrant,
    CreditGrantCreate,
    Deleted,
    EmailChannel,
    Enforcement,
    ErrorEnvelope,
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

log = logging.getLogger("keyplane.admin")
router = APIRouter(
    prefix="/v1/organization", responses=AUTHZ_RESPONSES, dependencies=[Depends(authorize)]
)

Limit = Annotated[int, Query(ge=1, le=100, description="Objects per page.")]
After = Annotated[
    str | None, Query(max_length=100, description="The last id of the previous page.")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="A replay returns the first result; reusing it with another body answers 409.",
    ),
]


async def applied(ctx: AdminContext) -> None:
    # The change is already stored; if the refresh cannot read it back now, the gateway's own poll
    # applies it shortly, so the caller still gets the stored object rather than a 503.
    try:
        await ctx.on_money_change()
    except StoreUnavailable:
        log.warning("money change stored; the gateway will apply it at its next poll")


def _require_project(s: AdminServices, org_id: str, project_id: str) -> None:
    # By id only: project names are not ids, and another organization's id is "not found".
    if not any(p.id == project_id for p in s.accounts.projects(org_id)):
        raise NotFound(f"No project '{project_id}' in this organization.", param="project_id")


# -- credits ----------------------------------------------------------------------------------
def _grants(s: AdminServices, org_id: str) -> list[CreditGrant]:
    return [CreditGrant.of(lot, note) for lot, note in s.money_store.lots(org_id)]


def _grant(s: AdminServices, org_id: str, grant_id: str) -> CreditGrant:
    found = next((g for g in _grants(s, org_id) if g.id == grant_id), None)
    if found is None:
        raise NotFound(f"No credit grant '{grant_id}'.", param="grant_id")
    return found


@router.get("/credit_balance", tags=["credits"], name="credit_balance.retrieve")
async def get_credit_balance(ctx: Ctx, caller: Admin) -> CreditBalance:
    """Available credit (live lots minus holds), open holds, all-time settled spend, every lot."""
    b = await asyncio.to_thread(ctx.services.billing.balance, caller.org_id)
    return CreditBalance(
        available_micro_usd=b.available,
        held_micro_usd=b.held,
        spent_micro_usd=b.spent,
        lots=[CreditGrant.of(lot, note) for lot, note in b.lots],
    )


@router.get("/credit_grants", tags=["credits"], name="credit_grants.list")
async def list_credit_grants(
    ctx: Ctx, caller: Admin, limit: Limit = 20, after: After = None
) -> ListPage[CreditGrant]:
    """Every credit lot, grants and purchases, oldest first."""
    grants = await asyncio.to_thread(_grants, ctx.services, caller.org_id)
    return page(grants, lambda g: g.id, limit=limit, after=after)


@router.post(
    "/credit_grants",
    tags=["credits"],
    name="credit_grants.create",
    responses={409: {"description": "Idempotency-Key reused", "model": ErrorEnvelope}},
)
async def create_credit_grant(
    ctx: Ctx,
    caller: Admin,
    audit: Audit,
    body: CreditGrantCreate,
    idempotency_key: IdempotencyKey = None,
) -> CreditGrant:
    """Adds a credit lot. A replay with the same Idempotency-Key answers 200 with the same grant."""
    names = {"amount": "amount_micro_usd", "expires_in": "expires_in_seconds"}

    def audited(lot: Lot) -> None:  # once, not again on a replay
        data = CreditGrant.of(lot, body.note).model_dump(
            include={"amount_micro_usd", "expires_at", "note"}
        )
        audit("credit_grant.created", target_id=lot.id, details={"data": data})

    try:
        with params_named(names):
            lot = await asyncio.to_thread(
                ctx.services.billing.grant,
                caller.org_id,
                body.amount_micro_usd,
                expires_in_s=body.expires_in_seconds,
                note=body.note,
                idempotency_key=idempotency_key,
                on_created=audited,
            )
    except Conflict as exc:  # the only conflict a grant has: a key reused with other parameters
        error = ApiError(409, exc.message, code="idempotency_key_reused", param="Idempotency-Key")
        raise AdminApiError(error) from None
    grant = CreditGrant.of(lot, body.note)
    await applied(ctx)
    return grant


@router.get("/credit_grants/{grant_id}", tags=["credits"], name="credit_grants.retrieve")
async def get_credit_grant(ctx: Ctx, caller: Admin, grant_id: str) -> CreditGrant:
    return await asyncio.to_thread(_grant, ctx.services, caller.org_id, grant_id)


@router.post("/credit_grants/{grant_id}/revoke", tags=["credits"], name="credit_grants.revoke")
async def revoke_credit_grant(ctx: Ctx, caller: Admin, audit: Audit, grant_id: str) -> CreditGrant:
    """Takes back what remains of a grant. Purchases are non-refundable (400)."""

    def revoke() -> CreditGrant:
        before = _grant(ctx.services, caller.org_id, grant_id)
        ctx.services.billing.revoke_grant(caller.org_id, grant_id)
        taken = {"remaining_micro_usd": before.remaining_micro_usd}
        audit("credit_grant.revoked", target_id=grant_id, details={"data": taken})
        return _grant(ctx.services, caller.org_id, grant_id)

    grant = await asyncio.to_thread(revoke)
    await applied(ctx)
    return grant


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
    with params_named({"recipients": "notification_channel.recipients"}):
        alert = s.billing.add_alert(
            org_id,
            cents_to_micro(body.threshold_amount),
            project_id=project_id,
            recipients=channel.recipients if channel and channel.recipients else None,
        )
    created = _alert(alert, _owner_emails(s, org_id))
    data = created.model_dump(include={"threshold_amount", "notification_channel"})
    audit("spend_alert.created", target_id=alert.id, project_id=project_id, details={"data": data})
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
    s.billing.delete_alert(org_id, alert_id)
    data = {"threshold_amount": micro_to_cents(found[0].threshold)}
    audit("spend_alert.deleted", target_id=alert_id, project_id=project_id, details={"data": data})
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


# -- billing settings (keyplane extension) ----------------------------------------------------
_SETTING_PARAMS = {
    "usage_limit": "usage_limit_micro_usd",
    "recharge_threshold": "auto_recharge.threshold_micro_usd",
    "recharge_target": "auto_recharge.target_micro_usd",
    "low_balance_alert": "low_balance_alert_micro_usd",
}


def _settings(s: AdminServices, record: SettingsRecord) -> BillingSettings:
    """The settings as the API answers them (``billing_settings.updated`` records the same
    fields: ``audit_details.settings_shown``)."""
    return BillingSettings(
        mode=record.mode.value,
        usage_limit_micro_usd=s.billing.effective_usage_limit(record),
        auto_recharge=AutoRecharge(
            enabled=record.auto_recharge,
            threshold_micro_usd=record.recharge_threshold,
            target_micro_usd=record.recharge_target,
        ),
        billing_email=record.billing_email,
        billing_address=None
        if record.billing_address is None
        else BillingAddress(**asdict(record.billing_address)),
        low_balance_alert_micro_usd=record.low_balance_alert,
    )


def _changes(body: BillingSettingsUpdate) -> dict[str, Any]:
    """The service's field names for what the body sets (absent fields stay as they are)."""
    changes: dict[str, Any] = {}
    if body.mode is not None:
        changes["mode"] = BillingMode(body.mode)
    if "usage_limit_micro_usd" in body.model_fields_set:
        changes["usage_limit"] = body.usage_limit_micro_usd
    recharge = body.auto_recharge
    if recharge is not None:
        if recharge.enabled is not None:
            changes["auto_recharge"] = recharge.enabled
        if "threshold_micro_usd" in recharge.model_fields_set:
            changes["recharge_threshold"] = recharge.threshold_micro_usd
        if "target_micro_usd" in recharge.model_fields_set:
            changes["recharge_target"] = recharge.target_micro_usd
    if "billing_email" in body.model_fields_set:
        changes["billing_email"] = body.billing_email
    if "billing_address" in body.model_fields_set:
        typed = body.billing_address
        changes["billing_address"] = None if typed is None else parse_address(typed.model_dump())
    if "low_balance_alert_micro_usd" in body.model_fields_set:
        changes["low_balance_alert"] = body.low_balance_alert_micro_usd
    return changes


@router.get("/billing_settings", tags=["billing"], name="billing_settings.retrieve")
async def get_billing_settings(ctx: Ctx, caller: Admin) -> BillingSettings:
    """Billing mode, this month's usage limit, the auto-recharge rule, the billing preferences and
    the low-balance alert."""
    s = ctx.services
    return _settings(s, await asyncio.to_thread(s.billing.settings, caller.org_id))


@router.post("/billing_settings", tags=["billing"], name="billing_settings.update")
async def update_billing_settings(
    ctx: Ctx, caller: Admin, audit: Audit, body: BillingSettingsUpdate
) -> BillingSettings:
    """Changes what the body names. Auto-recharge needs a threshold of $5-$95 and a target of
    $10-$100 above it; ``usage_limit_micro_usd: null`` restores the tier's; ``billing_email`` and
    ``billing_address`` (the whole address: country, line1 and city required) ``null`` remove
    them. ``low_balance_alert_micro_usd`` ($1 to $100,000, whole cents; ``null``: off) emails the
    billing email, else the Owners, once each time the credit balance falls below it."""
    s = ctx.services

    def write() -> SettingsRecord:
        before = _settings(s, s.billing.settings(caller.org_id)).model_dump()
        with params_named(_SETTING_PARAMS):
            record = s.billing.update_settings(caller.org_id, **_changes(body))
        details = changed(before, _settings(s, record).model_dump())
        if details["after"]:  # (a body that changes nothing records nothing)
            audit("billing_settings.updated", details=details)
        return record

    record = await asyncio.to_thread(write)
    await applied(ctx)
    return _settings(s, record)
