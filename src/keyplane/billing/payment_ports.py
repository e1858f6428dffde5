"""What paying for credits needs from a payment provider and from storage, and the records it
exchanges with them: the card a person types, the saved payment method, a charge's answer, a line of
the billing history (and its stored form), a recharge job, a charge the provider reports paid, and
the bounds of a credit purchase.

A payment provider charges a saved payment method; keyplane stores only what identifies the method
to a person (brand, last four digits, expiry) and to the provider (its reference), never a card
number or a CVC. The sandbox (``billing/sandbox.py``) is the offline default: it takes the public
test card numbers, as card details. Stripe (``keyplane/stripe_payments.py``) never lets card details
reach keyplane: the browser gives them to Stripe.js, and keyplane saves the PaymentMethod id it gets
back (a token)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from keyplane.audit.models import AuditEvent
from keyplane.billing.address import BillingAddress, address_from_json, address_json
from keyplane.billing.ports import Done
from keyplane.billing.wallet import Lot


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


def payment_json(p: Payment) -> str:
    """A line of the history as a purchase's stored response (its Idempotency-Key's claim)."""
    return json.dumps(
        [p.id, p.org_id, p.kind, p.amount, p.status, p.method_id, p.brand, p.last4, p.failure,
         p.lot_id, p.created_at, p.provider_ref, address_json(p.billed_to)]
    )  # fmt: skip


def payment_from_json(text: str) -> Payment:
    # (A response stored before the line had ``provider_ref`` has two values less, before it had
    # ``billed_to`` one: None.)
    values = json.loads(text)
    payment = Payment(*values[:12])
    if len(values) > 12:
        payment = dataclasses.replace(payment, billed_to=address_from_json(values[12]))
    return payment


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


@dataclass(frozen=True, slots=True)
class ProviderReport:
    """What the provider reports of a paid charge since (Stripe: a signed event): a refund
    (``kind`` "refund", ``ref`` the charge, ch_…) or a dispute ("dispute", ``ref`` the dispute,
    du_…, ``status`` its status, ``total`` the amount disputed). A refund's ``total`` is the
    charge's amount refunded so far, cumulative; None: the event does not say it for sure (a
    refund's own event, or a charge's that may be stale: the provider is asked)."""

    event_id: str
    kind: str  # "refund" | "dispute"
    payment_ref: str  # the provider's id of the payment (Stripe: pi_…)
    ref: str
    total: int | None  # micro-dollars
    status: str = ""
    at: int | None = None  # when the provider made the change, if it says


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A refund or a dispute of a paid charge, as one of the provider's events changed it: the
    credit it moved (``amount``: < 0 taken off the organization's lots, > 0 given back, 0 a
    dispute's status only), a row of its own in the billing history. Its ledger entries'
    transaction is its id."""

    id: str
    org_id: str
    payment_id: str
    kind: str  # "refund" | "dispute"
    ref: str  # the provider's charge (refund) or dispute
    event_id: str
    status: str  # refund: "refunded" | "partially_refunded" | "refund_failed"; dispute: its status
    total: int  # refund: the charge's amount refunded so far; dispute: the amount disputed
    amount: int  # micro-dollars: the credit moved
    created_at: int


@dataclass(frozen=True, slots=True)
class PurchaseBounds:
    """A credit purchase's amount (BRIEF C5: $5-$100 by default), in whole cents."""

    minimum: int = 5_000_000
    maximum: int = 100_000_000


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

    def payment_by_ref(self, payment_ref: str) -> Payment | None:
        """The paid line of the history the provider's id of the payment names (None: none)."""
        ...

    def adjust(
        self, payment: Payment, report: ProviderReport, at: int,
        audit: Callable[[Adjustment], AuditEvent | None],
    ) -> Adjustment | None:  # fmt: skip
        """Applies the provider's report to the payment (``billing/reversals.py``), in one
        transaction with the payment's row locked: the adjustment, its ledger entries (credit
        taken off or given back to the organization's lots), the lots' ``adjusted``, the change
        feed's event and its ``audit`` entry. Returns it; None when the report changes nothing
        (its event applied already, a stale status, the same amount refunded). Raises
        StoreUnavailable."""
        ...

    def adjustments(self, org_id: str, payment_id: str | None = None) -> Sequence[Adjustment]:
        """The organization's adjustments (or one payment's), oldest first."""
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
