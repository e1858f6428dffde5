"""The Stripe payment provider (BRIEF C5), over Stripe's official SDK: the ``PaymentProvider`` of
``billing/payment_ports.py`` when ``KEYPLANE_PAYMENT_PROVIDER=stripe``.

Card details never reach keyplane: the dashboard's card form is Stripe.js's Card Element, which
gives them to Stripe and hands keyplane a PaymentMethod id (``pm_…``). Saving one creates the
organization's Stripe Customer once (metadata ``org_id``; later cards reuse the Customer of its
saved methods, whose reference keyplane keeps as ``cus_…/pm_…``), attaches the PaymentMethod to it
and keeps what Stripe says of the card: brand, last four digits, expiry.

A charge is a PaymentIntent in US cents, confirmed at once off-session on the saved method, with the
charge's idempotency key as Stripe's ``Idempotency-Key``: a purchase or a recharge that runs again
(its process died) gets Stripe's first answer back and charges nothing more. Its metadata
(``org_id``, ``kind``, ``charge_key``) lets the signed webhook (``event``) credit a payment,
and write its line of the billing history, when the process died after Stripe charged it and
before keyplane stored the credit. Stripe's failures
never raise from ``charge``: a card error is its decline code, a payment that needs the cardholder
(3-D Secure) ``authentication_required``, anything else (Stripe unreachable, an API error)
``processing_error``, logged without the request's secrets. The PaymentIntent's id (``pi_…``),
whenever Stripe made one, is the payment's ``provider_ref`` on its line of the billing history (the
receipt's "Payment reference"), from ``charge`` or from the webhook's event, whichever stores it;
Stripe's events of a refund or a dispute of it name the payment by it (billing/reversals.py); one
that comes before the payment's own event has the PaymentIntent read back (``paid_charge``)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import stripe

from keyplane.billing.declines import decline_message
from keyplane.billing.payment_ports import (
    CardDetails,
    Charged,
    PaidCharge,
    ProviderReport,
    SavedCard,
)
from keyplane.errors import InvalidRequest, StoreUnavailable

log = logging.getLogger("keyplane.stripe")

DEFAULT_API_BASE = "https://api.stripe.com"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Stripe's own advice: retried requests carry the same Idempotency-Key, so a retry never charges
# twice (the SDK waits 0.5 s, then 1 s, between tries).
NETWORK_RETRIES = 2
SIGNATURE_TOLERANCE_S = 300  # a signed event older than this is refused (replays)
TOKEN = re.compile(r"pm_[A-Za-z0-9_]{1,250}")
KINDS = {"purchase": "keyplane credit purchase", "recharge": "keyplane auto-recharge"}
# The events that tell of a charge's refunds (the charge's, then its refunds' own: a refund that
# failed is told by these only), and of its disputes (billing/reversals.py).
REFUND_EVENTS = frozenset(
    {
        "charge.refunded",
        "charge.refund.updated",
        "refund.created",
        "refund.updated",
        "refund.failed",
    }
)
DISPUTE_EVENTS = frozenset(
    {"charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
     "charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated"}
)  # fmt: skip
_UNASKED = (
    "Stripe could not be asked for the payment; the event is taken again when Stripe sends it "
    "again."
)


class HttpxClient(stripe.HTTPClient):
    """The SDK's requests over httpx (keyplane's HTTP client), synchronously: the payment service
    runs in worker threads. (The SDK's own ``HTTPXClient`` sends a form as ``data=`` text, which
    httpx deprecates.) A request that may not have reached Stripe is retried by the SDK with the
    same Idempotency-Key, so it never charges twice."""

    name = "httpx"

    def __init__(self) -> None:
        super().__init__()
        self._client = httpx.Client(timeout=TIMEOUT, follow_redirects=False)

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None,
        *, _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:  # fmt: skip
        try:
            r = self._client.request(method, url, headers=dict(headers or {}), content=post_data)
        except httpx.HTTPError as exc:  # (unreachable, timed out, cut off)
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]  # (the SDK's)
                f"keyplane could not reach Stripe: {type(exc).__name__}", should_retry=True
            ) from exc
        return r.text, r.status_code, r.headers

    def close(self) -> None:
        self._client.close()


class StripeProvider:
    name = "stripe"

    def __init__(
        self,
        secret_key: str,
        *,
        webhook_secret: str | None = None,
        api_base: str = DEFAULT_API_BASE,
    ) -> None:
        """``api_base``: Stripe's, or a stand-in (tests, stripe-mock)."""
        self._http = HttpxClient()
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base.rstrip("/")},
            http_client=self._http,
            max_network_retries=NETWORK_RETRIES,
        )
        self._webhook_secret = webhook_secret

    @property
    def takes_webhooks(self) -> bool:
        return self._webhook_secret is not None

    def close(self) -> None:
        self._http.close()

    # -- saving a card ----------------------------------------------------------------------
    def save_card(self, card: CardDetails, now: float) -> SavedCard:
        raise InvalidRequest(
            "With Stripe, card details go from the browser to Stripe (Stripe.js), never to "
            "keyplane: send the PaymentMethod id Stripe.js created (`payment_method`: pm_…).",
            param="card",
        )

    def save_token(self, org_id: str, token: str, saved_refs: Sequence[str]) -> SavedCard:
        if not TOKEN.fullmatch(token):
            raise InvalidRequest(
                "A Stripe PaymentMethod id looks like pm_… (Stripe.js's createPaymentMethod).",
                param="payment_method",
            )
        customer = next(
            (ref.partition("/")[0] for ref in saved_refs if ref.startswith("cus_")), None
        )
        try:
            if customer is None:
                # Keyed by the token too: a form sent twice makes one Customer, not two.
                customer = self._client.v1.customers.create(
                    {"metadata": {"org_id": org_id}, "description": f"keyplane {org_id}"},
                    {"idempotency_key": f"keyplane-customer:{org_id}:{token}"},
                ).id
            method = self._client.v1.payment_methods.attach(token, {"customer": customer})
        except stripe.CardError as exc:  # (the card's issuer may refuse it as it is attached)
            raise InvalidRequest(
                decline_message(_decline_code(exc)), param="payment_method"
            ) from None
        except stripe.InvalidRequestError as exc:
            raise InvalidRequest(
                f"Stripe refused this payment method: {exc.user_message or 'unknown to it'}",
                param="payment_method",
            ) from None
        except stripe.StripeError as exc:
            _log_failure("saving a payment method", exc)
            raise InvalidRequest(
                "Stripe could not be reached, so the card was not saved: try again in a moment.",
                param="payment_method",
            ) from None
        card = method.card
        if method.type != "card" or card is None:
            raise InvalidRequest("keyplane takes cards only.", param="payment_method")
        return SavedCard(
            f"{customer}/{method.id}", card.brand or "card", card.last4 or "????",
            card.exp_month, card.exp_year,
        )  # fmt: skip

    # -- charging ---------------------------------------------------------------------------
    def charge(
        self, provider_ref: str, amount: int, idempotency_key: str, *, org_id: str, kind: str
    ) -> Charged:
        customer, _, method = provider_ref.partition("/")
        if not (customer.startswith("cus_") and method.startswith("pm_")):
            return Charged("processing_error")  # saved with another provider (the sandbox's sbx_…)
        if amount <= 0 or amount % 10_000:
            raise ValueError("a charge is a positive amount of whole cents")
        params: stripe.params.PaymentIntentCreateParams = {
            "amount": amount // 10_000, "currency": "usd", "customer": customer,
            "payment_method": method, "off_session": True, "confirm": True,
            "description": KINDS.get(kind, "keyplane"),
            "metadata": {"org_id": org_id, "kind": kind, "charge_key": idempotency_key},
        }  # fmt: skip
        try:
            intent = self._client.v1.payment_intents.create(
                params, {"idempotency_key": idempotency_key}
            )
        except stripe.CardError as exc:
            return Charged(_decline_code(exc), _declined_intent(exc))
        except stripe.StripeError as exc:
            _log_failure("charging", exc)
            return Charged("processing_error")
        if intent.status == "succeeded":
            return Charged(None, intent.id)
        if intent.status == "requires_action":  # 3-D Secure: the cardholder is not here
            self._cancel(intent.id)
            return Charged("authentication_required", intent.id)
        log.warning("Stripe PaymentIntent %s is %s, not succeeded", intent.id, intent.status)
        return Charged("processing_error", intent.id)

    def _cancel(self, intent_id: str) -> None:
        """Cancels a payment left waiting for the cardholder: nothing can complete it later."""
        try:
            self._client.v1.payment_intents.cancel(intent_id)
        except stripe.StripeError as exc:  # (canceled already: the same charge run again)
            _log_failure(f"canceling {intent_id}", exc)

    # -- the webhook ------------------------------------------------------------------------
    def event(self, payload: bytes, signature: str) -> PaidCharge | ProviderReport | None:
        """What a signed event reports: a keyplane charge paid (``payment_intent.succeeded``), a
        charge refunded (``charge.refunded``; a refund's own events: ``refund.created``,
        ``refund.updated``, ``refund.failed``, ``charge.refund.updated``), a dispute opened,
        changed or closed (``charge.dispute.*``); None for any other event, and for a payment
        keyplane did not make (a refund or a dispute: ``PaymentService.reverse`` finds the
        payment by its PaymentIntent, or not). Raises InvalidRequest when the ``Stripe-Signature``
        is missing, wrong or too old for this body and the webhook secret."""
        if self._webhook_secret is None:
            raise InvalidRequest("keyplane has no Stripe webhook secret to check events with.")
        try:
            stripe.WebhookSignature.verify_header(
                payload, signature, self._webhook_secret, SIGNATURE_TOLERANCE_S
            )
            event = json.loads(payload)
        except (stripe.SignatureVerificationError, ValueError):  # (ValueError: not UTF-8, JSON)
            raise InvalidRequest(
                "The Stripe-Signature header does not sign this body with keyplane's webhook "
                "secret, or is older than 5 minutes.",
                param="Stripe-Signature",
            ) from None
        if not isinstance(event, dict):
            return None
        obj = (event.get("data") or {}).get("object")
        kind, event_id, created = event.get("type"), event.get("id"), event.get("created")
        if not isinstance(obj, dict) or not isinstance(event_id, str) or not event_id:
            return None
        at = created if type(created) is int and created > 0 else None
        if kind == "payment_intent.succeeded":
            return _paid(obj)
        if kind in REFUND_EVENTS:
            # The charge's refunds as they are now are asked for (``amount_refunded``): this
            # copy may be older than one applied already, or a refund of it may have failed since.
            charge = obj.get("id") if obj.get("object") == "charge" else _id(obj.get("charge"))
            intent = _id(obj.get("payment_intent"))
            if not (isinstance(charge, str) and charge and intent):
                return None
            return ProviderReport(event_id, "refund", intent, charge, None, at=at)
        if kind in DISPUTE_EVENTS:
            dispute, intent, cents = (
                obj.get("id"),
                _id(obj.get("payment_intent")),
                obj.get("amount"),
            )
            status = obj.get("status")
            if not (
                isinstance(dispute, str) and dispute and intent and isinstance(status, str)
                and obj.get("currency") == "usd"
                and isinstance(cents, int) and not isinstance(cents, bool)
            ):  # fmt: skip
                return None
            return ProviderReport(event_id, "dispute", intent, dispute, cents * 10_000, status, at)
        return None

    def paid_charge(self, payment_ref: str) -> PaidCharge | None:
        """The keyplane charge the PaymentIntent ``payment_ref`` paid, as Stripe has it now: what
        its ``payment_intent.succeeded`` reports (the same metadata), for a refund's or a
        dispute's event that came before that one (``PaymentService.reverse``). None when it is no
        paid charge of keyplane's (another system's sharing the account, one Stripe does not
        know). Raises StoreUnavailable when Stripe cannot say: the webhook answers 503, and Stripe
        sends the event again later."""
        try:
            intent = self._client.v1.payment_intents.retrieve(payment_ref)
        except stripe.StripeError as exc:
            if isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404:
                return None
            _log_failure(f"reading payment {payment_ref}", exc)
            raise StoreUnavailable(_UNASKED) from None
        # (A refunded or disputed PaymentIntent stays "succeeded": its money was taken.)
        return _paid(intent.to_dict()) if intent.status == "succeeded" else None

    def amount_refunded(self, charge_id: str) -> int:
        """The charge's amount refunded so far (micro-dollars), as Stripe has it now (a failed
        refund no longer counts). Raises StoreUnavailable when Stripe cannot say: the webhook
        answers 503, and Stripe sends the event again later."""
        try:
            charge = self._client.v1.charges.retrieve(charge_id)
        except stripe.StripeError as exc:
            _log_failure(f"reading charge {charge_id}", exc)
            raise StoreUnavailable(
                "Stripe could not be asked for the charge's refunds; the event is taken again "
                "when Stripe sends it again."
            ) from None
        if charge.currency != "usd":
            raise StoreUnavailable(f"Stripe's charge {charge_id} is not in US dollars.")
        return int(charge.amount_refunded) * 10_000


def _paid(intent: dict[str, Any]) -> PaidCharge | None:
    """The keyplane charge a ``payment_intent.succeeded`` event reports paid (None: not one)."""
    meta = intent.get("metadata") or {}
    org_id, kind, key = meta.get("org_id"), meta.get("kind"), meta.get("charge_key")
    customer, method = _id(intent.get("customer")), _id(intent.get("payment_method"))
    cents = intent.get("amount")
    if not (
        isinstance(org_id, str) and isinstance(kind, str) and isinstance(key, str)
        and customer and method and intent.get("currency") == "usd"
        and isinstance(cents, int) and not isinstance(cents, bool)
    ):  # fmt: skip
        return None
    created = intent.get("created")
    return PaidCharge(
        org_id=org_id, kind=kind, key=key, amount=cents * 10_000,
        provider_ref=f"{customer}/{method}", payment_ref=str(intent.get("id", "")),
        charged_at=created if type(created) is int and created > 0 else None,
    )  # fmt: skip


def _id(value: object) -> str:
    """An object's id, whether Stripe sent the id or the object (expanded)."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _decline_code(exc: stripe.CardError) -> str:
    """The most telling code of a card error: the issuer's decline code, else Stripe's code."""
    decline = exc.error.decline_code if exc.error is not None else None
    return decline or exc.code or "card_declined"


def _declined_intent(exc: stripe.CardError) -> str | None:
    """The id of the PaymentIntent a card error declined, when Stripe's error names it."""
    intent = exc.error.payment_intent if exc.error is not None else None
    ref = getattr(intent, "id", None)
    return ref if isinstance(ref, str) and ref else None


def _log_failure(doing: str, exc: stripe.StripeError) -> None:
    # The kind, status, code and request id: enough to find it in Stripe's logs; never the
    # message, which may quote what was sent.
    log.warning(
        "Stripe failed %s: %s (status %s, code %s, request %s)",
        doing, type(exc).__name__, exc.http_status, exc.code, exc.request_id,
    )  # fmt: skip
