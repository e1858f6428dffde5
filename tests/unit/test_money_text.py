"""Money as people read it (the dashboard, emails) and type it (forms, the CLI): cents rounded so a
figure never shows more money than there is or less spend than there was, and errors in the
person's terms."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.billing.amounts import NOT_AN_AMOUNT, parse_amount
from keyplane.usage.pricing import format_cents, format_cost, format_usd
from keyplane.web.dashboard.money import money_left, money_spent


@pytest.mark.parametrize(
    ("micros", "left", "spent", "cost"),
    [
        (0, "0.00", "0.00", "0.00"),
        (1, "0.00", "0.01", "0.000001"),  # 1 µ$: no money to spend, but a cent's worth spent
        (9_999, "0.00", "0.01", "0.009999"),
        (10_000, "0.01", "0.01", "0.01"),
        (16_157, "0.01", "0.02", "0.02"),  # "Spent this month: $0.016157"
        (4_983_843, "4.98", "4.99", "4.99"),  # "Credit balance: $4.983843"
        (5_000_000, "5.00", "5.00", "5.00"),
        (1_234_567_890_001, "1,234,567.89", "1,234,567.90", "1,234,567.90"),
        (-4_983_843, "-4.99", "-4.98", "-4.98"),  # (a debt: down is more of it)
    ],
)
def test_money_is_shown_in_cents_rounded_the_safe_way(
    micros: int, left: str, spent: str, cost: str
) -> None:
    assert format_cents(micros) == left
    assert format_cents(micros, up=True) == spent
    assert format_cost(micros) == cost


@given(st.integers(min_value=0, max_value=10**15))
def test_a_balance_never_shows_more_and_spend_never_less(micros: int) -> None:
    def back(text: str) -> int:
        return parse_amount(text.replace(",", ""))

    assert micros - 10_000 < back(format_cents(micros)) <= micros
    assert micros <= back(format_cents(micros, up=True)) < micros + 10_000


def test_a_rounded_figure_carries_the_exact_one_in_its_tooltip() -> None:
    assert money_left(4_983_843) == '<span class="money" title="Exactly $4.983843">$4.98</span>'
    assert money_spent(16_157) == '<span class="money" title="Exactly $0.016157">$0.02</span>'
    assert money_left(5_000_000) == "$5.00"  # (nothing rounded: no tooltip)
    assert money_spent(0) == "$0.00"
    assert format_usd(1) == "0.000001"


@pytest.mark.parametrize(
    ("typed", "micros"),
    [("10", 10_000_000), ("10.5", 10_500_000), ("$10.50", 10_500_000), (" .5 ", 500_000),
     ("0", 0)],
)  # fmt: skip
def test_amounts_are_read_exactly(typed: str, micros: int) -> None:
    assert parse_amount(typed, cents=True) == micros


@pytest.mark.parametrize(
    ("typed", "bounds", "said"),
    [
        ("1e3", {}, NOT_AN_AMOUNT),
        ("1,5", {}, NOT_AN_AMOUNT),
        ("ten", {}, NOT_AN_AMOUNT),
        ("", {}, NOT_AN_AMOUNT),
        ("--5", {}, NOT_AN_AMOUNT),
        ("٥", {}, NOT_AN_AMOUNT),  # (another script's digit)
        ("-5", {}, "The amount cannot be negative."),
        ("1000000001", {}, "The amount must be at most $1,000,000,000.00."),
        ("-5", {"minimum": 5_000_000, "maximum": 100_000_000},
         "The amount must be between $5.00 and $100.00."),
        ("$-5", {"minimum": 5_000_000, "maximum": 100_000_000},
         "The amount must be between $5.00 and $100.00."),
        ("100.01", {"minimum": 5_000_000, "maximum": 100_000_000},
         "The amount must be between $5.00 and $100.00."),
        ("10.005", {"cents": True},
         "The amount is finer than a cent: enter dollars and cents, like 10.50."),
        ("0.0000001", {}, "The amount is finer than a micro-dollar ($0.000001)."),
    ],
)  # fmt: skip
def test_a_refused_amount_says_why_in_dollars(
    typed: str, bounds: dict[str, Any], said: str
) -> None:
    with pytest.raises(ValueError) as refused:
        parse_amount(typed, **bounds)
    assert str(refused.value) == said
