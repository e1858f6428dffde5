"""The Limits page (BRIEF C6/C9, the guide's "Limits" screen): the usage tier and what moves it
up ("Increasing your limits"), the monthly usage limit, the organization's monthly budget and
notification thresholds (Owners change them here, as with the Admin API), and the per-model
rate limits of the tier.

Changes go through the same services and audit events as the Admin API's (``spend_limit.updated``,
``spend_alert.created`` / ``.deleted``); the gateway applies them within its poll interval. The
budget's field shows the budget; removing it is a button of its own (Remove budget), never an
empty field saved by mistake."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.accounts.models import OrgRole
from keyplane.audit.models import Actor
from keyplane.billing.amounts import parse_amount
from keyplane.billing.audit_details import budget_change
from keyplane.billing.periods import period_of
from keyplane.errors import KeyplaneError, StoreUnavailable
from keyplane.limits.tiers import DEFAULT_ROW
from keyplane.usage.pricing import MICRO_PER_CENT
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
from keyplane.web.schemas import micro_to_cents

router = APIRouter()
PATH = "/limits"


def _page(request: Request, viewer: Viewer, *, status: int = 200, **values: object) -> Response:
    services = context(request).services
    org = viewer.org
    assert org is not None  # CurrentMember has one
    settings = services.billing.settings(org.id)
    spent, _ = services.money_store.month_spend(org.id, period_of(services.clock.now()))
    progress = services.promoter.progress(org.id)
    # (An alert without recipients of its own goes to the billing email, else to the Owners.)
    owners = services.billing.billing_emails(org.id, services.accounts.owner_emails)
    alerts = sorted(
        (a for a in services.billing.alerts(org.id) if a.project_id is None),
        key=lambda a: a.threshold,
    )
    limits = progress.current.limits
    rows = [(model, limits[model]) for model in sorted(limits) if model != DEFAULT_ROW]
    if DEFAULT_ROW in limits:
        rows.append(("Other models", limits[DEFAULT_ROW]))
    return render(
        request, "limits.html", status=status, viewer=viewer, spent=spent,
        budget=settings.budget, usage_limit=services.billing.effective_usage_limit(settings),
        manual_limit=settings.usage_limit is not None,
        progress=progress, alerts=alerts, owners=owners, rows=rows,
        is_owner=viewer.role is OrgRole.OWNER, **values,
    )  # fmt: skip


@router.get(PATH)
def limits_page(request: Request, viewer: CurrentMember) -> Response:
    return _page(request, viewer)


def _owner_actor(request: Request, viewer: Viewer, operation: str) -> tuple[str, Actor]:
    """The organization and the acting user, once ``POLICY`` allows ``operation`` (Owners only:
    Readers see, never change)."""
    principal = principal_of(request, viewer)
    if not may(request, principal, operation, None):
        raise HTTPException(403, "Only the organization's Owners change its limits.")
    return principal.org_id, principal.actor


@router.post(PATH + "/budget")
def set_budget(
    request: Request, viewer: CurrentMember, amount: Field = "", org_id: Field = ""
) -> Response:
    """The monthly budget in dollars (whole cents). An empty field is refused, not taken to mean
    "no budget": the field shows the budget, and one click on Save must not delete it (Remove
    budget does, on purpose)."""
    form_org = org_id
    org_id, actor = _owner_actor(request, viewer, "spend_limit.update")
    same_org(viewer, form_org)
    try:
        if not amount.strip():
            raise ValueError(
                "Enter the monthly budget, like 50 or 12.50 (to have none, use Remove budget)."
            )
        budget = parse_amount(amount, cents=True)
    except ValueError as exc:
        return _page(request, viewer, status=400, error=form_error(exc), typed_budget=amount)
    return _save_budget(request, viewer, org_id, actor, budget, typed=amount)


@router.post(PATH + "/budget/remove")
def remove_budget(request: Request, viewer: CurrentMember, org_id: Field = "") -> Response:
    """No monthly budget any more (the usage limit and the credit balance still stop spending):
    audited as the Admin API's ``spend_limit.updated`` to none."""
    form_org = org_id
    org_id, actor = _owner_actor(request, viewer, "spend_limit.update")
    same_org(viewer, form_org)
    return _save_budget(request, viewer, org_id, actor, None, typed="")


def _save_budget(
    request: Request, viewer: Viewer, org_id: str, actor: Actor, budget: int | None, *, typed: str
) -> Response:
    services = context(request).services
    try:
        before = services.billing.settings(org_id).budget
        with services.audit.atomic():
            services.billing.update_settings(org_id, budget=budget)
            services.audit.record(
                org_id, actor, "spend_limit.updated", details=budget_change(before, budget)
            )
    except StoreUnavailable:
        raise  # (the 503 page: not a mistake in the form)
    except KeyplaneError as exc:
        return _page(request, viewer, status=400, error=form_error(exc), typed_budget=typed)
    raise Redirect(PATH)


@router.post(PATH + "/alerts")
def add_alert(
    request: Request, viewer: CurrentMember, amount: Field = "", org_id: Field = ""
) -> Response:
    """A notification threshold in dollars (whole cents): the Owners get an email the first time
    this month's spend reaches it."""
    form_org = org_id
    org_id, actor = _owner_actor(request, viewer, "spend_alerts.create")
    same_org(viewer, form_org)
    services = context(request).services
    try:
        threshold = parse_amount(amount, cents=True, minimum=MICRO_PER_CENT)
        with services.audit.atomic():
            alert = services.billing.add_alert(org_id, threshold, project_id=None, recipients=None)
            services.audit.record(
                org_id, actor, "spend_alert.created", target_id=alert.id,
                details={"data": {"threshold_amount": micro_to_cents(threshold)}},
            )  # fmt: skip
    except StoreUnavailable:
        raise
    except (ValueError, KeyplaneError) as exc:
        return _page(request, viewer, status=400, error=form_error(exc), typed_alert=amount)
    raise Redirect(PATH)


@router.post(PATH + "/alerts/{alert_id}/delete")
def delete_alert(request: Request, viewer: CurrentMember, alert_id: str) -> Response:
    org_id, actor = _owner_actor(request, viewer, "spend_alerts.delete")
    services = context(request).services
    found = [
        a for a in services.billing.alerts(org_id) if a.id == alert_id and a.project_id is None
    ]
    if not found:
        raise HTTPException(404)
    with services.audit.atomic():
        services.billing.delete_alert(org_id, alert_id)
        services.audit.record(
            org_id, actor, "spend_alert.deleted", target_id=alert_id,
            details={"data": {"threshold_amount": micro_to_cents(found[0].threshold)}},
        )  # fmt: skip
    raise Redirect(PATH)
