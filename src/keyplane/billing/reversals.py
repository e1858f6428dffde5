"""Refunds and disputes of credit purchases (Stripe's ``charge.refunded``, ``charge.dispute.*`` and
the refunds' own events): the credit a paid charge bought is taken back when the payment provider
gives the money back or a dispute withholds it, and given back when a refund fails or a dispute is
won.

Each of the provider's events is one ``Adjustment`` of the payment: a row of its own in the billing
history, with the credit it moved as append-only ledger entries (account ``refunds`` or
``disputes`` against the lots), stored once per event (its id is unique) with the payment's row
locked, so that redeliveries and concurrent deliveries change nothing more. Out of order is safe
because what an event asks for is a state, not a step:

- a refund: the charge's amount refunded so far (cumulative), which keyplane asks the provider for
  at each event rather than trusting the event's copy of the charge (an older copy arriving late,
  or a refund that failed since, would be wrong); the credit moved is the difference from what
  refunds took already, so two partial refunds of $3 and $2, reported in either order, take $5;
- a dispute: its status, and statuses only move forward (``DISPUTE_STAGES``): an event older than
  the latest one applied is ignored. An open dispute (``needs_response``, ``under_review``) holds
  its amount, a lost one keeps it, a won one gives it back; an inquiry (``warning_*``) moves no
  money (the provider withdraws none).

An event may even come before the payment it names is stored (the provider's report of the payment
still to come): ``PaymentService.reverse`` then stores the payment from the provider's record of it
first, as that report would, and applies the event.

Where the credit comes from (``take``): the purchase's own lot first, as much as it has left; then
the organization's other live lots, earliest expiry first (as requests spend them); whatever is
still missing — credit bought and already spent — leaves the purchase's lot below zero: a debt.
The balance may so fall below zero, and the gateway refuses spend until credit added covers it; a
debt never expires with its lot, and the next credit added (a purchase or a grant) pays it first
(``repay``). Credit given back (``give_back``) undoes the latest takings of the same refund or
dispute, a debt first: the lots end as if it had not happened (a lot that expired meanwhile gets
back credit that no longer counts, as it would have expired unspent).

Every adjustment that moved credit, or closed a dispute, is audited (``billing.payment_refunded``,
``billing.payment_disputed``, by the payment provider), sent as the webhook event of that name and
emailed to the billing recipients, each once (dedupe keys ``adjustment:<id>``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keyplane.audit.models import Actor, ActorType, AuditEvent
from keyplane.audit.service import AuditService
from keyplane.billing.payment_ports import Adjustment, Payment, PaymentStore, ProviderReport
from keyplane.billing.wallet import Lot
from keyplane.clock import Clock
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish
from keyplane.usage.pricing import format_cents, format_usd

PROVIDER = Actor(ActorType.SYSTEM, "payment provider")  # its report of a payment (a webhook)
EVENTS = {"refund": "billing.payment_refunded", "dispute": "billing.payment_disputed"}
# A dispute's statuses, in the order they can come: an event with a status no later than the
# latest applied is stale (or the same news again). The last four are final.
DISPUTE_STAGES = {
    "warning_needs_response": 0, "warning_under_review": 1, "needs_response": 2,
    "under_review": 3, "won": 4, "lost": 4, "warning_closed": 4, "prevented": 4,
}  # fmt: skip
HOLDING = frozenset({"needs_response", "under_review", "lost"})  # withholds the money
CLOSED = frozenset({"won", "lost", "warning_closed", "prevented"})
OPEN = frozenset(DISPUTE_STAGES) - CLOSED
Moves = list[tuple[str, int]]  # (lot id, credit taken off it: < 0 given back), in order


def decide(
    report: ProviderReport, previous: Sequence[Adjustment], paid: int
) -> tuple[int, str, int] | None:
    """What ``report`` changes, given the payment's ``previous`` adjustments and the amount it
    paid: (credit to take off now, < 0 to give back; status; total), or None: nothing."""
    mine = [a for a in previous if a.kind == report.kind and a.ref == report.ref]
    taken = -sum(a.amount for a in mine)
    # What the payment's other refunds and disputes hold: together they never take back more
    # than it paid (a dispute of the whole amount after a partial refund, say).
    room = max(paid + sum(a.amount for a in previous if a not in mine), 0)
    total = min(max(report.total or 0, 0), paid)
    if report.kind == "refund":
        target = min(total, room)
        if report.total is None or target == taken:
            return None
        # (Only a refund that failed, or was canceled, lowers the amount refunded.)
        status = (
            "refund_failed" if target < taken
            else "refunded" if total >= paid else "partially_refunded"
        )  # fmt: skip
        return target - taken, status, total
    stage = DISPUTE_STAGES.get(report.status)
    if stage is None or any(stage <= DISPUTE_STAGES.get(a.status, 0) for a in mine):
        return None
    return (min(total, room) if report.status in HOLDING else 0) - taken, report.status, total


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a paid charge stands after its refunds and disputes."""

    paid: int
    refunded: int  # the amount refunded so far (micro-dollars)
    dispute: str | None  # the latest dispute's status (None: never disputed)

    @property
    def label(self) -> str:
        """How the billing history and the receipt name it ("" when nothing happened to it)."""
        if self.dispute in OPEN:
            return "Disputed"
        if self.dispute == "lost":
            return "Dispute lost"
        if self.refunded:
            return "Partially refunded" if self.refunded < self.paid else "Refunded"
        return ""


def standing(paid: int, adjustments: Sequence[Adjustment]) -> Standing:
    """A paid charge of ``paid`` after its ``adjustments``: refunded as much as its refunds took
    (net: what failed given back), disputed as its furthest dispute status."""
    refunded = -sum(a.amount for a in adjustments if a.kind == "refund")
    disputes = [a.status for a in adjustments if a.kind == "dispute"]
    latest = max(disputes, key=lambda status: DISPUTE_STAGES.get(status, 0), default=None)
    return Standing(paid, refunded, latest)


def _spending_order(lot: Lot) -> tuple[bool, int, int, str]:
    return (lot.expires_at is None, lot.expires_at or 0, lot.created_at, lot.id)


def take(lots: Sequence[Lot], own: str, amount: int, at: float) -> Moves:
    """Where ``amount`` of credit is taken from: the purchase's lot ``own`` as far as it has
    credit left, the other live lots in the order requests spend them, then ``own`` below zero."""
    moves: Moves = []
    left = amount
    mine = next((lot for lot in lots if lot.id == own), None)
    if mine is not None and mine.remaining > 0:
        moves.append((own, min(left, mine.remaining)))
        left -= moves[-1][1]
    others = sorted(
        (lot for lot in lots if lot.id != own and lot.remaining > 0 and lot.live(at)),
        key=_spending_order,
    )
    for lot in others:
        if not left:
            break
        moves.append((lot.id, min(left, lot.remaining)))
        left -= moves[-1][1]
    if left:
        moves.append((own, left))
    return moves


def give_back(history: Sequence[Moves], amount: int, own: str) -> Moves:
    """Gives ``amount`` back, undoing the latest of ``history`` (the same refund's or dispute's
    moves so far, oldest first) first; anything beyond them to the purchase's lot ``own``."""
    stack: Moves = []

    def pop(wanted: int) -> Moves:
        out: Moves = []
        while wanted and stack:
            lot_id, held = stack[-1]
            part = min(wanted, held)
            out.append((lot_id, -part))
            wanted -= part
            if part == held:
                stack.pop()
            else:
                stack[-1] = (lot_id, held - part)
        if wanted:
            out.append((own, -wanted))
        return out

    for moves in history:
        net = sum(moved for _, moved in moves)
        if net > 0:
            stack.extend(move for move in moves if move[1] > 0)
        elif net < 0:
            pop(-net)
    return pop(amount)


def repay(lots: Sequence[Lot], new: Lot) -> Moves:
    """What a new lot pays of the organization's debts (lots below zero), oldest first: taken off
    the new lot, given to the lots in debt."""
    debts = sorted(
        (lot for lot in lots if lot.remaining < 0 and lot.id != new.id), key=_spending_order
    )
    owed = sum(-lot.remaining for lot in debts)
    paid = min(owed, new.amount)
    if paid <= 0:
        return []
    moves: Moves = [(new.id, paid)]
    for lot in debts:
        if not paid:
            break
        part = min(paid, -lot.remaining)
        moves.append((lot.id, -part))
        paid -= part
    return moves


class Reversals:
    """Applies the provider's reports of refunds and disputes (``PaymentService.reverse``)."""

    def __init__(
        self, store: PaymentStore, clock: Clock, *, audit: AuditService, outbox: Outbox,
        billing_emails: Callable[[str], Sequence[str]], org_name: Callable[[str], str],
        credit_left: Callable[[str], int], publish: Publish, public_url: str,
    ) -> None:  # fmt: skip
        self._store = store
        self._clock = clock
        self._audit = audit
        self._outbox = outbox
        self._billing_emails = billing_emails
        self._org_name = org_name
        self._credit_left = credit_left
        self._publish = publish
        self._public_url = public_url.rstrip("/")

    def apply(
        self, payment: Payment | None, report: ProviderReport,
        refunded: Callable[[str], int] | None = None,
    ) -> Adjustment | None:  # fmt: skip
        """Applies the report to ``payment``, the paid charge it names: returns the adjustment it
        made (or made before: the same event again), None when it changes nothing or there is no
        such paid charge of keyplane's. A refund's report without its total asks ``refunded``
        (the provider: the charge's amount refunded now). Blocking; raises StoreUnavailable (the
        database, or the provider unreachable: the provider sends the event again later)."""
        if payment is None or payment.status != "succeeded" or payment.lot_id is None:
            return None
        if report.total is None:
            if refunded is None:
                return None
            report = dataclasses.replace(report, total=refunded(report.ref))
        now = int(self._clock.now())
        adjustment = self._store.adjust(payment, report, now, lambda a: self._entry(payment, a))
        if adjustment is not None and (adjustment.amount or adjustment.status in CLOSED):
            # (Again when the event comes again: a process that died after storing it may not
            # have sent these; their dedupe keys keep one of each.)
            self._notify(payment, adjustment, now)
        return adjustment

    def _data(self, payment: Payment, a: Adjustment) -> dict[str, object]:
        data: dict[str, object] = {
            "payment_id": payment.id, "provider_payment_id": payment.provider_ref,
            "status": a.status, "credit_change_micro_usd": a.amount,
        }  # fmt: skip
        if a.kind == "refund":
            data["amount_refunded_micro_usd"] = a.total
        else:
            data["dispute_id"] = a.ref
            data["amount_disputed_micro_usd"] = a.total
        return data

    def _entry(self, payment: Payment, a: Adjustment) -> AuditEvent | None:
        if not (a.amount or a.status in CLOSED):
            return None  # (a dispute's step with nothing to tell: listed, not audited)
        return self._audit.entry(
            a.org_id, PROVIDER, EVENTS[a.kind], target_id=payment.id,
            details={"data": self._data(payment, a)},
        )  # fmt: skip

    def _notify(self, payment: Payment, a: Adjustment, now: int) -> None:
        key = f"adjustment:{a.id}"
        self._publish(a.org_id, EVENTS[a.kind], self._data(payment, a), key)
        recipients = list(self._billing_emails(a.org_id))
        if not recipients:
            return
        name = self._org_name(a.org_id)
        paid, moved = "$" + format_usd(payment.amount), "$" + format_usd(abs(a.amount))
        what = f"Your payment of {paid} ({payment.provider_ref or payment.id})" + {
            "refunded": " was refunded in full",
            "partially_refunded": f" was refunded in part: ${format_usd(a.total)} so far",
            "refund_failed": f": a refund of it failed (${format_usd(a.total)} refunded now)",
            "needs_response": " is disputed with your card's issuer",
            "under_review": " is disputed with your card's issuer",
            "won": ": the dispute is closed, and the payment stands",
            "lost": ": the dispute is closed, and the money was returned to the card",
        }.get(a.status, f": its {a.kind} is now {a.status.replace('_', ' ')}")
        if a.amount < 0:
            change = f"{moved} of credit was taken off the credit balance of {name}."
            subject = f"[keyplane] {moved} of credit taken back from {name}"
        elif a.amount > 0:
            change = f"{moved} of credit was given back to {name}."
            subject = f"[keyplane] {moved} of credit given back to {name}"
        else:
            change = f"The credit balance of {name} is unchanged."
            subject = f"[keyplane] A payment of {name}: dispute {a.status}"
        left = self._credit_left(a.org_id)
        balance = f"−${format_cents(-left, up=True)}" if left < 0 else f"${format_cents(left)}"
        then = (
            "The credit bought with it was spent already, so the balance is below zero: "
            "requests are refused until credit is added."
            if left < 0
            else ""
        )
        history = f"{self._public_url}/billing/history?org={a.org_id}"
        text = (
            f"{what}.\n\n{change} The credit balance is now {balance}.{' ' + then if then else ''}"
            f"\n\nBilling history: {history}\n"
        )
        page = render_html(
            "payment_reversed.html", subject=subject, heading=subject.removeprefix("[keyplane] "),
            org=name, what=what, change=change, balance=balance, then=then, history_url=history,
        )  # fmt: skip
        self._outbox.enqueue(key, recipients, subject, text, page, now=now)
