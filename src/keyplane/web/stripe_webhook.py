"""``POST /stripe/webhook``: the events Stripe posts, signed with the endpoint's secret
(``KEYPLANE_STRIPE_WEBHOOK_SECRET``), when the payment provider is Stripe (404 otherwise).

``payment_intent.succeeded`` for one of keyplane's charges (its metadata says whose, which kind,
and the charge's idempotency key) credits the payment, and lists it in the billing history with its
PaymentIntent's id and one audit log entry (keyplane's: the webhook cannot know who bought), if
keyplane has not yet: the process that charged may have died after Stripe took the money and before
the credit was stored. The credit goes through the charge's own idempotent path, so it is added
exactly once whichever comes first, and each later delivery of the event changes nothing. Every other event answers 200 and changes
nothing (Stripe stops sending it).

A refund or a dispute of a paid charge (``charge.refunded``, the refunds' own events,
``charge.dispute.*``) takes its credit back, or gives it back, once per event (billing/reversals.py):
a refund as Stripe has the charge's amount refunded when the event comes (asked of Stripe's API,
whatever the event's copy says), a dispute by its status. Stripe does not keep its events in
order: one naming a payment keyplane has not stored yet (its ``payment_intent.succeeded`` still to
come) asks Stripe for that PaymentIntent and credits it first, as its own event would, then applies
itself (``PaymentService.reverse`` says why rather than a non-2xx answer for Stripe to send it
again). This process's gateway applies it before the answer (``applied``), the others at their
next poll. A charge keyplane did not sell answers 200 and changes nothing.

A missing or wrong signature answers 400; a credit that cannot be stored now answers 409 or 503
(so does Stripe unreachable to read a charge's refunds or a payment), and Stripe sends the event again later."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from keyplane.billing.payment_ports import PaidCharge, ProviderReport
from keyplane.billing.payments import PaymentService
from keyplane.gateway.errors import ApiError
from keyplane.web.auth import context
from keyplane.web.errors import AdminApiError
from keyplane.web.money import applied

log = logging.getLogger("keyplane.stripe")

PATH = "/stripe/webhook"
MAX_BODY_BYTES = 1024 * 1024  # Stripe's events are a few KB; some carry long lists

router = APIRouter(include_in_schema=False)


class StripeEvents(Protocol):
    @property
    def takes_webhooks(self) -> bool: ...

    def event(self, payload: bytes, signature: str) -> PaidCharge | ProviderReport | None: ...

    def amount_refunded(self, charge_id: str) -> int: ...

    def paid_charge(self, payment_ref: str) -> PaidCharge | None: ...


class StripeServices(Protocol):
    @property
    def stripe(self) -> StripeEvents | None: ...

    @property
    def payments(self) -> PaymentService: ...


@router.post(PATH)
async def stripe_event(request: Request) -> JSONResponse:
    ctx = context(request)
    services = cast(StripeServices, ctx.services)
    events = services.stripe
    if events is None or not events.takes_webhooks:
        raise AdminApiError(ApiError(404, f"Invalid URL (POST {PATH})"))
    body = await request.body()
    news = events.event(body, request.headers.get("stripe-signature", ""))
    if isinstance(news, PaidCharge):
        lot = await asyncio.to_thread(services.payments.credit_paid, news)
        if lot is not None:
            log.info(
                "Stripe reports %s paid: %s's %s is credit lot %s (now or before)",
                news.payment_ref, news.org_id, news.kind, lot.id,
            )  # fmt: skip
            await applied(ctx)
    elif news is not None:
        adjusted = await asyncio.to_thread(
            services.payments.reverse, news, events.amount_refunded, events.paid_charge
        )
        if adjusted is not None:
            log.info(
                "Stripe reports %s %s (%s): %s of %s, credit moved %d micro-dollars",
                news.payment_ref, adjusted.status, news.event_id, adjusted.kind,
                adjusted.payment_id, adjusted.amount,
            )  # fmt: skip
            await applied(ctx)
    return JSONResponse({"received": True})
