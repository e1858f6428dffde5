"""The sandbox payment provider checks a card as a card form does, and keeps none of its secrets."""

from __future__ import annotations

import datetime as dt

import pytest

from keyplane.billing.payment_ports import CardDetails, Charged
from keyplane.billing.sandbox import TEST_CARDS, SandboxProvider, luhn_valid
from keyplane.errors import InvalidRequest

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC).timestamp()
sandbox = SandboxProvider()


def test_every_test_card_passes_luhn_and_a_changed_digit_does_not() -> None:
    for number in TEST_CARDS:
        assert luhn_valid(number)
        assert not luhn_valid(number[:-1] + str((int(number[-1]) + 1) % 10))


@pytest.mark.parametrize(
    ("card", "param", "message"),
    [
        (CardDetails("4242 4242 4242 4241", 12, 2030, "123"), "number", "incorrect"),
        (CardDetails("4242-4242-4242-424x", 12, 2030, "123"), "number", "incorrect"),
        (CardDetails("4242424242424242", 13, 2030, "123"), "exp_month", "month"),
        (CardDetails("4242424242424242", 11, 2026, "123"), "exp_year", "in the past"),
        (CardDetails("4242424242424242", 12, 2025, "123"), "exp_year", "in the past"),
        (CardDetails("4242424242424242", 12, 2030, "12"), "cvc", "3 digits"),
        (CardDetails("378282246310005", 12, 2030, "123"), "cvc", "4 digits"),
        (CardDetails("4532015112830366", 12, 2030, "123"), "number", "test cards only"),
    ],
)
def test_bad_cards_are_refused_naming_the_field(
    card: CardDetails, param: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as refused:
        sandbox.save_card(card, NOW)
    assert refused.value.param == param


def test_a_card_expiring_this_month_is_taken_and_charges_end_as_its_number_says() -> None:
    paid = sandbox.save_card(CardDetails("4242424242424242", 12, 2026, "123"), NOW)
    assert (paid.brand, paid.last4) == ("visa", "4242")
    assert "4242424242424242" not in paid.provider_ref
    # (The sandbox makes no payment id: a line of the history shows none.)
    assert sandbox.charge(
        paid.provider_ref, 5_000_000, "k", org_id="org_1", kind="purchase"
    ) == Charged(None, None)
    declined = sandbox.save_card(CardDetails("4000 0000 0000 0002", 1, 2027, "999"), NOW)
    assert sandbox.charge(
        declined.provider_ref, 5_000_000, "k", org_id="org_1", kind="purchase"
    ) == Charged("card_declined", None)
    # Should one reach a log line: the last four digits only, never the CVC.
    assert repr(CardDetails("4242424242424242", 1, 2030, "123")) == "CardDetails(…4242, 01/2030)"


def test_the_sandbox_takes_no_payment_method_id() -> None:
    with pytest.raises(InvalidRequest, match="takes card details") as refused:
        sandbox.save_token("org_1", "pm_123", [])
    assert refused.value.param == "payment_method"
