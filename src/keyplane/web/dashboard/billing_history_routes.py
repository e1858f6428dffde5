"""Billing → Billing history (``/billing/history``): every charge (declined ones with why), credit
grant, and refund or dispute of a charge (the credit it took back or gave back), newest first; a
refunded or disputed charge says so in its status; each paid charge has a receipt to download
(``/billing/history/{payment_id}/receipt``): one self-contained HTML document, to keep or print,
with the payment provider's id of the payment when it made one (Stripe's pi_…), billed to the
billing address the payment was made with (its copy), else to the organization's name."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.billing.declines import decline_message
from keyplane.billing.payment_ports import Adjustment, Payment
from keyplane.billing.reversals import CLOSED, standing
from keyplane.billing.wallet import Lot
from keyplane.errors import NotFound
from keyplane.usage.pricing import format_cents
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.billing_pages import PATH, card_label, render_billing
from keyplane.web.dashboard.session import CurrentMember, context

router = APIRouter()
HISTORY = PATH + "/history"
LINES = 100  # the billing history shows the latest lines
EVERY_LINE = 2**31 - 1  # (a SQL LIMIT: every charge)
# A receipt answered as a download; should a browser show it anyway, its inline style and nothing
# else applies (the dashboard's own policy allows stylesheets from the site only).
RECEIPT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
KINDS = {"purchase": "Credit purchase", "recharge": "Auto-recharge"}


@dataclass(frozen=True, slots=True)
class Line:
    """A line of the billing history: a charge, a credit grant, or a purchase recorded without a
    charge."""

    at: int
    description: str
    card: str  # "" when no card was charged
    amount: int
    # "Succeeded" (or what became of it: "Refunded", "Partially refunded", "Disputed", "Dispute
    # lost") | "Failed" | "Granted" | "Revoked" | "Recorded" | a refund's or a dispute's
    # "Credit taken back" | "Credit given back" | "No credit moved"
    status: str
    reason: str = ""  # why a charge was declined
    lot: Lot | None = None  # a grant's or a recorded purchase's (its expiry)
    note: str = ""  # a grant's; a recorded purchase's: that it was paid outside keyplane
    receipt: str = ""  # a succeeded charge's receipt
    detail: str = ""  # a refund's or a dispute's: of which charge, how much so far
    credit_change: int | None = None  # a refund's or a dispute's credit moved (< 0: taken back)


def _charge(p: Payment, adjustments: Sequence[Adjustment] = ()) -> Line:
    kind, card = KINDS.get(p.kind, p.kind), card_label(p)
    if p.status == "succeeded":
        receipt = f"{HISTORY}/{p.id}/receipt"
        status = standing(p.amount, adjustments).label or "Succeeded"
        return Line(p.created_at, kind, card, p.amount, status, receipt=receipt)
    declined = decline_message(p.failure) if p.failure else ""
    return Line(p.created_at, kind, card, p.amount, "Failed", declined)


ADJUSTED = {
    ("refund", True): "Refund",
    ("refund", False): "Refund failed",
    ("dispute", True): "Dispute opened",
    ("dispute", False): "Dispute closed",
}


def _adjustment(a: Adjustment, p: Payment) -> Line:
    """A refund's or a dispute's line: the credit it moved, and of which charge."""
    when = dt.datetime.fromtimestamp(p.created_at, dt.UTC)
    paid = (
        f"${format_cents(p.amount)} {KINDS.get(p.kind, p.kind).lower()} of "
        f"{when:%b} {when.day}, {when.year}"
    )
    if a.kind == "refund":
        description = ADJUSTED["refund", a.amount < 0]
        detail = f"${format_cents(a.total)} of the {paid} refunded"
    else:
        description = {"won": "Dispute won", "lost": "Dispute lost"}.get(
            a.status, ADJUSTED["dispute", a.status not in CLOSED]
        )
        detail = f"${format_cents(a.total)} of the {paid} disputed"
    status = (
        "Credit taken back"
        if a.amount < 0
        else "Credit given back"
        if a.amount
        else "No credit moved"
    )
    return Line(
        a.created_at, description, card_label(p), abs(a.amount), status, detail=detail,
        credit_change=a.amount,
    )  # fmt: skip


def _history(request: Request, org_id: str) -> list[Line]:
    """The charges and the credit lots no charge bought, newest first (the latest ``LINES``).
    Every charge is read (as many as the purchase lots the balance reads anyway): a purchase's
    lot is its charge's line, however old, and one recorded without a charge (``keyplane credits
    purchase``: paid outside keyplane) a line of its own."""
    services = context(request).services
    charges = services.payments.history(org_id, EVERY_LINE)
    bought = {p.lot_id for p in charges if p.lot_id}
    adjusted: dict[str, list[Adjustment]] = {}
    for a in services.payments.adjustments(org_id):
        adjusted.setdefault(a.payment_id, []).append(a)
    by_id = {p.id: p for p in charges}
    # Refunds and disputes first, the newest first: in a tie (the same second) each then shows
    # above what came before it, its charge included.
    lines = [
        _adjustment(a, by_id[a.payment_id])
        for a in sorted(
            itertools.chain.from_iterable(adjusted.values()),
            key=lambda a: (a.created_at, a.id), reverse=True,
        )
        if (a.amount or a.status in CLOSED) and a.payment_id in by_id
    ]  # fmt: skip
    lines += [_charge(p, adjusted.get(p.id, ())) for p in charges]
    for lot, note in services.billing.balance(org_id).lots:
        if lot.id in bought:
            continue
        if lot.kind == "grant":
            status = "Revoked" if lot.revoked else "Granted"
            line = Line(lot.created_at, "Credit grant", "", lot.amount, status, lot=lot, note=note)
        else:  # (its note is "Credit purchase")
            line = Line(
                lot.created_at, "Credit purchase", "", lot.amount, "Recorded", lot=lot,
                note="paid outside keyplane",
            )  # fmt: skip
        lines.append(line)
    lines.sort(key=lambda line: line.at, reverse=True)  # (stable: a charge first in a tie)
    return lines[:LINES]


@router.get(HISTORY)
def history_page(request: Request, viewer: CurrentMember) -> Response:
    principal = principal_of(request, viewer)
    if not may(request, principal, "billing_history.list", None):
        raise HTTPException(403)
    lines = _history(request, principal.org_id)
    return render_billing(
        request, viewer, "billing_history.html", section=HISTORY, lines=lines,
        now=context(request).services.clock.now(),
    )  # fmt: skip


@router.get(HISTORY + "/{payment_id}/receipt")
def receipt(request: Request, viewer: CurrentMember, payment_id: str) -> Response:
    """A succeeded charge's receipt, a file to keep or print: one HTML document with nothing to
    fetch (its style inline), so it reads the same offline, years later. Whoever may read the
    history may download it; a declined charge has none (404)."""
    principal = principal_of(request, viewer)
    if not may(request, principal, "billing_history.list", None):
        raise HTTPException(403)
    services = context(request).services
    try:
        payment = services.payments.payment(principal.org_id, payment_id)
    except NotFound:
        raise HTTPException(404) from None
    if payment.status != "succeeded" or payment.lot_id is None:
        raise HTTPException(404)
    lots = services.billing.balance(principal.org_id).lots
    lot = next((lot for lot, _ in lots if lot.id == payment.lot_id), None)
    adjustments = services.payments.adjustments(principal.org_id, payment.id)
    org = viewer.org
    assert org is not None  # CurrentMember has one
    document = context(request).templates.get_template("billing_receipt.html").render(
        org=org, payment=payment, lot=lot, description=KINDS.get(payment.kind, payment.kind),
        card=card_label, standing=standing(payment.amount, adjustments),
    )  # fmt: skip
    return Response(
        document,
        media_type="text/html; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="keyplane-receipt-{payment.id}.html"',
            "content-security-policy": RECEIPT_CSP,
        },
    )
