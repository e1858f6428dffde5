"""Paying for credits (BRIEF C5): payment methods, credit purchases, auto-recharge, billing history.

A payment provider charges a saved payment method; keyplane stores only what identifies the method
to a person (brand, last four digits, expiry) and to the provider (its reference), never a card
number or a CVC. The sandbox (``billing/sandbox.py``) is the offline default: it takes the public
test card numbers, as card details. Stripe (``keyplane/stripe_payments.py``) never lets card details
reach keyplane: the browser gives them to Stripe.js, and keyplane saves the PaymentMethod id it gets
back (a token). A successful charge becomes a credit lot (a purchase: non-refundable, expiring a
year later, counted toward usage tiers); every charge, successful or not, is a line of the billing
history.

Every charge carries an idempotency key (the client's ``Idempotency-Key``, or the recharge job's id),
so a retried request or a recharge picked up again after a crash never charges twice; its credit
lot is recorded, with its line of the history in the same transaction, under a key derived from it,
so the provider's own report of the payment (Stripe's signed webhook, ``credit_paid``) credits and
lists a charge whose process died before it could, exactly once whichever comes first. A line's
audit log entry (who made the charge: the dashboard's or the Admin API's caller, auto-recharge, or
the provider's report) is written in the line's own transaction, so there is one per line whoever
writes it; and the database lets a lot have one line only (a unique index)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from keyplane.audit.models import Actor, ActorType, AuditEvent
from keyplane.audit.service import AuditService
from keyplane.billing.address import BillingAddress, address_from_json, address_json
from keyplane.billing.ports import Claim, Done
from keyplane.billing.service import BillingService
from keyplane.billing.wallet import Lot
from keyplane.clock import Clock
from keyplane.errors import IdempotencyKeyReused, InvalidRequest, KeyplaneError, NotFound
from keyplane.ids import new_id, ordered_id
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish, publish_nowhere
from keyplane.usage.pricing import format_usd

MAX_METHODS = 10  # saved payment methods per organization
RECHARGE_RETRY_S = 3600  # a declined auto-recharge is tried again this much later
RECHARGE_LEASE_S = 600  # a recharge claimed by a process that died is taken over after this
SYSTEM = Actor(ActorType.SYSTEM, "auto-recharge")
PROVIDER = Actor(ActorType.SYSTEM, "payment provider")  # its report of a payment (a webhook)
KINDS = ("purchase", "recharge")
CHARGE_KEY = re.compile(r"[0-9a-f]{40}")  # what ``_charge`` gives the provider
CREDIT_WAITS_S = (0.05, 0.2, 0.5, 1.0)  # a credit being recorded by the provider's webhook


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
    # The provider's id of the payment (Stripe: its PaymentIntent, pi_…), for its support; None
    # when it made none (the sandbox; Stripe unreachable).
    provider_ref: str | None = None
    # The billing address when the payment was made, which its receipt shows (None: none given).
    billed_to: BillingAddress | None = None


@dataclass(frozen=True, slots=True)
class Charged:
    """A provider's answer to a charge: ``failure`` None when it was paid, else the decline code;
    ``payment_ref`` its own id of the payment, when it made one (Stripe: pi_…, declined too)."""

    failure: str | None
    payment_ref: str | None = None


@dataclass(frozen=True, slots=True)
class RechargeJob:
    id: str
    org_id: str
    target: int
    attempts: int


@dataclass(frozen=True, slots=True)
class PaidCharge:
    """A charge the provider reports paid (Stripe: a signed ``payment_intent.succeeded``), with
    what keyplane gave it: the organization, the kind, the idempotency key ``_charge`` used."""

    org_id: str
    kind: str
    key: str
    amount: int  # micro-dollars
    provider_ref: str  # the method charged, as keyplane saved it
    payment_ref: str  # the provider's id of the payment (Stripe: pi_…); "" if it did not say
    charged_at: int | None = None  # when the provider made the payment, if it says


class PaymentProvider(Protocol):
    name: str

    def save_card(self, card: CardDetails, now: float) -> SavedCard:
        """Checks the card and saves it with the provider. Raises InvalidRequest (a bad number,
        expiry or CVC, with ``param``; a provider that takes no card details)."""
        ...

    def save_token(self, org_id: str, token: str, saved_refs: Sequence[str]) -> SavedCard:
        """Saves the method the provider's browser library created (Stripe: a PaymentMethod id)
        for the organization; ``saved_refs`` are its methods saved with this provider so far
        (Stripe reuses their Customer). Raises InvalidRequest (``param="payment_method"``: an
        unknown or refused token, a provider that takes no tokens)."""
        ...

    def charge(
        self, provider_ref: str, amount: int, idempotency_key: str, *, org_id: str, kind: str
    ) -> Charged:
        """Charges ``amount`` micro-dollars (whole cents) for the organization's ``kind`` of
        charge ("purchase", "recharge"): its failure None when it succeeded, else the decline
        code ("processing_error" when the provider could not be asked or answered oddly), and the
        provider's id of the payment if it made one. The same ``idempotency_key`` never charges
        twice (and answers the same payment). Never raises for the provider's failures."""
        ...


class PaymentStore(Protocol):
    def add_method(self, method: PaymentMethod) -> None:
        """Stores a method; when it is the default, the organization's other methods stop being."""
        ...

    def methods(self, org_id: str) -> Sequence[PaymentMethod]:
        """The organization's saved methods, the default first, then the newest."""
        ...

    def method_by_ref(self, org_id: str, provider_ref: str) -> PaymentMethod | None:
        """The organization's method saved with the provider's reference ``provider_ref``, even
        one removed since (None: none of its methods ever had it)."""
        ...

    def remove_method(self, org_id: str, method_id: str, at: int) -> bool: ...

    def set_default(self, org_id: str, method_id: str) -> bool: ...

    def add_payment(
        self, payment: Payment, done: Done | None = None, audit: AuditEvent | None = None
    ) -> Payment | None:
        """Stores a line of the history with its ``audit`` entry unless one with its id is stored
        already (written with its lot by ``add_purchase``: then neither), and completes ``done``'s
        claim, in one transaction (ClaimLost: nothing stored). Returns None; or, storing and
        completing nothing, the line another run stored for its lot (a lot has one line): the one
        to store in its place."""
        ...

    def add_purchase(
        self, payment: Payment, lot: Lot, note: str, source: str, done: Done | None = None,
        audit: AuditEvent | None = None,
    ) -> None:  # fmt: skip
        """Stores the credit lot a successful charge bought (as ``MoneyStore.add_lot``), the
        charge's line of the history and its ``audit`` entry in one transaction, completing
        ``done``'s claim (the lot's key) in it too (ClaimLost: nothing stored)."""
        ...

    def payment_for_lot(self, org_id: str, lot_id: str) -> Payment | None:
        """The line of the history of the charge that bought the lot (None: no line has it)."""
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


# -- the service --------------------------------------------------------------------------------

_DECLINED = "Your card was declined."
_PLAIN_DECLINES = (
    "generic_decline", "do_not_honor", "lost_card", "stolen_card", "fraudulent", "pickup_card",
    "restricted_card", "card_velocity_exceeded", "card_not_supported",
)  # fmt: skip
_DECLINES = {
    "card_declined": _DECLINED,
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "authentication_required": (
        "Your card asks for 3-D Secure authentication, which a saved card charged without you "
        "cannot give: use another card."
    ),
    "processing_error": "The payment could not be processed, so nothing was credited.",
    # Stripe's decline codes that say no more than "declined" to the cardholder (as it advises
    # for lost, stolen or fraudulent cards).
    **dict.fromkeys(_PLAIN_DECLINES, _DECLINED),
}


def decline_message(code: str) -> str:
    return _DECLINES.get(code, "The payment could not be processed.")


@dataclass(frozen=True, slots=True)
class PurchaseBounds:
    """A credit purchase's amount (BRIEF C5: $5-$100 by default), in whole cents."""

    minimum: int = 5_000_000
    maximum: int = 100_000_000


def _usd(micro: int) -> str:
    """An amount charged (whole cents) as the emails and errors say it: "$1,234.50"."""
    return "$" + format_usd(micro)


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
        billing_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        promote: Callable[[str], object],
        bounds: PurchaseBounds = PurchaseBounds(),
        max_recharge_attempts: int = 3,
        publish: Publish = publish_nowhere,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._publish = publish
        self._sleep = sleep
        self._store = store
        self._billing = billing
        self._provider = provider
        self._clock = clock
        self._audit = audit
        self._outbox = outbox
        self._billing_emails = billing_emails
        self._org_name = org_name
        self._promote = promote
        self.bounds = bounds
        self.max_recharge_attempts = max_recharge_attempts

    # -- payment methods -------------------------------------------------------------------
    @property
    def provider_name(self) -> str:
        """Who charges: "sandbox" (takes card details) or "stripe" (takes Stripe.js's tokens)."""
        return self._provider.name

    def add_method(
        self, org_id: str, card: CardDetails | str, *, make_default: bool = True
    ) -> PaymentMethod:
        """Saves a card with the provider: its details (the sandbox) or the token the provider's
        browser library made of them (Stripe: a PaymentMethod id). The first one, or any
        ``make_default``, becomes the default (what purchases and auto-recharge charge); a token
        saved already (a form sent twice) is the method saved then. Raises InvalidRequest."""
        existing = self._store.methods(org_id)
        if len(existing) >= MAX_METHODS:
            raise InvalidRequest(f"An organization keeps at most {MAX_METHODS} payment methods.")
        now = self._clock.now()
        if isinstance(card, CardDetails):
            saved = self._provider.save_card(card, now)
        else:
            mine = [m.provider_ref for m in existing if m.provider == self._provider.name]
            saved = self._provider.save_token(org_id, card, mine)
            again = next((m for m in existing if m.provider_ref == saved.provider_ref), None)
            if again is not None:
                return again
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
        self, org_id: str, amount: int, *, actor: Actor, method_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Payment:  # fmt: skip
        """Charges the method (the default one unless given) and adds the credit it bought.
        A replayed ``idempotency_key`` returns the first payment and charges nothing. The charge's
        line of the history gets its audit log entry (``credit_purchase.created``, by ``actor``,
        declined too) in its own transaction: once, not on a replay; the provider's report of the
        payment writes it (by ``PROVIDER``) when it stores the line first.

        Raises InvalidRequest (amount, no method), NotFound (method), PaymentFailed (declined:
        recorded in the history, nothing credited), IdempotencyKeyReused."""
        self.check_amount(amount)
        # The request's parameters, not the method they resolve to: a retry after the default
        # changed (or the card was removed) is still the same request and replays its payment.
        params = {"amount": amount, "method": method_id}

        def run(claim: Claim | None) -> Payment:
            method = self._charged_method(org_id, method_id)
            return self._charge(
                org_id, method, amount, "purchase", idempotency_key or new_id("ik_"), actor, claim
            )

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
        actor: Actor, claim: Claim | None = None,
    ) -> Payment:  # fmt: skip
        """One charge and its line in the history (completing ``claim``), audited as ``actor``'s;
        the credit lot when it succeeded. Run again with the same ``key`` (a claim taken over
        after a crash), it charges nothing more (the provider's idempotency) and credits nothing
        more (the lot's own key); the line a webhook or an earlier run stored with the lot is the
        one it returns."""
        now = int(self._clock.now())
        scoped = hashlib.sha256(f"{org_id}:{kind}:{key}".encode()).hexdigest()[:40]
        charged = self._provider.charge(
            method.provider_ref, amount, scoped, org_id=org_id, kind=kind
        )
        failure = charged.failure
        payment = Payment(
            id=ordered_id("pay_"), org_id=org_id, kind=kind, amount=amount,
            status="succeeded" if failure is None else "failed", method_id=method.id,
            brand=method.brand, last4=method.last4, failure=failure, lot_id=None,
            created_at=now, provider_ref=charged.payment_ref,
            billed_to=self._billing.settings(org_id).billing_address,
        )  # fmt: skip
        stored = None
        if failure is None:
            lot, stored = self._credit(payment, scoped, actor)
            # (None: a lot an older keyplane stored without its line: written below, once, as
            # it was then, under the purchase's claim.)
            payment = stored or dataclasses.replace(payment, lot_id=lot.id)
        if stored is None or claim is not None:
            # The line unless ``_credit`` stored it, and the purchase's claim completed with it:
            # a crash in between leaves a claim whose retry finds the line with the lot.
            payment = self._list(payment, actor, claim)
        if failure is None:
            self._promote(org_id)
        return payment

    def _list(self, line: Payment, actor: Actor, claim: Claim | None) -> Payment:
        """Stores ``line`` with its audit entry, unless it is stored already, completing
        ``claim`` with it; returns it. Should another run have listed its lot meanwhile (a lot
        stored without its line by an older keyplane, two runs of its charge giving it one), the
        line that run stored is the lot's (the database keeps one a lot) and is returned."""
        while True:
            done = None if claim is None else claim.done(_payment_json(line))
            other = self._store.add_payment(line, done, self._entry(line, actor))
            if other is None:
                return line
            line = other  # (stored already: the next call only completes the claim with it)

    def _entry(self, line: Payment, actor: Actor) -> AuditEvent | None:
        """The audit log's entry for a line of the history, stored with it: a purchase, declined
        too (``credit_purchase.created``); a paid auto-recharge (``billing.auto_recharged``; its
        declines are emailed, and audited when they turn it off)."""
        if line.kind == "recharge":
            if line.status != "succeeded":
                return None
            event = "billing.auto_recharged"
            data = {"amount_micro_usd": line.amount, "payment_method": line.method_id}
        else:
            event = "credit_purchase.created"
            data = {
                "amount_micro_usd": line.amount, "status": line.status,
                "failure_code": line.failure, "payment_method": line.method_id,
            }  # fmt: skip
        return self._audit.entry(
            line.org_id, actor, event, target_id=line.id, details={"data": data}
        )

    def _credit(self, line: Payment, scoped: str, actor: Actor) -> tuple[Lot, Payment | None]:
        """The lot a charge bought and its line of the history (``line``, with the lot's id),
        stored in one transaction with the line's audit entry (``actor``'s) under the key the
        charge's own (``scoped``) derives: recorded once, whether ``_charge`` or the provider's
        webhook comes first, and whoever records it writes the line and the entry. Returns the
        lot and the line stored with it (None: a lot an older keyplane stored without one). When
        the other is recording it at this very moment (its key "in progress"), waits for it to
        finish."""
        written: list[Payment] = []

        def write(lot: Lot, note: str, source: str, done: Done | None) -> None:
            paid = dataclasses.replace(line, lot_id=lot.id)
            self._store.add_purchase(paid, lot, note, source, done, self._entry(paid, actor))
            written.append(paid)

        def record() -> Lot:
            return self._billing.record_purchase(
                line.org_id, line.amount, idempotency_key=f"pay:{scoped}", write=write
            )

        for wait in CREDIT_WAITS_S:
            try:
                lot = record()
                break
            except IdempotencyKeyReused:
                self._sleep(wait)
        else:
            lot = record()
        if written:
            return lot, written[-1]
        # Replayed: recorded by the webhook, or by an earlier run of this charge.
        return lot, self._store.payment_for_lot(line.org_id, lot.id)

    def credit_paid(self, charge: PaidCharge) -> Lot | None:
        """Credits a charge the provider reports paid (its signed webhook), unless it is credited
        already: the process that charged may have died before it could. Under the key
        ``_charge`` uses, so it is credited exactly once whichever comes first, and with its line
        of the billing history and that line's audit entry (by ``PROVIDER``) in the same
        transaction (a retry of the purchase, or of the recharge job, then returns that line and
        audits nothing more). None when the charge is none of this organization's (no method of
        it, even a removed one, has that reference: another keyplane sharing the provider's
        account, say), which changes nothing."""
        if charge.kind not in KINDS or not CHARGE_KEY.fullmatch(charge.key):
            return None
        if charge.amount <= 0 or charge.amount % 10_000:
            return None
        # The card may have been removed since it was charged: its row is kept, so the line
        # still names it. What the webhook cannot know is what the charging run held in memory:
        # the line is dated when the provider made the payment (or, should the event not say,
        # when it arrives), and the purchase's own Idempotency-Key, unknown here, gets this line
        # as its response only when the client retries it (``_charge`` finds it by its lot).
        method = self._store.method_by_ref(charge.org_id, charge.provider_ref)
        if method is None:
            return None
        line = Payment(
            id=ordered_id("pay_"), org_id=charge.org_id, kind=charge.kind, amount=charge.amount,
            status="succeeded", method_id=method.id, brand=method.brand, last4=method.last4,
            failure=None, lot_id=None, created_at=charge.charged_at or int(self._clock.now()),
            provider_ref=charge.payment_ref or None,
            billed_to=self._billing.settings(charge.org_id).billing_address,
        )  # fmt: skip
        lot, _ = self._credit(line, charge.key, PROVIDER)
        self._promote(charge.org_id)
        return lot

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
        turned off. The billing email (else the Owners) is emailed about each decline and the
        turning off. Returns how many jobs it finished. Blocking; raises StoreUnavailable."""
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
            job.org_id, methods[0], amount, "recharge", f"{job.id}:{job.attempts}", SYSTEM
        )
        if payment.status != "succeeded":
            return self._declined(job, now, payment.failure or "", amount)
        self._store.finish_recharge(job.id, "succeeded", now)
        if self._billing.balance(job.org_id).available < threshold:
            # Capped by the purchase maximum and still under: the next one a minute later, whether
            # or not requests come to notice (they may all be refused meanwhile).
            self._billing.request_recharge(job.org_id, job.target, due_at=now + 60)
        return 1

    def _declined(self, job: RechargeJob, now: int, code: str, amount: int) -> int:
        attempts = job.attempts + 1
        last = attempts >= self.max_recharge_attempts
        reason = (
            "there is no payment method to charge"
            if code == "no_payment_method"
            else _uncapitalized(decline_message(code).rstrip("."))
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
        recipients = list(self._billing_emails(job.org_id))
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


def _uncapitalized(sentence: str) -> str:
    """A sentence to follow a colon: its first letter only lowered ("3-D Secure" stays)."""
    return sentence[:1].lower() + sentence[1:]


def _payment_json(p: Payment) -> str:
    return json.dumps(
        [p.id, p.org_id, p.kind, p.amount, p.status, p.method_id, p.brand, p.last4, p.failure,
         p.lot_id, p.created_at, p.provider_ref, address_json(p.billed_to)]
    )  # fmt: skip


def _payment_from_json(text: str) -> Payment:
    # (A response stored before the line had ``provider_ref`` has two values less, before it had
    # ``billed_to`` one: None.)
    values = json.loads(text)
    payment = Payment(*values[:12])
    if len(values) > 12:
        payment = dataclasses.replace(payment, billed_to=address_from_json(values[12]))
    return payment
