"""The Billing page (BRIEF C5/C9, the guide's Billing overview): the credit balance, what requests
in flight hold, the credit lots it is made of (purchases and grants, each with its expiry), the
billing mode and the auto-recharge rule. Every member may see it (the Admin API's rule: billing is
read by Owners and Readers alike). Payments are recorded by an operator for now (``keyplane
credits purchase``); there is no payment provider to add a card to yet."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from keyplane.usage.pricing import format_usd
from keyplane.web.dashboard.session import CurrentMember, context, render

router = APIRouter()


@router.get("/billing")
def billing_page(request: Request, viewer: CurrentMember) -> Response:
    services = context(request).services
    org = viewer.org
    assert org is not None  # CurrentMember has one
    now = services.clock.now()
    balance = services.billing.balance(org.id)
    settings = services.billing.settings(org.id)
    lots = sorted(balance.lots, key=lambda pair: pair[0].created_at, reverse=True)
    rows = [
        (lot, note, "revoked" if lot.revoked else "active" if lot.live(now) else "expired")
        for lot, note in lots
    ]
    return render(
        request, "billing.html", viewer=viewer, usd=format_usd, balance=balance,
        settings=settings, rows=rows,
    )  # fmt: skip
