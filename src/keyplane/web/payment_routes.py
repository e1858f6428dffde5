"""Admin API for paying for credits (BRIEF C5): payment methods, credit purchases, billing history.

Only Owners spend the organization's money; Readers see the saved methods (brand, last four digits
and expiry, never the provider's reference) and the history. A card's number and CVC go to the
payment provider and nowhere else: not the audit log, a log line or an error message (with Stripe
they never reach keyplane: a method is saved from the PaymentMethod id Stripe.js created). A
declined card answers 402 ``card_error`` as Stripe does, and stays in the history as a failed line.
A paid line says what its refunds and disputes made of it (billing/reversals.py: the amount
refunded, where its dispute stands), as the dashboard's billing history does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

from keyplane.audit.service import changed
from keyplane.billing.declines import PaymentFailed
from keyplane.billing.payment_ports import Adjustment, CardDetails, Payment
from keyplane.billing.payment_ports import PaymentMethod as MethodRecord
from keyplane.billing.payments import PaymentService
from keyplane.billing.reversals import standing
from keyplane.errors import InvalidRequest, NotFound
from keyplane.gateway.errors import ApiError
from keyplane.web.auth import Admin, Ctx
from keyplane.web.authz import Allowed, Audit, admin_router
from keyplane.web.errors import AdminApiError, params_named
from keyplane.web.money import applied
from keyplane.web.params import After, IdempotencyKey, Limit
from keyplane.web.schemas import (
    CreditPurchase,
    CreditPurchaseCreate,
    Deleted,
    ErrorEnvelope,
    ListPage,
    PaymentMethod,
    PaymentMethodCreate,
    page,
)

router = admin_router()

CARD_PARAMS = {f: f"card.{f}" for f in ("number", "exp_month", "exp_year", "cvc")}
PURCHASE_RESPONSES: dict[int | str, dict[str, Any]] = {
    402: {"description": "The card was declined (type card_error)", "model": ErrorEnvelope},
    409: {"description": "Idempotency-Key reused", "model": ErrorEnvelope},
}
_EVERY_LINE = 2**31 - 1  # (a SQL LIMIT: reading down to an ``after`` cursor)


class PaymentServices(Protocol):
    @property
    def payments(self) -> PaymentService: ...


def _service(ctx: Ctx) -> PaymentService:
    return cast(PaymentServices, ctx.services).payments


def _method(m: MethodRecord) -> PaymentMethod:
    return PaymentMethod(
        id=m.id, brand=m.brand, last4=m.last4, exp_month=m.exp_month, exp_year=m.exp_year,
        is_default=m.is_default, created_at=m.created_at,
    )  # fmt: skip


def _purchase(p: Payment, adjustments: Sequence[Adjustment] = ()) -> CreditPurchase:
    """A line of the history, with what its ``adjustments`` (refunds, disputes) made of it, as
    the dashboard's billing history shows it."""
    now = standing(p.amount, adjustments)
    return CreditPurchase(
        id=p.id, kind="recharge" if p.kind == "recharge" else "purchase",
        amount_micro_usd=p.amount, status="succeeded" if p.status == "succeeded" else "failed",
        payment_method=p.method_id, brand=p.brand, last4=p.last4, failure_code=p.failure,
        credit_grant_id=p.lot_id, created_at=p.created_at, provider_payment_id=p.provider_ref,
        amount_refunded_micro_usd=now.refunded, dispute_status=now.dispute,
    )  # fmt: skip


def _source(body: PaymentMethodCreate, provider: str) -> CardDetails | str:
    """The card's details or the provider's token for it, whichever the body gives (the provider
    refuses the form it does not take)."""
    card, token = body.card, body.payment_method
    if card is not None and token is not None:
        raise InvalidRequest("Give `card` or `payment_method`, not both.", param="payment_method")
    if token is not None:
        return token
    if card is None:
        if provider == "stripe":
            raise InvalidRequest(
                "Missing `payment_method`: the id of the PaymentMethod Stripe.js created (pm_…).",
                param="payment_method",
            )
        raise InvalidRequest("Missing required parameter: 'card'.", param="card")
    return CardDetails(
        card.number.get_secret_value(), card.exp_month, card.exp_year, card.cvc.get_secret_value()
    )


@contextlib.contextmanager
def _in_path() -> Iterator[None]:
    # The service names the method ``payment_method`` (the purchase's field); here it is the path's.
    try:
        yield
    except NotFound as exc:
        raise NotFound(exc.message, param="payment_method_id") from None


# -- payment methods --------------------------------------------------------------------------
@router.get("/payment_methods", tags=["billing"], name="payment_methods.list")
async def list_payment_methods(
    ctx: Ctx, caller: Admin, limit: Limit = 20, after: After = None
) -> ListPage[PaymentMethod]:
    """The saved cards, the default first, then the newest."""
    methods = await asyncio.to_thread(_service(ctx).methods, caller.org_id)
    return page([_method(m) for m in methods], lambda m: m.id, limit=limit, after=after)


@router.post("/payment_methods", tags=["billing"], name="payment_methods.create")
async def create_payment_method(
    ctx: Ctx, caller: Admin, audit: Audit, body: PaymentMethodCreate
) -> PaymentMethod:
    """Saves a card with the payment provider: its details (``card``) with the sandbox, the
    PaymentMethod id Stripe.js created (``payment_method``) with Stripe; keyplane keeps its brand,
    last four digits and expiry. The first card, or any with ``default``, becomes the one
    purchases charge."""
    service = _service(ctx)
    source = _source(body, service.provider_name)

    def add() -> MethodRecord:
        # (The unit's transaction begins with the method's row, after the provider saved it.)
        with audit.atomic():
            with params_named(CARD_PARAMS):
                method = service.add_method(caller.org_id, source, make_default=body.default)
            data = {"brand": method.brand, "last4": method.last4}
            audit("payment_method.created", target_id=method.id, details={"data": data})
        return method

    return _method(await asyncio.to_thread(add))


@router.post(
    "/payment_methods/{payment_method_id}/default",
    tags=["billing"],
    name="payment_methods.update",
)
async def set_default_payment_method(
    ctx: Ctx, caller: Admin, audit: Audit, payment_method_id: str
) -> PaymentMethod:
    """Makes the method the default: what purchases without ``payment_method`` and
    auto-recharge charge."""
    service = _service(ctx)

    def make_default() -> MethodRecord:
        with audit.atomic():
            with _in_path():
                before = service.method(caller.org_id, payment_method_id)
                method = service.set_default(caller.org_id, payment_method_id)
            change = changed({"is_default": before.is_default}, {"is_default": method.is_default})
            audit("payment_method.updated", target_id=method.id, details=change)
        return method

    return _method(await asyncio.to_thread(make_default))


@router.delete(
    "/payment_methods/{payment_method_id}", tags=["billing"], name="payment_methods.delete"
)
async def delete_payment_method(
    ctx: Ctx, caller: Admin, audit: Audit, payment_method_id: str
) -> Deleted:
    """Removes the method; if it was the default, the newest other one becomes the default."""
    service = _service(ctx)

    def remove() -> None:
        with audit.atomic():
            with _in_path():
                method = service.remove_method(caller.org_id, payment_method_id)
            data = {"brand": method.brand, "last4": method.last4}
            audit("payment_method.deleted", target_id=method.id, details={"data": data})

    await asyncio.to_thread(remove)
    return Deleted(object="payment_method.deleted", id=payment_method_id)


# -- purchases and the billing history --------------------------------------------------------
@router.post(
    "/credit_purchases",
    tags=["billing"],
    name="credit_purchases.create",
    responses=PURCHASE_RESPONSES,
)
async def create_credit_purchase(
    ctx: Ctx,
    caller: Admin,
    principal: Allowed,
    body: CreditPurchaseCreate,
    idempotency_key: IdempotencyKey = None,
) -> CreditPurchase:
    """Charges the payment method (the default unless named) and adds the credit it bought: a
    non-refundable lot expiring a year later. A declined card answers 402 ``card_error`` with the
    decline code; a replay with the same Idempotency-Key answers the first result, charging
    nothing; the same key with another body answers 409."""
    # (Audited by the service, ``credit_purchase.created`` in the charge's line's transaction:
    # once per charge, declined too; not on a replay.)
    service = _service(ctx)

    def buy() -> CreditPurchase:
        with params_named({"amount": "amount_micro_usd"}):
            payment = service.purchase(
                caller.org_id, body.amount_micro_usd, actor=principal.actor,
                method_id=body.payment_method, idempotency_key=idempotency_key,
            )  # fmt: skip
        # (A replay answers the payment as it stands now: refunded since, say.)
        return _purchase(payment, service.adjustments(caller.org_id, payment.id))

    try:
        purchase = await asyncio.to_thread(buy)
    except PaymentFailed as exc:
        raise AdminApiError(ApiError(402, exc.message, type="card_error", code=exc.code)) from None
    await applied(ctx)
    return purchase


@router.get("/billing_history", tags=["billing"], name="billing_history.list")
async def list_billing_history(
    ctx: Ctx, caller: Admin, limit: Limit = 20, after: After = None
) -> ListPage[CreditPurchase]:
    """Every charge, purchases and auto-recharges, succeeded or declined, newest first; a paid
    one with the amount refunded and where its dispute stands, when it has either."""
    # A first page reads one line more than it shows (for has_more); a later one, down to its
    # cursor (lines are few: one per purchase or recharge; adjustments fewer still).
    rows = limit + 1 if after is None else _EVERY_LINE
    service = _service(ctx)

    def read() -> list[CreditPurchase]:
        lines = service.history(caller.org_id, rows)
        adjusted: dict[str, list[Adjustment]] = {}
        for a in service.adjustments(caller.org_id):
            adjusted.setdefault(a.payment_id, []).append(a)
        return [_purchase(p, adjusted.get(p.id, ())) for p in lines]

    lines = await asyncio.to_thread(read)
    return page(lines, lambda p: p.id, limit=limit, after=after)
