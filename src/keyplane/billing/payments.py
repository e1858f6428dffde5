"""Paying for credits (BRIEF C5): payment methods, credit purchases, auto-recharge, billing history.

A payment provider charges a saved payment method; keyplane stores only what identifies the method
to a person (brand, last four digits, expiry) and to the provider (its reference), never a card
number or a CVC. ``SandboxProvider`` is the offline default: it takes the public test card numbers
and checks them as a card form would (Luhn, expiry, CVC). A successful charge becomes a credit lot
(a purchase: non-refundable, expiring a year later, counted toward usage tiers); every charge,
successful or not, is a line of the billing history.

Every charge carries an idempotency key (the client's ``Idempotency-Key``, or the recharge job's id),
so a retried request or a recharge picked up again after a crash never charges twice."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from keyplane.audit.models import Actor, ActorType
from keyplane.audit.service import AuditService
from keyplane.billing.ports import Claim, Done
from keyplane.billing.service import BillingService
from keyplane.clock import Clock
from keyplane.errors import InvalidRequest, KeyplaneError, NotFound
from keyplane.ids import new_id, ordered_id
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish, publish_nowhere

MAX_METHODS = 10  # saved payment methods per organization
RECHARGE_RETRY_S = 3600  # a declined auto-recharge is tried again this much later
RECHARGE_LEASE_S = 600  # a recharge claimed by a process that died is taken over after this
SYSTEM = Actor(ActorType.SYSTEM, "auto-recharge")


class PaymentFailed(KeyplaneError):
    """The provider refused the charge; ``code`` is Stripe's decline code (``card_declined``…)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CardDetails:
    """What a person types into the card form; handed to the provider, never stored."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str

    def __repr__(self) -> str:  # (never the number or the CVC, should it reach a log line)
        return f"CardDetails(…{self.number[-4:]}, {self.exp_month:02d}/{self.exp_year})"


@dataclass(frozen=True, slots=True)
class SavedCard:
    """What a provider gives back for a card it saved: its reference and what may be shown."""

    provider_ref: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    id: str
    org_id: str
    provider: str
    provider_ref: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool
    created_at: int


@dataclass(frozen=True, slots=True)
class Payment:
    """A line of the billing history: a charge and what it bought."""

    id: str
    org_id: str
    kind: str  # "purchase" | "recharge"
    amount: int  # micro-dollars
    status: str  # "succeeded" | "failed"
    method_id: str
    brand: str
    last4: str
    failure: str | None  # the provider's decline code
    lot_id: str | None  # the credit lot a successful charge bought
    created_at: int


@dataclass(frozen=True, slots=True)
class RechargeJob:
    id: str
    org_id: str
    target: int
    attempts: int


class PaymentProvider(Protocol):
    name: str

    def save_card(self, card: CardDetails, now: float) -> SavedCard:
        """Checks the card and saves it with the provider. Raises InvalidRequest (a bad number,
        expiry or CVC, with ``param``)."""
        ...

    def charge(self, provider_ref: str, amount: int, idempotency_key: str) -> str | None:
        """Charges ``amount`` micro-dollars (whole cents); None when it succeeded, else the
        decline code. The same ``idempotency_key`` never charges twice."""
        ...


class PaymentStore(Protocol):
    def add_method(self, method: PaymentMethod) -> None:
        """Stores a method; when it is the default, the organization's other methods stop being."""
        ...

    def methods(self, org_id: str) -> Sequence[PaymentMethod]:
        """The organization's saved methods, the default first, then the newest."""
        ...

    def remove_method(self, org_id: str, method_id: str, at: int) -> bool: ...

    def set_default(self, org_id: str, method_id: str) -> bool: ...

    def add_payment(self, payment: Payment, done: Done | None = None) -> None:
        """Stores a line of the history, and completes ``done``'s claim in the same transaction
        (ClaimLost: nothing stored)."""
        ...

    def payments(self, org_id: str, limit: int) -> Sequence[Payment]:
        """The organization's charges, newest first."""
        ...

    def payment(self, org_id: str, payment_id: str) -> Payment | None:
        """One of the organization's charges (None: no such id, or another organization's)."""
        ...

    def claim_recharges(self, now: int, lease_s: int) -> Sequence[RechargeJob]:
        """Leases the pending recharge jobs that are due (never one another process holds)."""
        ...

    def finish_recharge(self, job_id: str, status: str, at: int) -> None:
        """Ends a job: "succeeded", "failed" or "skipped" (no longer needed)."""
        ...

    def retry_recharge(self, job_id: str, not_before: int) -> None:
        """Puts a claimed job back, due at ``not_before``, one attempt more."""
        ...


# -- the sandbox --------------------------------------------------------------------------------

# The public test card numbers (Stripe's): brand, and the decline code a charge gets (None: paid).
TEST_CARDS: dict[str, tuple[str, str | None]] = {
    "4242424242424242": ("visa", None),
    "4000056655665556": ("visa", None),  # debit
    "5555555555554444": ("mastercard", None),
    "2223003122003222": ("mastercard", None),
    "378282246310005": ("amex", None),
    "6011111111111117": ("discover", None),
    "4000000000000002": ("visa", "card_declined"),
    "4000000000009995": ("visa", "insufficient_funds"),
    "4000000000000069": ("visa", "expired_card"),
    "4000000000000127": ("visa", "incorrect_cvc"),
}


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def luhn_valid(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        digit = int(ch)
        if i % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def check_card(card: CardDetails, now: float) -> str:
    """The card's digits, checked as a card form checks them. Raises InvalidRequest."""
    number = card.number.replace(" ", "").replace("-", "")
    # ASCII digits only: str.isdigit() also takes "²" or "٣", which int() then refuses (a 500).
    if not _digits(number) or not 12 <= len(number) <= 19 or not luhn_valid(number):
        raise InvalidRequest("Your card number is incorrect.", param="number")
    today = dt.datetime.fromtimestamp(now, dt.UTC)
    if not 1 <= card.exp_month <= 12:
        raise InvalidRequest("Your card's expiration month is invalid.", param="exp_month")
    if not today.year <= card.exp_year <= today.year + 50 or (
        card.exp_year == today.year and card.exp_month < today.month
    ):
        raise InvalidRequest("Your card's expiration date is in the past.", param="exp_year")
    cvc_len = 4 if number.startswith(("34", "37")) else 3
    if not _digits(card.cvc) or len(card.cvc) != cvc_len:
        raise InvalidRequest(f"Your card's security code must be {cvc_len} digits.", param="cvc")
    return number


class SandboxProvider:
    """The offline provider: only the public test card numbers; their charges succeed or decline
    as the number says (``TEST_CARDS``), whatever the amount. Nothing leaves the process."""

    name = "sandbox"

    def save_card(self, card: CardDetails, now: float) -> SavedCard:
        number = check_card(card, now)
        if number not in TEST_CARDS:
            raise InvalidRequest(
                "The sandbox payment provider takes test cards only (e.g. 4242 4242 4242 4242; "
                "4000 0000 0000 0002 is declined): configure a real provider to take real cards.",
                param="number",
            )
        brand, outcome = TEST_CARDS[number]
        # The reference says how its charges end; it identifies no card.
        ref = f"sbx_{outcome or 'ok'}_{secrets.token_hex(8)}"
        return SavedCard(ref, brand, number[-4:], card.exp_month, card.exp_year)

    def charge(self, provider_ref: str, amount: int, idempotency_key: str) -> str | None:
        if not provider_ref.startswith("sbx_"):
            return "processing_error"
        outcome = provider_ref[4:].rsplit("_", 1)[0]
        return None if outcome == "ok" else outcome


# -- the service --------------------------------------------------------------------------------

_DECLINES = {
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
}


def decline_message(code: str) -> str:
    return _DECLINES.get(code, "The payment could not be processed.")


@dataclass(frozen=True, slots=True)
class PurchaseBounds:
    """A credit purchase's amount (BRIEF C5: $5-$100 by default), in whole cents."""

    minimum: int = 5_000_000
    maximum: int = 100_000_000


def _usd(micro: int) -> str:
    return f"${micro / 1_000_000:,.2f}"


class PaymentService:
    def __init__(
        self,
        store: PaymentStore,
        billing: BillingService,
        provider: PaymentProvider,
        clock: Clock,
        *,
        audit: AuditService,
        outbox: Outbox,
        owner_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        promote: Callable[[str], object],
        bounds: PurchaseBounds = PurchaseBounds(),
        max_recharge_attempts: int = 3,
        publish: Publish = publish_nowhere,
    ) -> None:
        self._publish = publish
        self._store = store
        self._billing = billing
        self._provider = provider
        self._clock = clock
        self._audit = audit
        self._outbox = outbox
        self._owner_emails = owner_emails
        self._org_name = org_name
        self._promote = promote
        self.bounds = bounds
        self.max_recharge_attempts = max_recharge_attempts

    # -- payment methods -------------------------------------------------------------------
    def add_method(
        self, org_id: str, card: CardDetails, *, make_default: bool = True
    ) -> PaymentMethod:
        """Saves a card with the provider; the first one, or any ``make_default``, becomes the
        default (what purchases and auto-recharge charge). Raises InvalidRequest."""
        existing = self._store.methods(org_id)
        if len(existing) >= MAX_METHODS:
            raise InvalidRequest(f"An organization keeps at most {MAX_METHODS} payment methods.")
        now = self._clock.now()
        saved = self._provider.save_card(card, now)
        method = PaymentMethod(
            id=ordered_id("pm_"), org_id=org_id, provider=self._provider.name,
            provider_ref=saved.provider_ref, brand=saved.brand, last4=saved.last4,
            exp_month=saved.exp_month, exp_year=saved.exp_year,
            is_default=make_default or not existing, created_at=int(now),
        )  # fmt: skip
        self._store.add_method(method)
        return method

    def methods(self, org_id: str) -> Sequence[PaymentMethod]:
        return self._store.methods(org_id)

    def method(self, org_id: str, method_id: str) -> PaymentMethod:
        found = next((m for m in self._store.methods(org_id) if m.id == method_id), None)
        if found is None:
            raise NotFound(f"No payment method '{method_id}'.", param="payment_method")
        return found

    def remove_method(self, org_id: str, method_id: str) -> PaymentMethod:
        """Removes a method; if it was the default, the newest other one becomes the default."""
        method = self.method(org_id, method_id)
        self._store.remove_method(org_id, method_id, int(self._clock.now()))
        rest = self._store.methods(org_id)
        if method.is_default and rest:
            self._store.set_default(org_id, rest[0].id)
        return method

    def set_default(self, org_id: str, method_id: str) -> PaymentMethod:
        self.method(org_id, method_id)
        self._store.set_default(org_id, method_id)
        return self.method(org_id, method_id)

    # -- charges ---------------------------------------------------------------------------
    def check_amount(self, amount: int) -> None:
        low, high = self.bounds.minimum, self.bounds.maximum
        if amount % 10_000:
            raise InvalidRequest("An amount is in whole cents.", param="amount")
        if not low <= amount <= high:
            raise InvalidRequest(
                f"A credit purchase is between {_usd(low)} and {_usd(high)}.", param="amount"
            )

    def purchase(
        self, org_id: str, amount: int, *, method_id: str | None = None,
        idempotency_key: str | None = None, on_charged: Callable[[Payment], None] | None = None,
    ) -> Payment:  # fmt: skip
        """Charges the method (the default one unless given) and adds the credit it bought.
        A replayed ``idempotency_key`` returns the first payment and charges nothing;
        ``on_charged`` runs once per charge, declined too, not on a replay (the audit log's entry).

        Raises InvalidRequest (amount, no method), NotFound (method), PaymentFailed (declined:
        recorded in the history, nothing credited), IdempotencyKeyReused."""
        self.check_amount(amount)
        # The request's parameters, not the method they resolve to: a retry after the default
        # changed (or the card was removed) is still the same request and replays its payment.
        params = {"amount": amount, "method": method_id}

        def run(claim: Claim | None) -> Payment:
            method = self._charged_method(org_id, method_id)
            payment = self._charge(
                org_id, method, amount, "purchase", idempotency_key or new_id("ik_"), claim
            )
            if on_charged is not None:
                on_charged(payment)
            return payment

        payment = self._billing.idempotent(
            f"purchase:{org_id}", idempotency_key, params, run, _payment_from_json
        )
        if payment.status != "succeeded":
            raise PaymentFailed(decline_message(payment.failure or ""), code=payment.failure or "")
        return payment

    def _charged_method(self, org_id: str, method_id: str | None) -> PaymentMethod:
        if method_id is not None:
            return self.method(org_id, method_id)
        methods = self._store.methods(org_id)
        if not methods:
            raise InvalidRequest(
                "Add a payment method first (Billing → Payment methods).", param="payment_method"
            )
        return methods[0]

    def _charge(
        self, org_id: str, method: PaymentMethod, amount: int, kind: str, key: str,
        claim: Claim | None = None,
    ) -> Payment:  # fmt: skip
        """One charge and its line in the history (completing ``claim``); the credit lot when it
        succeeded. Run again with the same ``key`` (a claim taken over after a crash), it charges
        nothing more (the provider's idempotency) and credits nothing more (the lot's own key)."""
        now = int(self._clock.now())
        scoped = hashlib.sha256(f"{org_id}:{kind}:{key}".encode()).hexdigest()[:40]
        failure = self._provider.charge(method.provider_ref, amount, scoped)
        lot_id = None
        if failure is None:
            lot = self._billing.record_purchase(org_id, amount, idempotency_key=f"pay:{scoped}")
            lot_id = lot.id
        payment = Payment(
            id=ordered_id("pay_"), org_id=org_id, kind=kind, amount=amount,
            status="succeeded" if failure is None else "failed", method_id=method.id,
            brand=method.brand, last4=method.last4, failure=failure, lot_id=lot_id,
            created_at=now,
        )  # fmt: skip
        self._store.add_payment(
            payment, None if claim is None else claim.done(_payment_json(payment))
        )
        if failure is None:
            self._promote(org_id)
        return payment

    def history(self, org_id: str, limit: int = 100) -> Sequence[Payment]:
        return self._store.payments(org_id, limit)

    def payment(self, org_id: str, payment_id: str) -> Payment:
        """One line of the history, however old (a receipt's). Raises NotFound."""
        found = self._store.payment(org_id, payment_id)
        if found is None:
            raise NotFound(f"No payment '{payment_id}'.", param="payment_id")
        return found

    # -- auto-recharge ---------------------------------------------------------------------
    def run_recharges(self) -> int:
        """Works the due recharge jobs (the spend watcher enqueues one when the balance falls
        below the threshold): buys back up to the target with the default method. A decline is
        tried again an hour later; after ``max_recharge_attempts`` declines auto-recharge is
        turned off. The Owners are emailed about each decline and the turning off. Returns how
        many jobs it finished. Blocking; raises StoreUnavailable."""
        now = int(self._clock.now())
        done = 0
        for job in self._store.claim_recharges(now, RECHARGE_LEASE_S):
            done += self._recharge(job, now)
        return done

    def _recharge(self, job: RechargeJob, now: int) -> int:
        settings = self._billing.settings(job.org_id)
        balance = self._billing.balance(job.org_id).available
        threshold = settings.recharge_threshold
        if not settings.auto_recharge or threshold is None or balance >= threshold:
            self._store.finish_recharge(job.id, "skipped", now)  # turned off, or topped up
            return 1
        amount = -(-(job.target - balance) // 10_000) * 10_000  # up to the target, whole cents
        amount = min(max(amount, self.bounds.minimum), self.bounds.maximum)
        methods = self._store.methods(job.org_id)
        if not methods:
            return self._declined(job, now, "no_payment_method", amount)
        payment = self._charge(
            job.org_id, methods[0], amount, "recharge", f"{job.id}:{job.attempts}"
        )
        if payment.status != "succeeded":
            return self._declined(job, now, payment.failure or "", amount)
        self._store.finish_recharge(job.id, "succeeded", now)
        if self._billing.balance(job.org_id).available < threshold:
            # Capped by the purchase maximum and still under: the next one a minute later, whether
            # or not requests come to notice (they may all be refused meanwhile).
            self._billing.request_recharge(job.org_id, job.target, due_at=now + 60)
        self._audit.record(
            job.org_id, SYSTEM, "billing.auto_recharged", target_id=payment.id,
            details={"data": {"amount_micro_usd": amount, "payment_method": methods[0].id}},
        )  # fmt: skip
        return 1

    def _declined(self, job: RechargeJob, now: int, code: str, amount: int) -> int:
        attempts = job.attempts + 1
        last = attempts >= self.max_recharge_attempts
        reason = (
            "there is no payment method to charge"
            if code == "no_payment_method"
            else decline_message(code).rstrip(".").lower()
        )
        if last:
            self._billing.update_settings(job.org_id, auto_recharge=False)
            self._store.finish_recharge(job.id, "failed", now)
            self._audit.record(
                job.org_id, SYSTEM, "billing.auto_recharge_disabled", target_id=job.org_id,
                details={"reason": f"{attempts} failed attempts: {reason}"},
            )  # fmt: skip
        else:
            self._store.retry_recharge(job.id, now + RECHARGE_RETRY_S)
        self._publish(
            job.org_id,
            "billing.auto_recharge_disabled" if last else "billing.auto_recharge_failed",
            {"amount_micro_usd": amount, "failure_code": code, "attempts": attempts,
             "next_attempt_at": None if last else now + RECHARGE_RETRY_S},
            f"recharge:{job.id}:{attempts}",
        )  # fmt: skip
        recipients = list(self._owner_emails(job.org_id))
        if recipients:
            name = self._org_name(job.org_id)
            subject = (
                f"[keyplane] Auto-recharge for {name} is turned off: the payment failed"
                if last
                else f"[keyplane] Auto-recharge for {name} failed: {reason}"
            )
            then = (
                f"After {attempts} failed attempts, auto-recharge is now turned off. Requests "
                "stop when the credit balance runs out. Update the payment method and buy "
                "credits, or turn auto-recharge on again, in Billing."
                if last
                else "keyplane tries again in an hour. Update the payment method in Billing "
                "to avoid running out of credits."
            )
            body = (
                f"Auto-recharge tried to buy {_usd(amount)} of credits for {name} and failed: "
                f"{reason}.\n\n{then}\n"
            )
            self._outbox.enqueue(
                f"recharge:{job.id}:{attempts}", recipients, subject, body, now=now
            )
        return int(last)


def _payment_json(p: Payment) -> str:
    return json.dumps(
        [p.id, p.org_id, p.kind, p.amount, p.status, p.method_id, p.brand, p.last4, p.failure,
         p.lot_id, p.created_at]
    )  # fmt: skip


def _payment_from_json(text: str) -> Payment:
    return Payment(*json.loads(text))
