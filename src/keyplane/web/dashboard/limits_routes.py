"""The Limits page (BRIEF C6/C9, the guide's "Limits" screen): the usage tier and what moves it
up ("Increasing your limits"), the monthly usage limit, the organization's monthly budget and
notification thresholds (Owners change them here, as with the Admin API), and the per-model
rate limits of the tier.

Changes go through the same services and audit events as the Admin API's (``spend_limit.updated``,
``spend_alert.created`` / ``.deleted``); the gateway applies them within its poll interval."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.accounts.models import OrgRole
from keyplane.audit.models import Actor, ActorType
from keyplane.billing.amounts import parse_amount
from keyplane.billing.periods import period_of
from keyplane.errors import KeyplaneError
from keyplane.limits.tiers import DEFAULT_ROW
from keyplane.usage.pricing import MICRO_PER_CENT, format_usd
from keyplane.web.dashboard.session import (
    CurrentMember,
    Redirect,
    Viewer,
    client_ip,
    context,
    render,
    same_org,
)

router = APIRouter()
PATH = "/limits"
Field = Annotated[str, Form()]


def _page(request: Request, viewer: Viewer, *, status: int = 200, **values: object) -> Response:
    services = context(request).services
    org = viewer.org
    assert org is not None  # CurrentMember has one
    settings = services.billing.settings(org.id)
    spent, _ = services.money_store.month_spend(org.id, period_of(services.clock.now()))
    progress = services.promoter.progress(org.id)
    owners = [u.email for u in services.accounts.owners(org.id)]
    alerts = sorted(
        (a for a in services.billing.alerts(org.id) if a.project_id is None),
        key=lambda a: a.threshold,
    )
    limits = progress.current.limits
    rows = [(model, limits[model]) for model in sorted(limits) if model != DEFAULT_ROW]
    if DEFAULT_ROW in limits:
        rows.append(("Other models", limits[DEFAULT_ROW]))
    return render(
        request, "limits.html", status=status, viewer=viewer, usd=format_usd, spent=spent,
        budget=settings.budget, usage_limit=services.billing.effective_usage_limit(settings),
        manual_limit=settings.usage_limit is not None,
        progress=progress, alerts=alerts, owners=owners, rows=rows,
        is_owner=viewer.role is OrgRole.OWNER, **values,
    )  # fmt: skip


@router.get(PATH)
def limits_page(request: Request, viewer: CurrentMember) -> Response:
    return _page(request, viewer)


def _owner_actor(request: Request, viewer: Viewer) -> tuple[str, Actor]:
    """The organization and the acting Owner; 403 for anyone else (Readers see, never change)."""
    org = viewer.org
    if org is None or viewer.role is not OrgRole.OWNER:
        raise HTTPException(403, "Only the organization's Owners change its limits.")
    actor = Actor(
        ActorType.SESSION, viewer.session_ref, user_id=viewer.user.id, email=viewer.user.email,
        ip_address=client_ip(request), user_agent=request.headers.get("user-agent"),
    )  # fmt: skip
    return org.id, actor


def _cents(micros: int | None) -> int | None:
    return None if micros is None else micros // MICRO_PER_CENT


@router.post(PATH + "/budget")
def set_budget(
    request: Request, viewer: CurrentMember, amount: Field = "", org_id: Field = ""
) -> Response:
    """The monthly budget in dollars (whole cents); empty removes it."""
    form_org = org_id
    org_id, actor = _owner_actor(request, viewer)
    same_org(viewer, form_org)
    services = context(request).services
    try:
        budget = parse_amount(amount, cents=True) if amount.strip() else None
        before = services.billing.settings(org_id).budget
        services.billing.update_settings(org_id, budget=budget)
    except (ValueError, KeyplaneError) as exc:
        message = exc.message if isinstance(exc, KeyplaneError) else str(exc)
        return _page(request, viewer, status=400, error=message, typed_budget=amount)
    services.audit.record(
        org_id, actor, "spend_limit.updated",
        details={"before": {"threshold_amount": _cents(before)},
                 "after": {"threshold_amount": _cents(budget)}},
    )  # fmt: skip
    raise Redirect(PATH)


@router.post(PATH + "/alerts")
def add_alert(
    request: Request, viewer: CurrentMember, amount: Field = "", org_id: Field = ""
) -> Response:
    """A notification threshold in dollars (whole cents): the Owners get an email the first time
    this month's spend reaches it."""
    form_org = org_id
    org_id, actor = _owner_actor(request, viewer)
    same_org(viewer, form_org)
    services = context(request).services
    try:
        threshold = parse_amount(amount, cents=True)
        alert = services.billing.add_alert(org_id, threshold, project_id=None, recipients=None)
    except (ValueError, KeyplaneError) as exc:
        message = exc.message if isinstance(exc, KeyplaneError) else str(exc)
        return _page(request, viewer, status=400, error=message, typed_alert=amount)
    services.audit.record(
        org_id, actor, "spend_alert.created", target_id=alert.id,
        details={"data": {"threshold_amount": _cents(threshold)}},
    )  # fmt: skip
    raise Redirect(PATH)


@router.post(PATH + "/alerts/{alert_id}/delete")
def delete_alert(request: Request, viewer: CurrentMember, alert_id: str) -> Response:
    org_id, actor = _owner_actor(request, viewer)
    services = context(request).services
    found = [
        a for a in services.billing.alerts(org_id) if a.id == alert_id and a.project_id is None
    ]
    if not found:
        raise HTTPException(404)
    services.billing.delete_alert(org_id, alert_id)
    services.audit.record(
        org_id, actor, "spend_alert.deleted", target_id=alert_id,
        details={"data": {"threshold_amount": _cents(found[0].threshold)}},
    )  # fmt: skip
    raise Redirect(PATH)
