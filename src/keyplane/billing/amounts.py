"""Dollar amounts as people type them (the CLI, the dashboard's forms): exact micro-dollars, never
through a float, and strict, so that a typo cannot move a thousand times the money."""

from __future__ import annotations

import re
from decimal import Decimal

from keyplane.billing.bounds import MAX_AMOUNT
from keyplane.usage.pricing import MICRO, MICRO_PER_CENT

_AMOUNT = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")


def parse_amount(text: str, *, cents: bool = False) -> int:
    """``10``, ``10.5`` or ``$10.50`` → micro-dollars, from $0 to $1,000,000,000; with ``cents``,
    whole cents only (budgets and alert thresholds are cents, as the Admin API shows them).

    Digits and a decimal point only: Decimal() also reads 1e3, 1_000 and other scripts' digits;
    and no thousands separators (``1,5`` could mean 1.5 or 15). Raises ValueError, saying why."""
    digits = text.strip().removeprefix("$")
    amount = Decimal(digits) if _AMOUNT.fullmatch(digits) else Decimal("NaN")
    if not amount.is_finite() or not 0 <= amount * MICRO <= MAX_AMOUNT:
        raise ValueError(f"'{text}' is not an amount in dollars from 0 to 1000000000, like 10.50")
    micros = amount * MICRO
    if micros % (MICRO_PER_CENT if cents else 1):
        raise ValueError(f"'{text}' is finer than a {'cent' if cents else 'micro-dollar'}")
    return int(micros)
