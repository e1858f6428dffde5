"""Billing → Overview (``/billing``; the other Billing pages: billing_pages.py): the credit
balance, what requests in flight hold, the credit lots it is made of (purchases and grants, each
with its expiry), the billing mode and the auto-recharge rule (its form:
billing_recharge_routes.py), and "Add to credit balance" (billing_purchase_routes.py), which comes
back here with the new balance."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from keyplane.billing.wallet import Lot
from keyplane.usage.pricing import format_usd
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.billing_pages import PATH, card_label, render_billing
from keyplane.web.dashboard.money import usd_left
from keyplane.web.dashboard.session import CurrentMember, Viewer, context

router = APIRouter()


@router.get(PATH)
def billing_page(request: Request, viewer: CurrentMember, paid: str = "") -> Response:
    """``paid``: the payment just made (Confirm payment leads here), said in a notice."""
    services = context(request).services
    org_id = principal_of(request, viewer).org_id
    notice = None
    if paid:
        payment = next((p for p in services.payments.history(org_id, 20) if p.id == paid), None)
        if payment is not None and payment.status == "succeeded":
            available = services.billing.balance(org_id).available
            notice = (
                f"Payment of ${format_usd(payment.amount)} charged to {card_label(payment)}: "
                f"your credit balance is now ${usd_left(available)}."
            )
    return overview(request, viewer, notice=notice)


def overview(
    request: Request, viewer: Viewer, *, status: int = 200, notice: str | None = None,
    errors: dict[str, str] | None = None, typed: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    """The Overview; ``errors`` and ``typed``: the auto-recharge or the low-balance alert form
    refused (by field)."""
    services = context(request).services
    principal = principal_of(request, viewer)
    org_id = principal.org_id
    now = services.clock.now()
    balance = services.billing.balance(org_id)
    settings = services.billing.settings(org_id)
    lots = sorted(balance.lots, key=lambda pair: pair[0].created_at, reverse=True)
    rows = [(lot, note, _lot_status(lot, now)) for lot, note in lots]
    methods = services.payments.methods(org_id)
    return render_billing(
        request, viewer, "billing.html", status=status, section=PATH, balance=balance,
        settings=settings, rows=rows, notice=notice,
        can_pay=may(request, principal, "credit_purchases.create", None),
        can_recharge=may(request, principal, "billing_settings.update", None),
        recharge_card=methods[0] if methods else None, bounds=services.billing.recharge_bounds,
        alert_bounds=services.billing.low_balance_bounds,
        recharge_attempts=services.payments.max_recharge_attempts, errors=errors or {},
        typed=typed or {},
    )  # fmt: skip


def _lot_status(lot: Lot, now: float) -> str:
    """A lot below zero (a refund or a dispute took back credit already spent) is "in debt",
    expired or not: it counts in the balance until credit added pays it."""
    if lot.remaining < 0:
        return "in debt"
    return "revoked" if lot.revoked else "active" if lot.live(now) else "expired"
