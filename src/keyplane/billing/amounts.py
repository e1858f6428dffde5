"""Dollar amounts as people type them (the CLI, the dashboard's forms): exact micro-dollars, never
through a float, and strict, so that a typo cannot move a thousand times the money. The errors
speak the person's terms: what to type, and the bounds as money ("$5.00"), never micro-dollars."""

from __future__ import annotations

import re
from decimal import Decimal

from keyplane.billing.bounds import MAX_AMOUNT
from keyplane.usage.pricing import MICRO, MICRO_PER_CENT, format_usd

_AMOUNT = re.compile(r"-?\$?([0-9]+(\.[0-9]+)?|\.[0-9]+)")
NOT_AN_AMOUNT = "Enter an amount in dollars, like 10.50."


def parse_amount(
    text: str, *, cents: bool = False, minimum: int = 0, maximum: int = MAX_AMOUNT
) -> int:
    """``10``, ``10.5`` or ``$10.50`` → micro-dollars, from ``minimum`` to ``maximum`` (by default
    $0 to $1,000,000,000); with ``cents``, whole cents only (budgets and alert thresholds are
    cents, as the Admin API shows them).

    Digits and a decimal point only (a minus sign is read to say the amount is too small):
    Decimal() also reads 1e3, 1_000 and other scripts' digits; and no thousands separators
    (``1,5`` could mean 1.5 or 15). Raises ValueError, saying what is wrong."""
    typed = text.strip()
    if not _AMOUNT.fullmatch(typed.replace("$-", "-$", 1)):
        raise ValueError(NOT_AN_AMOUNT)
    digits = typed.replace("$", "").replace("-", "")
    micros = Decimal(digits) * MICRO * (-1 if "-" in typed else 1)
    if not minimum <= micros <= maximum:
        if minimum <= 0:  # (a budget, a grant: only a negative or a huge number is refused)
            raise ValueError(
                "The amount cannot be negative."
                if micros < minimum
                else f"The amount must be at most ${format_usd(maximum)}."
            )
        raise ValueError(range_message(minimum, maximum))
    if micros % (MICRO_PER_CENT if cents else 1):
        raise ValueError(
            "The amount is finer than a cent: enter dollars and cents, like 10.50."
            if cents
            else "The amount is finer than a micro-dollar ($0.000001)."
        )
    return int(micros)


def range_message(minimum: int, maximum: int) -> str:
    """What an amount out of ``minimum``..``maximum`` (micro-dollars) is told."""
    return f"The amount must be between ${format_usd(minimum)} and ${format_usd(maximum)}."
