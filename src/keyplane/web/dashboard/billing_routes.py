"""The Billing pages (BRIEF C5/C9, the guide's Billing screens), with a sub-navigation between
them and Preferences (billing_preferences_routes.py):

- Overview (``/billing``): the credit balance, what requests in flight hold, the credit lots it is
  made of (purchases and grants, each with its expiry), the billing mode and the auto-recharge
  rule; and "Add to credit balance": Configure payment (an amount within the purchase bounds, the
  payment method to charge), then Confirm payment, then back here with the new balance. Auto
  recharge (BRIEF C5; the guide says to turn it off), off by default: Owners turn it on with its
  two amounts (under the threshold, buy back up to the target; a saved card needed) and off with
  one button, audited as the Admin API's ``billing_settings.updated``.
- Payment methods (``/billing/payment-methods``): the saved cards (brand, last four digits,
  expiry, which one is the default), "Add payment details", making one the default, removing one
  after a confirmation page. With the sandbox provider "Add payment details" is a card form; with
  Stripe it is Stripe.js's Card Element (``static/stripe_card.js``), which gives the card to Stripe
  and posts only the PaymentMethod id Stripe made of it (that page alone lets Stripe's scripts,
  frames and API in: ``STRIPE_CSP``).
- Billing history (``/billing/history``): every charge (declined ones with why) and credit grant,
  newest first; each paid charge has a receipt to download
  (``/billing/history/{payment_id}/receipt``): one self-contained HTML document, to keep or print,
  with the payment provider's id of the payment when it made one (Stripe's pi_…), billed to the
  billing address the payment was made with (its copy), else to the organization's name.

Every member sees them (the Admin API's rule: billing is read by Owners and Readers alike); only
Owners add cards and pay, as ``POLICY`` says, and every change goes through ``PaymentService`` and
is audited with the Admin API's event names. A card's number and CVC go to the payment provider
only: never stored, logged, audited, or put back into a page (a refused card form asks for them
again). Configure payment gives the purchase a one-time id, carried by Confirm payment's address
and form as the purchase's idempotency key: sending the form again (a double click, a reload, Back
to Confirm payment and Confirm again) never charges twice; a new purchase starts from Configure
payment."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.audit.service import changed
from keyplane.billing.amounts import parse_amount
from keyplane.billing.audit_details import settings_shown
from keyplane.billing.declines import PaymentFailed, decline_message
from keyplane.billing.payment_ports import CardDetails, Payment, PaymentMethod
from keyplane.billing.wallet import Lot
from keyplane.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    KeyplaneError,
    NotFound,
    StoreUnavailable,
)
from keyplane.usage.pricing import format_usd
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.money import usd_left
from keyplane.web.dashboard.session import (
    CurrentMember,
    Field,
    Redirect,
    Viewer,
    context,
    form_error,
    render,
    safe_next,
    same_org,
)
from keyplane.web.principal import Principal

router = APIRouter()
PATH = "/billing"
METHODS = PATH + "/payment-methods"
PURCHASE = PATH + "/purchase"
RECHARGE = PATH + "/auto-recharge"
HISTORY = PATH + "/history"
LINES = 100  # the billing history shows the latest lines
EVERY_LINE = 2**31 - 1  # (a SQL LIMIT: every charge)
# A receipt answered as a download; should a browser show it anyway, its inline style and nothing
# else applies (the dashboard's own policy allows stylesheets from the site only).
RECEIPT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
BRANDS = {"visa": "Visa", "mastercard": "Mastercard", "amex": "American Express"}
KINDS = {"purchase": "Credit purchase", "recharge": "Auto-recharge"}
FORM_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
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


def card_label(card: PaymentMethod | Payment) -> str:
    """How a card is named on the pages: "Visa •••• 4242"."""
    return f"{BRANDS.get(card.brand, card.brand.capitalize())} •••• {card.last4}"


def _page(
    request: Request, viewer: Viewer, template: str, *, status: int = 200, **values: object
) -> Response:
    return render(
        request, template, status=status, viewer=viewer, card=card_label,
        **values,
    )  # fmt: skip


def _allowed(request: Request, viewer: Viewer, operation: str) -> Principal:
    """The signed-in user acting in the organization, once ``POLICY`` allows ``operation`` (403
    otherwise: Readers see billing, never change it)."""
    principal = principal_of(request, viewer)
    if not may(request, principal, operation, None):
        raise HTTPException(403, "Only the organization's Owners manage its payments.")
    return principal


# -- overview -----------------------------------------------------------------------------------


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
    return _overview(request, viewer, notice=notice)


def _overview(
    request: Request, viewer: Viewer, *, status: int = 200, notice: str | None = None,
    errors: dict[str, str] | None = None, typed: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    """The Overview; ``errors`` and ``typed``: the auto-recharge form refused (by field)."""
    services = context(request).services
    principal = principal_of(request, viewer)
    org_id = principal.org_id
    now = services.clock.now()
    balance = services.billing.balance(org_id)
    settings = services.billing.settings(org_id)
    lots = sorted(balance.lots, key=lambda pair: pair[0].created_at, reverse=True)
    rows = [
        (lot, note, "revoked" if lot.revoked else "active" if lot.live(now) else "expired")
        for lot, note in lots
    ]
    methods = services.payments.methods(org_id)
    return _page(
        request, viewer, "billing.html", status=status, section=PATH, balance=balance,
        settings=settings, rows=rows, notice=notice,
        can_pay=may(request, principal, "credit_purchases.create", None),
        can_recharge=may(request, principal, "billing_settings.update", None),
        recharge_card=methods[0] if methods else None, bounds=services.billing.recharge_bounds,
        recharge_attempts=services.payments.max_recharge_attempts, errors=errors or {},
        typed=typed or {},
    )  # fmt: skip


# -- auto recharge ------------------------------------------------------------------------------


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
    """Changes the rule, audited as the Admin API's ``billing_settings.updated`` (with what
    changed, before and after; nothing recorded when nothing changed: a form sent twice)."""
    services = context(request).services
    org_id = principal.org_id
    billing = services.billing
    old = billing.settings(org_id)
    before = settings_shown(old, billing.effective_usage_limit(old))
    record = billing.update_settings(org_id, **changes)
    details = changed(before, settings_shown(record, billing.effective_usage_limit(record)))
    if details["after"]:
        services.audit.record(org_id, principal.actor, "billing_settings.updated", details=details)


@router.post(RECHARGE)
def set_auto_recharge(
    request: Request, viewer: CurrentMember, threshold: Field = "", target: Field = "",
    org_id: Field = "",
) -> Response:  # fmt: skip
    """Turns auto recharge on, or changes its amounts: whole dollars and cents within the bounds
    (BRIEF C5: below $5-$95, back up to $10-$100, above the threshold), with a saved card to
    charge. Owners only."""
    form_org = org_id
    principal = _allowed(request, viewer, "billing_settings.update")
    same_org(viewer, form_org)
    amounts = _recharge_amounts(request, principal.org_id, threshold, target)
    if isinstance(amounts, dict):
        typed = {"threshold": threshold, "target": target}
        return _overview(request, viewer, status=400, errors=amounts, typed=typed)
    try:
        _save_recharge(
            request, principal, auto_recharge=True, recharge_threshold=amounts[0],
            recharge_target=amounts[1],
        )  # fmt: skip
    except StoreUnavailable:
        raise
    except KeyplaneError as exc:  # (bounds the service checks too)
        typed = {"threshold": threshold, "target": target}
        return _overview(request, viewer, status=400, errors={"form": exc.message}, typed=typed)
    raise Redirect(PATH + "#auto-recharge")


@router.post(RECHARGE + "/off")
def turn_off_auto_recharge(request: Request, viewer: CurrentMember, org_id: Field = "") -> Response:
    """Turns auto recharge off (its amounts are kept, to fill the form in again). Owners only."""
    form_org = org_id
    principal = _allowed(request, viewer, "billing_settings.update")
    same_org(viewer, form_org)
    _save_recharge(request, principal, auto_recharge=False)
    raise Redirect(PATH + "#auto-recharge")


# -- Configure payment, Confirm payment ---------------------------------------------------------


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
    return _page(
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
    _allowed(request, viewer, "credit_purchases.create")
    return _configure(request, viewer, amount=amount, method_id=payment_method)


@router.get(PURCHASE + "/confirm")
def confirm_page(
    request: Request, viewer: CurrentMember, amount: str = "", payment_method: str = "",
    form_id: str = "",
) -> Response:  # fmt: skip
    """Confirm payment: what is charged to which card, nothing yet; its form carries the purchase's
    id from Configure payment (a new one if the address has none)."""
    principal = _allowed(request, viewer, "credit_purchases.create")
    try:
        micros, method = _order(request, principal.org_id, amount, payment_method)
    except StoreUnavailable:
        raise
    except (ValueError, KeyplaneError) as exc:
        return _configure(
            request, viewer, status=400, error=form_error(exc), amount=amount,
            method_id=payment_method,
        )  # fmt: skip
    return _page(
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
    principal = _allowed(request, viewer, "credit_purchases.create")
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


# -- payment methods ----------------------------------------------------------------------------


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
    return _page(
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
    page = _page(
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
    _allowed(request, viewer, "payment_methods.create")
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
    principal = _allowed(request, viewer, "payment_methods.create")
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
        method = services.payments.add_method(principal.org_id, card, make_default=default)
    except StoreUnavailable:
        raise
    except KeyplaneError as exc:
        field = CARD_FIELDS.get(exc.param or "", "form")
        return _card_form(
            request, viewer, status=400, errors={field: exc.message}, expiry=expiry,
            make_default=default, next_path=safe_next(next) if next else "",
        )  # fmt: skip
    services.audit.record(
        principal.org_id, principal.actor, "payment_method.created", target_id=method.id,
        details={"data": _shown(method)},
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
    principal = _allowed(request, viewer, "payment_methods.update")
    same_org(viewer, form_org)
    method = _method(request, principal.org_id, method_id)
    if not method.is_default:
        context(request).services.payments.set_default(principal.org_id, method.id)
        context(request).services.audit.record(
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
    principal = _allowed(request, viewer, "payment_methods.delete")
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
    principal = _allowed(request, viewer, "payment_methods.delete")
    try:
        method = context(request).services.payments.remove_method(principal.org_id, method_id)
    except NotFound:
        raise HTTPException(404) from None
    context(request).services.audit.record(
        principal.org_id, principal.actor, "payment_method.deleted", target_id=method.id,
        details={"data": _shown(method)},
    )  # fmt: skip
    raise Redirect(METHODS)


# -- billing history ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """A line of the billing history: a charge, a credit grant, or a purchase recorded without a
    charge."""

    at: int
    description: str
    card: str  # "" when no card was charged
    amount: int
    status: str  # "Succeeded" | "Failed" | "Granted" | "Revoked" | "Recorded"
    reason: str = ""  # why a charge was declined
    lot: Lot | None = None  # a grant's or a recorded purchase's (its expiry)
    note: str = ""  # a grant's; a recorded purchase's: that it was paid outside keyplane
    receipt: str = ""  # a succeeded charge's receipt


def _charge(p: Payment) -> Line:
    kind, card = KINDS.get(p.kind, p.kind), card_label(p)
    if p.status == "succeeded":
        receipt = f"{HISTORY}/{p.id}/receipt"
        return Line(p.created_at, kind, card, p.amount, "Succeeded", receipt=receipt)
    declined = decline_message(p.failure) if p.failure else ""
    return Line(p.created_at, kind, card, p.amount, "Failed", declined)


def _history(request: Request, org_id: str) -> list[Line]:
    """The charges and the credit lots no charge bought, newest first (the latest ``LINES``).
    Every charge is read (as many as the purchase lots the balance reads anyway): a purchase's
    lot is its charge's line, however old, and one recorded without a charge (``keyplane credits
    purchase``: paid outside keyplane) a line of its own."""
    services = context(request).services
    charges = services.payments.history(org_id, EVERY_LINE)
    bought = {p.lot_id for p in charges if p.lot_id}
    lines = [_charge(p) for p in charges]
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
    return _page(
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
    org = viewer.org
    assert org is not None  # CurrentMember has one
    document = context(request).templates.get_template("billing_receipt.html").render(
        org=org, payment=payment, lot=lot, description=KINDS.get(payment.kind, payment.kind),
        card=card_label,
    )  # fmt: skip
    return Response(
        document,
        media_type="text/html; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="keyplane-receipt-{payment.id}.html"',
            "content-security-policy": RECEIPT_CSP,
        },
    )
