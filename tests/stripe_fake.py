"""A stand-in for Stripe's API (serve it in a ``ServerThread``), for the real SDK to talk to: what
keyplane calls, answered in Stripe's shapes — Customers, attaching a PaymentMethod, PaymentIntents
created with ``confirm``/``off_session`` (succeeded; a 402 ``card_error`` with ``code`` and
``decline_code`` for a decline; ``requires_action`` for 3-D Secure), cancel — and Stripe's
idempotency: the same ``Idempotency-Key`` answers the first answer again (``Idempotent-Replayed``)
and does nothing more; with other parameters, a 400 ``idempotency_error``.

``card(...)`` plays Stripe.js: it makes the PaymentMethod a browser would, and returns its id.
``charges`` are the PaymentIntents that took money; ``requests`` every call received. ``stop()``
makes Stripe unreachable.

Refunds and disputes play what an operator or a cardholder does in Stripe's Dashboard or bank:
``refund`` refunds part or all of a paid PaymentIntent's charge (``amount_refunded`` grows, as
Stripe keeps it), ``fail_refund`` fails one (it no longer counts), ``dispute`` opens a dispute
and ``close_dispute`` settles it; each returns the object as the event Stripe sends then carries
it (a copy: later changes do not show in it). The API answers ``GET /v1/charges/{id}`` and
``GET /v1/payment_intents/{id}`` with the charge and the PaymentIntent as they are now."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from kptest import ServerThread, read_body

SECRET_KEY = "sk_test_fake_" + "k" * 24
PUBLISHABLE_KEY = "pk_test_fake_" + "p" * 24
WEBHOOK_SECRET = "whsec_" + "w" * 32
# Declines as Stripe's test cards answer them: the error's code, the issuer's decline code, the
# message. "authentication_required": off-session, a card that needs 3-D Secure (Stripe fails it
# at once); "requires_action" (below) is the PaymentIntent that waits for the cardholder instead.
DECLINES = {
    "card_declined": ("card_declined", "generic_decline", "Your card was declined."),
    "insufficient_funds": ("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "expired_card": ("expired_card", "expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."),
    "authentication_required": (
        "authentication_required", "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
}  # fmt: skip
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):04d}{secrets.token_hex(6)}"


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    replayed: bool


@dataclass
class FakeStripe:
    secret_key: str = SECRET_KEY
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    charge_objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # ch id → Charge
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    outcomes: dict[str, str | None] = field(default_factory=dict)  # pm id → decline code
    _replies: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)
    _server: ServerThread | None = None

    # -- what tests use ---------------------------------------------------------------------
    def start(self) -> FakeStripe:
        self._server = ServerThread(self).start()
        return self

    def stop(self) -> None:
        """Stripe unreachable from now on (connections refused); again: nothing more."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def card(
        self, brand: str = "visa", last4: str = "4242", *, exp: tuple[int, int] = (12, 2034),
        outcome: str | None = None,
    ) -> str:  # fmt: skip
        """What Stripe.js's createPaymentMethod does in the browser: a PaymentMethod, not yet
        attached to a Customer. ``outcome``: a DECLINES key, "requires_action", or None (paid)."""
        pm = new_id("pm")
        self.methods[pm] = {
            "id": pm, "object": "payment_method", "type": "card", "customer": None,
            "livemode": False, "created": int(time.time()), "metadata": {},
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {
                "brand": brand, "last4": last4, "exp_month": exp[0], "exp_year": exp[1],
                "country": "US", "funding": "credit", "fingerprint": secrets.token_hex(8),
                "checks": {"cvc_check": "pass", "address_line1_check": None,
                           "address_postal_code_check": None},
            },
        }  # fmt: skip
        self.outcomes[pm] = outcome
        return pm

    @property
    def charges(self) -> list[dict[str, Any]]:
        """The PaymentIntents that took money."""
        return [pi for pi in self.intents.values() if pi["status"] == "succeeded"]

    def charge_of(self, intent: dict[str, Any]) -> dict[str, Any]:
        """The Charge of a paid PaymentIntent, as it is now (a copy)."""
        return _copy(self.charge_objects[intent["latest_charge"]])

    def refund(self, intent: dict[str, Any], cents: int | None = None) -> dict[str, Any]:
        """Refunds ``cents`` (all that is left: None) of the PaymentIntent's charge, as an
        operator does in Stripe's Dashboard; returns the Refund (``refund.created``'s object).
        The Charge ``charge.refunded`` carries then is ``charge_of(intent)``."""
        charge = self.charge_objects[intent["latest_charge"]]
        amount = charge["amount"] - charge["amount_refunded"] if cents is None else cents
        assert 0 < amount <= charge["amount"] - charge["amount_refunded"]
        re = new_id("re")
        self.refunds[re] = {
            "id": re, "object": "refund", "amount": amount, "charge": charge["id"],
            "payment_intent": intent["id"], "currency": "usd", "created": int(time.time()),
            "status": "succeeded", "reason": "requested_by_customer", "metadata": {},
            "failure_reason": None, "balance_transaction": new_id("txn"),
            "destination_details": {"type": "card", "card": {"type": "refund"}},
        }  # fmt: skip
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return _copy(self.refunds[re])

    def fail_refund(self, refund_id: str) -> dict[str, Any]:
        """The card's issuer refuses the refund (a closed account): Stripe marks it failed and
        takes it off the charge's ``amount_refunded``; returns the Refund as ``refund.failed`` and
        ``charge.refund.updated`` carry it."""
        refund = self.refunds[refund_id]
        assert refund["status"] == "succeeded"
        charge = self.charge_objects[refund["charge"]]
        refund.update(status="failed", failure_reason="expired_or_canceled_card")
        charge["amount_refunded"] -= refund["amount"]
        charge["refunded"] = False
        return _copy(refund)

    def dispute(self, intent: dict[str, Any], cents: int | None = None) -> dict[str, Any]:
        """The cardholder disputes the charge with their bank (``charge.dispute.created``'s
        object): Stripe withdraws the amount disputed."""
        charge = self.charge_objects[intent["latest_charge"]]
        du = new_id("du")
        self.disputes[du] = {
            "id": du, "object": "dispute", "amount": charge["amount"] if cents is None else cents,
            "charge": charge["id"], "payment_intent": intent["id"], "currency": "usd",
            "created": int(time.time()), "status": "needs_response", "reason": "fraudulent",
            "is_charge_refundable": False, "livemode": False, "metadata": {},
            "balance_transactions": [], "evidence_details": {
                "due_by": int(time.time()) + 7 * 86400, "has_evidence": False,
                "past_due": False, "submission_count": 0,
            },
        }  # fmt: skip
        charge["disputed"] = True
        return _copy(self.disputes[du])

    def close_dispute(self, dispute_id: str, status: str) -> dict[str, Any]:
        """The bank decides (``status``: "won", "lost"); returns ``charge.dispute.closed``'s
        object."""
        self.disputes[dispute_id]["status"] = status
        return _copy(self.disputes[dispute_id])

    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path)]

    # -- the API ----------------------------------------------------------------------------
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, answer, replayed = self._answer(scope["method"], scope["path"], body, headers)
        out = [(b"content-type", b"application/json"), (b"request-id", new_id("req").encode())]
        if replayed:
            out.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": answer})

    def _answer(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, bool]:
        params = _form(body.decode())
        key = headers.get("idempotency-key")
        if headers.get("authorization") != f"Bearer {self.secret_key}":
            self.requests.append(Request(method, path, params, key, False))
            return 401, _error("invalid_request_error", "Invalid API Key provided."), False
        if method == "POST" and key:
            digest = hashlib.sha256(f"{path} {body.decode()}".encode()).hexdigest()
            if key in self._replies:
                self.requests.append(Request(method, path, params, key, True))
                first, status, answer = self._replies[key]
                if first != digest:
                    message = (
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request."
                    )
                    return 400, _error("idempotency_error", message), False
                return status, answer, True
        self.requests.append(Request(method, path, params, key, False))
        status, reply = self._route(method, path.split("/")[2:], params)
        answer = json.dumps(reply).encode()
        if method == "POST" and key:
            self._replies[key] = (digest, status, answer)
        return status, answer, False

    def _route(
        self, method: str, parts: list[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        match (method, parts):
            case ("POST", ["customers"]):
                cus = new_id("cus")
                self.customers[cus] = {
                    "id": cus, "object": "customer", "created": int(time.time()),
                    "description": params.get("description"), "email": None,
                    "livemode": False, "metadata": params.get("metadata", {}),
                    "invoice_settings": {"default_payment_method": None},
                }  # fmt: skip
                return 200, self.customers[cus]
            case ("POST", ["payment_methods", pm, "attach"]):
                return self._attach(pm, params)
            case ("GET", ["payment_methods", pm]) if pm in self.methods:
                return 200, self.methods[pm]
            case ("GET", ["charges", ch]) if ch in self.charge_objects:
                return 200, self.charge_objects[ch]
            case ("GET", ["charges", ch]):
                return 404, _missing(f"No such charge: '{ch}'", "id")
            case ("GET", ["payment_intents", pi]) if pi in self.intents:
                return 200, self.intents[pi]
            case ("GET", ["payment_intents", pi]):
                return 404, _missing(f"No such payment_intent: '{pi}'", "intent")
            case ("POST", ["payment_intents"]):
                return self._create_intent(params)
            case ("POST", ["payment_intents", pi, "cancel"]) if pi in self.intents:
                intent = self.intents[pi]
                if intent["status"] in ("succeeded", "canceled"):
                    message = (
                        "You cannot cancel this PaymentIntent because it has a status of "
                        f"{intent['status']}."
                    )
                    return 400, _error_obj("invalid_request_error", message, intent)
                intent.update(status="canceled", canceled_at=int(time.time()), next_action=None)
                return 200, intent
        return 404, _error_obj(
            "invalid_request_error", f"Unrecognized request URL ({method}: /v1/{'/'.join(parts)})."
        )

    def _attach(self, pm: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        method, customer = self.methods.get(pm), params.get("customer")
        if method is None:
            return 404, _missing(f"No such PaymentMethod: '{pm}'", "payment_method")
        if customer not in self.customers:
            return 404, _missing(f"No such customer: '{customer}'", "customer")
        if method["customer"] not in (None, customer):
            message = "The payment method you provided has already been attached to a customer."
            return 400, _error_obj("invalid_request_error", message)
        method["customer"] = customer
        return 200, method

    def _create_intent(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pm, customer = params.get("payment_method"), params.get("customer")
        method = self.methods.get(str(pm))
        if method is None:
            return 404, _missing(f"No such PaymentMethod: '{pm}'", "payment_method")
        if method["customer"] != customer:
            message = (
                f"The provided PaymentMethod {pm} was previously used without being attached "
                "to a Customer or was detached from a Customer, and may not be used again."
            )
            return 400, _error_obj("invalid_request_error", message)
        amount = int(params["amount"])
        if amount < 50:
            return 400, _error_obj("invalid_request_error", "Amount must be at least $0.50 usd")
        assert params.get("confirm") == "true" and params.get("off_session") == "true"
        pi = new_id("pi")
        intent: dict[str, Any] = {
            "id": pi, "object": "payment_intent", "amount": amount, "amount_received": 0,
            "currency": params["currency"], "customer": customer, "payment_method": pm,
            "confirmation_method": "automatic", "capture_method": "automatic_async",
            "created": int(time.time()), "description": params.get("description"),
            "livemode": False, "metadata": params.get("metadata", {}), "next_action": None,
            "status": "requires_payment_method", "last_payment_error": None,
            "latest_charge": None, "payment_method_types": ["card"], "canceled_at": None,
            "client_secret": f"{pi}_secret_{secrets.token_hex(8)}",
        }  # fmt: skip
        self.intents[pi] = intent
        outcome = self.outcomes.get(str(pm))
        if outcome == "requires_action":
            intent.update(status="requires_action", next_action={"type": "use_stripe_sdk"})
            return 200, intent
        if outcome is not None:
            code, decline, message = DECLINES[outcome]
            charge = new_id("ch")
            error = {
                "charge": charge, "code": code, "decline_code": decline,
                "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
                "message": message, "payment_method": method, "type": "card_error",
            }  # fmt: skip
            intent.update(last_payment_error=error, latest_charge=charge)
            return 402, {"error": {**error, "payment_intent": intent}}
        charge = new_id("ch")
        intent.update(status="succeeded", amount_received=amount, latest_charge=charge)
        self.charge_objects[charge] = {
            "id": charge, "object": "charge", "amount": amount, "amount_captured": amount,
            "amount_refunded": 0, "currency": intent["currency"], "customer": customer,
            "payment_intent": pi, "payment_method": pm, "paid": True, "captured": True,
            "refunded": False, "disputed": False, "status": "succeeded",
            "created": intent["created"], "livemode": False, "metadata": {},
            "description": intent["description"], "balance_transaction": new_id("txn"),
            "failure_code": None, "failure_message": None,
        }  # fmt: skip
        return 200, intent


# -- webhooks -------------------------------------------------------------------------------------
def event(kind: str, obj: dict[str, Any]) -> bytes:
    """An event as Stripe posts it to a webhook endpoint."""
    return json.dumps({
        "id": new_id("evt"), "object": "event", "api_version": "2025-01-27.acacia",
        "created": int(time.time()), "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None}, "type": kind,
        "data": {"object": obj},
    }).encode()  # fmt: skip


def signature(payload: bytes, secret: str = WEBHOOK_SECRET, *, at: int | None = None) -> str:
    """The Stripe-Signature header: ``t=<time>,v1=<HMAC-SHA256(secret, "<time>.<payload>")>``."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


# -- Stripe's shapes --------------------------------------------------------------------------------
def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(obj))
    return copied


def _form(text: str) -> dict[str, Any]:
    """An application/x-www-form-urlencoded body, ``a[b]=c`` nested as Stripe reads it."""
    params: dict[str, Any] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        head, _, rest = name.partition("[")
        if rest:
            params.setdefault(head, {})[rest.rstrip("]")] = value
        else:
            params[name] = value
    return params


def _error_obj(kind: str, message: str, intent: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if intent is not None:
        error["payment_intent"] = intent
    return {"error": error}


def _error(kind: str, message: str) -> bytes:
    return json.dumps(_error_obj(kind, message)).encode()


def _missing(message: str, param: str) -> dict[str, Any]:
    return {"error": {"type": "invalid_request_error", "code": "resource_missing",
                      "message": message, "param": param}}  # fmt: skip
