"""The sandbox payment provider, keyplane's offline default (BRIEF C5): it takes the public test
card numbers only and checks them as a card form would (Luhn, expiry, CVC); their charges succeed
or decline as the number says, whatever the amount, and have no payment id (a line of the billing
history shows none). Nothing leaves the process."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

from keyplane.billing.payment_ports import CardDetails, Charged, SavedCard
from keyplane.errors import InvalidRequest

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

    def save_token(self, org_id: str, token: str, saved_refs: Sequence[str]) -> SavedCard:
        raise InvalidRequest(
            "The sandbox payment provider takes card details (`card`), not a payment method id: "
            "payment method ids come from Stripe.js, with KEYPLANE_PAYMENT_PROVIDER=stripe.",
            param="payment_method",
        )

    def charge(
        self, provider_ref: str, amount: int, idempotency_key: str, *, org_id: str, kind: str
    ) -> Charged:
        # (No payment id: the sandbox keeps no payments, so there is nothing one would name.)
        if not provider_ref.startswith("sbx_"):
            return Charged("processing_error")
        outcome = provider_ref[4:].rsplit("_", 1)[0]
        return Charged(None if outcome == "ok" else outcome)
