"""Billing → Payment methods (``/billing/payment-methods``): the saved cards (brand, last four
digits, expiry, which one is the default), "Add payment details", making one the default, removing
one after a confirmation page. Owners only change them.

With the sandbox provider "Add payment details" is a card form; with Stripe it is Stripe.js's Card
Element (``static/stripe_card.js``), which gives the card to Stripe and posts only the
PaymentMethod id Stripe made of it (that page alone lets Stripe's scripts, frames and API in:
``STRIPE_CSP``). A card's number and CVC go to the payment provider only: never stored, logged,
audited, or put back into a page (a refused card form asks for them again)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.audit.service import changed
from keyplane.billing.payment_ports import CardDetails, PaymentMethod
from keyplane.errors import InvalidRequest, KeyplaneError, NotFound, StoreUnavailable
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.billing_pages import PATH, allowed, card_label, render_billing
from keyplane.web.dashboard.session import (
    CurrentMember,
    Field,
    Redirect,
    Viewer,
    context,
    render,
    safe_next,
    same_org,
)

router = APIRouter()
METHODS = PATH + "/payment-methods"
CARD_FIELDS = {"number": "number", "exp_month": "expiry", "exp_year": "expiry", "cvc": "cvc"}
# The dashboard's own policy (dashboard/app.py), plus what Stripe.js needs (Stripe's list): its
# script, its frames (the card fields live in one, 3-D Secure in another), its API.
STRIPE_CSP = (
    "default-src 'self'; script-src 'self' https://js.stripe.com https://*.js.stripe.com; "
    "frame-src https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com; "
    "connect-src 'self' https://api.stripe.com; style-src 'self'; img-src 'self' data: "
    "https://*.stripe.com; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def _expired(method: PaymentMethod, now: float) -> bool:
    today = dt.datetime.fromtimestamp(now, dt.UTC)
    return (method.exp_year, method.exp_month) < (today.year, today.month)


@router.get(METHODS)
def methods_page(request: Request, viewer: CurrentMember, added: str = "") -> Response:
    """``added``: the card just saved (Add payment details leads here), said in a notice."""
    services = context(request).services
    principal = principal_of(request, viewer)
    if not may(request, principal, "payment_methods.list", None):
        raise HTTPException(403)
    now = services.clock.now()
    methods = [(m, _expired(m, now)) for m in services.payments.methods(principal.org_id)]
    new = next((m for m, _ in methods if m.id == added), None) if added else None
    return render_billing(
        request, viewer, "billing_methods.html", section=METHODS, methods=methods,
        notice=None if new is None else f"{card_label(new)} was added.",
        can_add=may(request, principal, "payment_methods.create", None),
        can_update=may(request, principal, "payment_methods.update", None),
        can_delete=may(request, principal, "payment_methods.delete", None),
    )  # fmt: skip


def _card_form(
    request: Request, viewer: Viewer, *, status: int = 200, errors: dict[str, str] | None = None,
    expiry: str = "", make_default: bool = False, next_path: str = "",
) -> Response:  # fmt: skip
    """Add payment details. The card number and CVC are never filled in again. With Stripe,
    Stripe.js's card form (the page then lets Stripe's scripts and frames in)."""
    org = viewer.org
    assert org is not None  # CurrentMember has one
    services = context(request).services
    first = not services.payments.methods(org.id)
    stripe = services.payments.provider_name == "stripe"
    page = render_billing(
        request, viewer, "billing_card.html", status=status, errors=errors or {},
        error="The card was not saved: check the details below." if errors else None,
        expiry=expiry, make_default=make_default or first, first=first, next_path=next_path,
        stripe_key=services.settings.stripe_publishable_key if stripe else "",
    )  # fmt: skip
    if stripe:
        page.headers["content-security-policy"] = STRIPE_CSP
    return page


@router.get(METHODS + "/new")
def new_method_page(request: Request, viewer: CurrentMember, next: str = "") -> Response:
    """``next``: the page to go back to once the card is saved (Configure payment's link)."""
    allowed(request, viewer, "payment_methods.create")
    return _card_form(request, viewer, next_path=safe_next(next) if next else "")


def _expiry(text: str) -> tuple[int, int]:
    """(month, year) from "MM / YY", "MM/YYYY" or "MMYY". Raises ValueError."""
    digits = re.sub(r"\s", "", text)
    month, _, year = digits.partition("/")
    if not year and len(digits) == 4:
        month, year = digits[:2], digits[2:]
    if not (month.isdigit() and year.isdigit() and len(month) <= 2 and len(year) in (2, 4)):
        raise ValueError("Enter the expiration date as MM / YY, like 08 / 29.")
    return int(month), int(year) + (2000 if len(year) == 2 else 0)


def _card(number: str, expiry: str, cvc: str, payment_method: str) -> CardDetails | str:
    """What the form gives: the PaymentMethod id Stripe.js made (Stripe's form) or the card's
    details (the sandbox's). Raises InvalidRequest."""
    if payment_method.strip():
        return payment_method.strip()
    if not number.strip():
        raise InvalidRequest("Enter your card number.", param="number")
    try:
        exp_month, exp_year = _expiry(expiry)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="exp_month") from None
    return CardDetails(number.strip(), exp_month, exp_year, cvc.strip())


@router.post(METHODS)
def add_method(
    request: Request, viewer: CurrentMember, number: Field = "", expiry: Field = "",
    cvc: Field = "", payment_method: Field = "", make_default: Field = "", org_id: Field = "",
    next: Field = "",
) -> Response:  # fmt: skip
    """Saves the card: ``payment_method`` (Stripe's form, once Stripe.js made one) or
    ``number``, ``expiry`` and ``cvc`` (the sandbox's)."""
    form_org = org_id
    principal = allowed(request, viewer, "payment_methods.create")
    same_org(viewer, form_org)
    services = context(request).services
    default = make_default == "on"
    try:
        if services.payments.provider_name == "stripe" and not payment_method.strip():
            raise InvalidRequest(
                "Enter your card's details in the card field (it needs JavaScript, which gives "
                "them to Stripe).",
                param="payment_method",
            )
        card = _card(number, expiry, cvc, payment_method)
        # (The unit's transaction begins with the method's row, after the provider saved it.)
        with services.audit.atomic():
            method = services.payments.add_method(principal.org_id, card, make_default=default)
            services.audit.record(
                principal.org_id, principal.actor, "payment_method.created",
                target_id=method.id, details={"data": _shown(method)},
            )  # fmt: skip
    except StoreUnavailable:
        raise
    except KeyplaneError as exc:
        field = CARD_FIELDS.get(exc.param or "", "form")
        return _card_form(
            request, viewer, status=400, errors={field: exc.message}, expiry=expiry,
            make_default=default, next_path=safe_next(next) if next else "",
        )  # fmt: skip
    raise Redirect(safe_next(next) if next else f"{METHODS}?added={method.id}")


def _shown(method: PaymentMethod) -> dict[str, object]:
    """What the audit log says of a method: what the pages show of it."""
    return {
        "brand": method.brand, "last4": method.last4, "exp_month": method.exp_month,
        "exp_year": method.exp_year, "is_default": method.is_default,
    }  # fmt: skip


def _method(request: Request, org_id: str, method_id: str) -> PaymentMethod:
    try:
        return context(request).services.payments.method(org_id, method_id)
    except NotFound:
        raise HTTPException(404) from None


@router.post(METHODS + "/{method_id}/default")
def set_default_method(
    request: Request, viewer: CurrentMember, method_id: str, org_id: Field = ""
) -> Response:
    form_org = org_id
    principal = allowed(request, viewer, "payment_methods.update")
    same_org(viewer, form_org)
    method = _method(request, principal.org_id, method_id)
    services = context(request).services
    if not method.is_default:
        with services.audit.atomic():
            services.payments.set_default(principal.org_id, method.id)
            services.audit.record(
                principal.org_id, principal.actor, "payment_method.updated", target_id=method.id,
                details=changed({"is_default": False}, {"is_default": True}),
            )  # fmt: skip
    raise Redirect(METHODS)


def _successor(methods: Sequence[PaymentMethod], removed: PaymentMethod) -> PaymentMethod | None:
    """The method that becomes the default when ``removed`` goes, if it is the default:
    PaymentService's rule, the first other one in ``methods``' order (the newest)."""
    rest = [m for m in methods if m.id != removed.id]
    return rest[0] if removed.is_default and rest else None


@router.get(METHODS + "/{method_id}/remove")
def remove_method_page(request: Request, viewer: CurrentMember, method_id: str) -> Response:
    principal = allowed(request, viewer, "payment_methods.delete")
    services = context(request).services
    method = _method(request, principal.org_id, method_id)
    methods = services.payments.methods(principal.org_id)
    successor = _successor(methods, method)
    if successor is not None:
        then = f" {card_label(successor)} becomes the default payment method."
    elif len(methods) == 1 and services.billing.settings(principal.org_id).auto_recharge:
        then = " Auto-recharge is on: with no payment method left, it fails and turns off."
    else:
        then = ""
    return render(
        request, "confirm.html", viewer=viewer, heading="Remove payment method",
        message=f"{card_label(method)} (expires {method.exp_month:02d}/{method.exp_year}) is no "
        f"longer charged for credit purchases or auto-recharge.{then}",
        action=f"{METHODS}/{method.id}/remove", button="Remove", back=METHODS,
    )  # fmt: skip


@router.post(METHODS + "/{method_id}/remove")
def remove_method(request: Request, viewer: CurrentMember, method_id: str) -> Response:
    principal = allowed(request, viewer, "payment_methods.delete")
    services = context(request).services
    try:
        with services.audit.atomic():
            method = services.payments.remove_method(principal.org_id, method_id)
            services.audit.record(
                principal.org_id, principal.actor, "payment_method.deleted", target_id=method.id,
                details={"data": _shown(method)},
            )  # fmt: skip
    except NotFound:
        raise HTTPException(404) from None
    raise Redirect(METHODS)
