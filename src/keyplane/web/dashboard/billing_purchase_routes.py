"""Billing → Overview's "Add to credit balance" (``/billing/purchase``): Configure payment (an
amount within the purchase bounds, the payment method to charge), then Confirm payment, then back
to the Overview with the new balance. Owners only.

Configure payment gives the purchase a one-time id, carried by Confirm payment's address and form
as the purchase's idempotency key: sending the form again (a double click, a reload, Back to
Confirm payment and Confirm again) never charges twice; a new purchase starts from Configure
payment."""

from __future__ import annotations

import re
import secrets

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.billing.amounts import parse_amount
from keyplane.billing.declines import PaymentFailed
from keyplane.billing.payment_ports import PaymentMethod
from keyplane.errors import IdempotencyKeyReused, KeyplaneError, NotFound, StoreUnavailable
from keyplane.web.dashboard.billing_pages import PATH, allowed, render_billing
from keyplane.web.dashboard.session import (
    CurrentMember,
    Field,
    Redirect,
    Viewer,
    context,
    form_error,
    same_org,
)

router = APIRouter()
PURCHASE = PATH + "/purchase"
FORM_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _configure(
    request: Request, viewer: Viewer, *, status: int = 200, error: str | None = None,
    amount: str = "", method_id: str = "",
) -> Response:  # fmt: skip
    """The Configure payment form (sent with GET to the Confirm payment page), with a new one-time
    id for the purchase each time it is shown."""
    services = context(request).services
    org = viewer.org
    assert org is not None  # CurrentMember has one
    methods = services.payments.methods(org.id)
    chosen = method_id if any(m.id == method_id for m in methods) else ""
    return render_billing(
        request, viewer, "billing_purchase.html", status=status, error=error, methods=methods,
        chosen=chosen or (methods[0].id if methods else ""), typed_amount=amount,
        bounds=services.payments.bounds, form_id=secrets.token_urlsafe(16),
    )  # fmt: skip


def _order(request: Request, org_id: str, amount: str, method_id: str) -> tuple[int, PaymentMethod]:
    """The amount (micro-dollars, within the bounds) and the saved method a purchase form asks
    for. Raises ValueError or KeyplaneError, saying what is wrong."""
    payments = context(request).services.payments
    if not amount.strip():
        raise ValueError("Enter the amount to add to your credit balance.")
    bounds = payments.bounds
    micros = parse_amount(amount, cents=True, minimum=bounds.minimum, maximum=bounds.maximum)
    payments.check_amount(micros)
    if not payments.methods(org_id):
        raise ValueError("Add a payment method first.")
    try:
        return micros, payments.method(org_id, method_id)
    except NotFound:
        raise ValueError("Choose one of your payment methods.") from None


@router.get(PURCHASE)
def purchase_page(
    request: Request, viewer: CurrentMember, amount: str = "", payment_method: str = ""
) -> Response:
    """Configure payment; ``amount`` and ``payment_method`` fill it in again (Back)."""
    allowed(request, viewer, "credit_purchases.create")
    return _configure(request, viewer, amount=amount, method_id=payment_method)


@router.get(PURCHASE + "/confirm")
def confirm_page(
    request: Request, viewer: CurrentMember, amount: str = "", payment_method: str = "",
    form_id: str = "",
) -> Response:  # fmt: skip
    """Confirm payment: what is charged to which card, nothing yet; its form carries the purchase's
    id from Configure payment (a new one if the address has none)."""
    principal = allowed(request, viewer, "credit_purchases.create")
    try:
        micros, method = _order(request, principal.org_id, amount, payment_method)
    except StoreUnavailable:
        raise
    except (ValueError, KeyplaneError) as exc:
        return _configure(
            request, viewer, status=400, error=form_error(exc), amount=amount,
            method_id=payment_method,
        )  # fmt: skip
    return render_billing(
        request, viewer, "billing_confirm.html", amount=micros, method=method,
        form_id=form_id if FORM_ID.fullmatch(form_id) else secrets.token_urlsafe(16),
    )  # fmt: skip


@router.post(PURCHASE + "/confirm")
def confirm_payment(
    request: Request, viewer: CurrentMember, amount: Field = "", payment_method: Field = "",
    form_id: Field = "", org_id: Field = "",
) -> Response:  # fmt: skip
    """Charges the card and adds the credit, once per form: the form's id is the purchase's
    idempotency key. A declined card goes back to Configure payment with the provider's reason
    (the history keeps the failed charge; nothing is credited)."""
    form_org = org_id
    principal = allowed(request, viewer, "credit_purchases.create")
    same_org(viewer, form_org)
    if not FORM_ID.fullmatch(form_id):
        raise HTTPException(400, "This form has no valid id: go back, reload it and try again.")
    services = context(request).services
    org_id = principal.org_id
    try:
        micros, method = _order(request, org_id, amount, payment_method)

        # (Audited by the service with the charge's line: once per charge, declined too; not
        # when the form is sent again.)
        payment_id = services.payments.purchase(
            org_id, micros, actor=principal.actor, method_id=method.id,
            idempotency_key=f"dashboard:{form_id}",
        ).id  # fmt: skip
    except PaymentFailed as exc:
        return _configure(
            request, viewer, status=402, error=exc.message, amount=amount,
            method_id=payment_method,
        )  # fmt: skip
    except IdempotencyKeyReused:  # in progress, or made with another amount or card
        return _configure(
            request, viewer, status=409, amount=amount, method_id=payment_method,
            error="This payment form was already sent: see Billing history before paying again.",
        )  # fmt: skip
    except StoreUnavailable:
        raise  # (the 503 page: not a mistake in the form)
    except (ValueError, KeyplaneError) as exc:
        return _configure(
            request, viewer, status=400, error=form_error(exc), amount=amount,
            method_id=payment_method,
        )  # fmt: skip
    raise Redirect(f"{PATH}?paid={payment_id}")
