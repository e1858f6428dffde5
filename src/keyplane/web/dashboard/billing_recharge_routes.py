"""Billing → Overview's auto recharge (BRIEF C5; the guide says to turn it off), off by default:
Owners turn it on with its two amounts (under the threshold, buy back up to the target; a saved
card needed) and off with one button; and next to it the low-balance alert ("Email me when my
credit balance falls below $X", billing/low_balance.py), off by default too. Each change is
audited as the Admin API's ``billing_settings.updated``. A refused form shows the Overview again
(billing_routes.py) with what is wrong."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from keyplane.audit.service import changed
from keyplane.billing.amounts import parse_amount
from keyplane.billing.audit_details import settings_shown
from keyplane.errors import KeyplaneError, StoreUnavailable
from keyplane.usage.pricing import format_usd
from keyplane.web.dashboard.billing_pages import PATH, allowed
from keyplane.web.dashboard.billing_routes import overview
from keyplane.web.dashboard.session import CurrentMember, Field, Redirect, context, same_org
from keyplane.web.principal import Principal

router = APIRouter()
RECHARGE = PATH + "/auto-recharge"
LOW_BALANCE = PATH + "/low-balance-alert"


def _recharge_amounts(
    request: Request, org_id: str, threshold: str, target: str
) -> tuple[int, int] | dict[str, str]:
    """(threshold, target) in micro-dollars from the form, or what is wrong, by field ("form":
    no card to charge)."""
    services = context(request).services
    b = services.billing.recharge_bounds
    errors: dict[str, str] = {}
    amounts: dict[str, int] = {}
    for name, typed, low, high, what in (
        ("threshold", threshold, b.threshold_min, b.threshold_max, "the balance to recharge under"),
        ("target", target, b.target_min, b.target_max, "the balance to bring it back up to"),
    ):
        try:
            if not typed.strip():
                raise ValueError(f"Enter {what}, like {format_usd(low)}.")
            amounts[name] = parse_amount(typed, cents=True, minimum=low, maximum=high)
        except ValueError as exc:
            errors[name] = str(exc)
    if not errors and amounts["target"] <= amounts["threshold"]:
        errors["target"] = (
            f"The amount must be more than the threshold (${format_usd(amounts['threshold'])}): "
            "a recharge brings the balance back up to it."
        )
    if not services.payments.methods(org_id):
        errors["form"] = "Add a payment method first: auto recharge charges your default card."
    return errors or (amounts["threshold"], amounts["target"])


def _save_recharge(request: Request, principal: Principal, **changes: object) -> None:
    """Changes the rule (or the low-balance alert), audited as the Admin API's ``billing_settings.updated`` (with what
    changed, before and after; nothing recorded when nothing changed: a form sent twice)."""
    services = context(request).services
    org_id = principal.org_id
    billing = services.billing
    old = billing.settings(org_id)
    before = settings_shown(old, billing.effective_usage_limit(old))
    with services.audit.atomic():
        record = billing.update_settings(org_id, **changes)
        details = changed(before, settings_shown(record, billing.effective_usage_limit(record)))
        if details["after"]:
            services.audit.record(
                org_id, principal.actor, "billing_settings.updated", details=details
            )


@router.post(RECHARGE)
def set_auto_recharge(
    request: Request, viewer: CurrentMember, threshold: Field = "", target: Field = "",
    org_id: Field = "",
) -> Response:  # fmt: skip
    """Turns auto recharge on, or changes its amounts: whole dollars and cents within the bounds
    (BRIEF C5: below $5-$95, back up to $10-$100, above the threshold), with a saved card to
    charge. Owners only."""
    form_org = org_id
    principal = allowed(request, viewer, "billing_settings.update")
    same_org(viewer, form_org)
    amounts = _recharge_amounts(request, principal.org_id, threshold, target)
    if isinstance(amounts, dict):
        typed = {"threshold": threshold, "target": target}
        return overview(request, viewer, status=400, errors=amounts, typed=typed)
    try:
        _save_recharge(
            request, principal, auto_recharge=True, recharge_threshold=amounts[0],
            recharge_target=amounts[1],
        )  # fmt: skip
    except StoreUnavailable:
        raise
    except KeyplaneError as exc:  # (bounds the service checks too)
        typed = {"threshold": threshold, "target": target}
        return overview(request, viewer, status=400, errors={"form": exc.message}, typed=typed)
    raise Redirect(PATH + "#auto-recharge")


@router.post(RECHARGE + "/off")
def turn_off_auto_recharge(request: Request, viewer: CurrentMember, org_id: Field = "") -> Response:
    """Turns auto recharge off (its amounts are kept, to fill the form in again). Owners only."""
    form_org = org_id
    principal = allowed(request, viewer, "billing_settings.update")
    same_org(viewer, form_org)
    _save_recharge(request, principal, auto_recharge=False)
    raise Redirect(PATH + "#auto-recharge")


def _alert_amount(request: Request, typed: str) -> int | str:
    """The alert's threshold in micro-dollars from the form, or what is wrong with it."""
    b = context(request).services.billing.low_balance_bounds
    if not typed.strip():
        return f"Enter the balance to be emailed under, like {format_usd(10_000_000)}."
    try:
        return parse_amount(typed, cents=True, minimum=b.minimum, maximum=b.maximum)
    except ValueError as exc:
        return str(exc)


@router.post(LOW_BALANCE)
def set_low_balance_alert(
    request: Request, viewer: CurrentMember, amount: Field = "", org_id: Field = ""
) -> Response:
    """Turns the low-balance alert on, or changes its amount: whole dollars and cents from $1 to
    $100,000. Owners only."""
    form_org = org_id
    principal = allowed(request, viewer, "billing_settings.update")
    same_org(viewer, form_org)
    threshold = _alert_amount(request, amount)
    if isinstance(threshold, str):
        errors = {"low_balance": threshold}
        return overview(request, viewer, status=400, errors=errors, typed={"low_balance": amount})
    _save_recharge(request, principal, low_balance_alert=threshold)
    raise Redirect(PATH + "#low-balance-alert")


@router.post(LOW_BALANCE + "/off")
def turn_off_low_balance_alert(
    request: Request, viewer: CurrentMember, org_id: Field = ""
) -> Response:
    """Turns the low-balance alert off. Owners only."""
    form_org = org_id
    principal = allowed(request, viewer, "billing_settings.update")
    same_org(viewer, form_org)
    _save_recharge(request, principal, low_balance_alert=None)
    raise Redirect(PATH + "#low-balance-alert")
