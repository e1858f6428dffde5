"""Paying for credits (BRIEF C5): ``PaymentService`` saves payment methods, makes credit purchases,
runs auto-recharge and reads the billing history, over a ``PaymentProvider`` and a ``PaymentStore``
(``billing/payment_ports.py``, with the records they exchange). A successful charge becomes a
credit lot (a purchase: non-refundable, expiring a year later, counted toward usage tiers); every
charge, successful or not, is a line of the billing history.

Every charge carries an idempotency key (the client's ``Idempotency-Key``, or the recharge job's id),
so a retried request or a recharge picked up again after a crash never charges twice; its credit
lot is recorded, with its line of the history in the same transaction, under a key derived from it,
so the provider's own report of the payment (Stripe's signed webhook, ``credit_paid``) credits and
lists a charge whose process died before it could, exactly once whichever comes first. A line's
audit log entry (who made the charge: the dashboard's or the Admin API's caller, auto-recharge, or
the provider's report) is written in the line's own transaction, so there is one per line whoever
writes it; and the database lets a lot have one line only (a unique index). Each paid line's receipt
is emailed once (``billing/receipts.py``): asked for by whoever stores the line or finds it stored,
before the purchase's claim completes or the recharge job finishes."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Sequence

from keyplane.audit.models import Actor, AuditEvent
from keyplane.audit.service import AuditService
from keyplane.billing.declines import PaymentFailed, decline_message
from keyplane.billing.payment_ports import (
    Adjustment,
    CardDetails,
    PaidCharge,
    Payment,
    PaymentMethod,
    PaymentProvider,
    PaymentStore,
    ProviderReport,
    PurchaseBounds,
    payment_from_json,
    payment_json,
)
from keyplane.billing.ports import Claim, Done
from keyplane.billing.receipts import Receipts
from keyplane.billing.recharge import AutoRecharge
from keyplane.billing.reversals import PROVIDER, Reversals
from keyplane.billing.service import BillingService
from keyplane.billing.wallet import Lot
from keyplane.clock import Clock
from keyplane.errors import IdempotencyKeyReused, InvalidRequest, NotFound
from keyplane.ids import new_id, ordered_id
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish, publish_nowhere
from keyplane.usage.pricing import format_usd

MAX_METHODS = 10  # saved payment methods per organization
KINDS = ("purchase", "recharge")
CHARGE_KEY = re.compile(r"[0-9a-f]{40}")  # what ``_charge`` gives the provider
CREDIT_WAITS_S = (0.05, 0.2, 0.5, 1.0)  # a credit being recorded by the provider's webhook
DEFAULT_BOUNDS = PurchaseBounds()  # (frozen: one serves every default)


def _usd(micro: int) -> str:
    """An amount (whole cents) as the errors say it: "$1,234.50"."""
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
        public_url: str,
        bounds: PurchaseBounds = DEFAULT_BOUNDS,
        max_recharge_attempts: int = 3,
        publish: Publish = publish_nowhere,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._sleep = sleep
        self._store = store
        self._billing = billing
        self._provider = provider
        self._clock = clock
        self._audit = audit
        self._promote = promote
        self.bounds = bounds
        self._receipts = Receipts(
            outbox, clock, billing_emails=billing_emails, org_name=org_name, public_url=public_url
        )
        self._reversals = Reversals(
            store, clock, audit=audit, outbox=outbox, billing_emails=billing_emails,
            org_name=org_name, credit_left=billing.credit_left, publish=publish,
            public_url=public_url,
        )  # fmt: skip
        self._recharges = AutoRecharge(
            store, billing, clock, self._charge, audit=audit, outbox=outbox,
            billing_emails=billing_emails, org_name=org_name, public_url=public_url,
            publish=publish, bounds=bounds, max_attempts=max_recharge_attempts,
        )  # fmt: skip

    @property
    def max_recharge_attempts(self) -> int:
        """Declines in a row after which auto-recharge is turned off."""
        return self._recharges.max_attempts

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
            f"purchase:{org_id}", idempotency_key, params, run, payment_from_json
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
        the credit lot and the receipt email when it succeeded. Run again with the same ``key``
        (a claim taken over after a crash), it charges nothing more (the provider's idempotency),
        credits nothing more (the lot's own key) and emails nothing more (the receipt's own key);
        the line a webhook or an earlier run stored with the lot is the one it returns."""
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
        if failure is None:
            lot, stored = self._credit(payment, scoped, actor)
            if stored is None:  # a lot an older keyplane stored without its line: listed now
                stored = self._list(dataclasses.replace(payment, lot_id=lot.id), actor, None)
            # Before the purchase's claim completes (below) and the recharge job finishes (the
            # caller): a crash in between leaves either to a retry, which finds the line with
            # the lot and asks for the receipt again.
            self._receipts.send(stored, lot)
            payment = stored
        if failure is not None or claim is not None:
            # A declined charge's line, or the purchase's claim completed with the paid one.
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
            done = None if claim is None else claim.done(payment_json(line))
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
        transaction, and its receipt emailed (a retry of the purchase, or of the recharge job,
        then returns that line, and audits and emails nothing more; so does this, delivered
        again). None when the charge is none of this organization's (no method of it, even a
        removed one, has that reference: another keyplane sharing the provider's account, say),
        which changes nothing."""
        recorded = self._record_paid(charge)
        if recorded is None:
            return None
        self._promote(charge.org_id)
        return recorded[0]

    def _record_paid(self, charge: PaidCharge) -> tuple[Lot, Payment | None] | None:
        """``credit_paid`` but for the tier check: the lot and its line (None: a lot an older
        keyplane stored without one), or None when the charge is none of keyplane's."""
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
        lot, stored = self._credit(line, charge.key, PROVIDER)
        if stored is not None:  # (None: a lot an older keyplane stored without its line)
            self._receipts.send(stored, lot)
        return lot, stored

    # -- refunds and disputes (billing/reversals.py) ------------------------------------------
    def reverse(
        self, report: ProviderReport, refunded: Callable[[str], int] | None = None,
        paid: Callable[[str], PaidCharge | None] | None = None,
    ) -> Adjustment | None:  # fmt: skip
        """Applies the provider's report of a refund or a dispute of a paid charge, once per
        event (``Reversals.apply``). A refund's report without its total asks ``refunded`` (the
        provider: the charge's amount refunded now).

        A report naming a payment not stored yet asks ``paid`` (the provider: the charge that
        payment is, as it has it now) and credits that charge first, exactly as ``credit_paid``
        does, under the same key: the provider does not keep its events in order, and a refund's
        or a dispute's may come before the ``payment_intent.succeeded`` the charge is stored from
        (or while the run that charged is storing it, or after it died). Storing the charge from
        the provider's own record of it, then applying the report, is exact at once and needs
        nothing kept aside; the alternatives are not. Answering the event with an error, for the
        provider to send it again later (Stripe: with backoff, for three days), would leave the
        credit spendable for hours after its money went back to the card, and lose the refund
        for good should the charge's own event not get through in those days; keeping the event
        aside until the charge is stored would need a table, a migration and a check at each
        place a charge is stored, and would wait on that same event all the same.

        Blocking; raises StoreUnavailable (the database, or the provider unreachable: it sends
        the event again later)."""
        payment = self._store.payment_by_ref(report.payment_ref)
        credited = None  # the organization of a charge credited here
        if payment is None and paid is not None:
            charge = paid(report.payment_ref)
            recorded = None if charge is None else self._record_paid(charge)
            if charge is not None and recorded is not None:
                payment, credited = recorded[1], charge.org_id
        adjustment = self._reversals.apply(payment, report, refunded)
        if credited is not None:
            # Once the report is applied: what tiers count is paid net of refunds and disputes.
            self._promote(credited)
        return adjustment

    def adjustments(self, org_id: str, payment_id: str | None = None) -> Sequence[Adjustment]:
        """The refunds and disputes of the organization's charges (or one's), oldest first."""
        return self._store.adjustments(org_id, payment_id)

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
        """Works the due recharge jobs (``AutoRecharge.run``): returns how many it finished.
        Blocking; raises StoreUnavailable."""
        return self._recharges.run()
