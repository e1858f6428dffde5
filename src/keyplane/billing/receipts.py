"""Receipt emails (BRIEF C5): every paid charge — a purchase from the dashboard or the Admin API, an
auto-recharge, a charge the provider's webhook credits — is emailed to the organization's billing
recipients (its billing email, else its Owners), as OpenAI and Stripe email one for every credit
purchase. Declined charges and credit grants get none.

Exactly once comes from storage: the outbox's dedupe key is ``receipt:<line id>``, and a credit lot
has one line of the billing history (a unique index), so every run that stores the line or finds it
stored (``PaymentService._charge`` and ``credit_paid``) asks for the same email and the outbox keeps
one. Each asks after the line is committed and before its work counts as done, so a process dying
in between leaves the asking to whatever takes that work over: the purchase's Idempotency-Key (its
claim is completed after), the recharge job (finished after), the provider's webhook (answered
after, else delivered again). Not covered, with the sandbox only (Stripe's webhook covers both): a
purchase its client never retries, or a recharge job found back over the threshold once taken over
(it ends without running its charge again), whose process died in that moment, gets no receipt
email; the line and its downloadable receipt are in the billing history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from keyplane.billing.payment_ports import Payment, PaymentMethod
from keyplane.billing.wallet import Lot
from keyplane.clock import Clock
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox
from keyplane.usage.pricing import format_usd

BRANDS = {"visa": "Visa", "mastercard": "Mastercard", "amex": "American Express"}


def card_label(card: PaymentMethod | Payment) -> str:
    """How a card is named to people: "Visa •••• 4242" (its last four digits, never more)."""
    return f"{BRANDS.get(card.brand, card.brand.capitalize())} •••• {card.last4}"


def _moment(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Receipts:
    def __init__(
        self,
        outbox: Outbox,
        clock: Clock,
        *,
        billing_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        public_url: str,
    ) -> None:
        self._outbox = outbox
        self._clock = clock
        self._billing_emails = billing_emails
        self._org_name = org_name
        self._public_url = public_url.rstrip("/")

    def send(self, line: Payment, lot: Lot) -> bool:
        """Enqueues the receipt of a paid, stored line of the history (``lot``: the credit it
        bought); False when it was enqueued before (or there is no one to send it to).

        Blocking (database I/O). Raises StoreUnavailable."""
        recipients = list(self._billing_emails(line.org_id))
        if not recipients:
            return False
        name = self._org_name(line.org_id)
        amount = "$" + format_usd(line.amount)
        subject = f"[keyplane] Receipt for {name}: {amount} of credits"
        text, page = self._bodies(line, lot, name, amount, subject)
        return self._outbox.enqueue(
            f"receipt:{line.id}", recipients, subject, text, page, now=self._clock.now()
        )

    def _bodies(
        self, line: Payment, lot: Lot, name: str, amount: str, subject: str
    ) -> tuple[str, str]:
        """The receipt as plain text and as HTML, saying the same."""
        billed = line.billed_to
        address = [name] if billed is None or not billed.name else []
        address += [] if billed is None else billed.lines()
        facts = [
            ("Receipt number", line.id),
            ("Date", _moment(line.created_at)),
            ("Amount paid", f"{amount} USD"),
            ("Paid with", card_label(line)),
        ]
        if line.provider_ref:
            facts.append(("Payment reference", line.provider_ref))
        if billed is not None and billed.tax_id:
            facts.append(("Tax ID", billed.tax_id))
        expiry = (
            "they do not expire"
            if lot.expires_at is None
            else f"they expire on {_moment(lot.expires_at)[:10]} (UTC)"
        )
        history = f"{self._public_url}/billing/history"
        receipt_url = f"{history}/{line.id}/receipt?org={line.org_id}"
        history_url = f"{history}?org={line.org_id}"
        what = (
            f"Auto-recharge bought {amount} of prepaid credits for {name}"
            if line.kind == "recharge"
            else f"{name} bought {amount} of prepaid credits"
        )
        text = (
            f"Thank you for your payment. {what}.\n\n"
            + "".join(f"{label}: {value}\n" for label, value in facts)
            + "Billed to:\n"
            + "".join(f"  {part}\n" for part in address)
            + f"\nThe credits are non-refundable; {expiry}.\n\n"
            f"Download this receipt: {receipt_url}\n"
            f"Billing history: {history_url}\n"
        )
        page = render_html(
            "receipt.html", subject=subject, org=name, amount=amount, what=what, facts=facts,
            address=address, expiry=expiry, receipt_url=receipt_url, history_url=history_url,
        )  # fmt: skip
        return text, page
