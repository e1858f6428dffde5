"""The billing address's checks, how a receipt prints it, and a payment's copy of it surviving the
Idempotency-Key responses stored before it existed."""

from __future__ import annotations

import json

import pytest

from keyplane.billing.address import (
    BillingAddress,
    address_errors,
    address_from_json,
    address_json,
    parse_address,
)
from keyplane.billing.payment_ports import Payment, payment_from_json, payment_json
from keyplane.errors import InvalidRequest


def test_an_address_is_trimmed_its_country_upper_cased_and_printed_without_empty_lines() -> None:
    address = parse_address({"country": " gb ", "line1": " 2 Harbour Rd ", "city": "London"})
    assert address == BillingAddress(country="GB", line1="2 Harbour Rd", city="London")
    assert address.lines() == ["2 Harbour Rd", "London", "United Kingdom"]
    assert address_from_json(address_json(address)) == address
    assert address_from_json(None) is None and address_json(None) is None


def test_every_wrong_field_is_named_and_the_first_raised() -> None:
    errors = address_errors({"country": "ZZ", "line1": "", "city": "a\tb", "zip": "1"})
    assert set(errors) == {"country", "line1", "city", "zip"}
    with pytest.raises(InvalidRequest) as raised:
        parse_address({"country": "US", "line1": "1 Main St", "city": "x" * 101})
    assert raised.value.param == "billing_address.city"


def test_a_payment_stored_as_an_idempotency_response_reads_back_from_each_format() -> None:
    address = BillingAddress(country="US", line1="1 Main St", city="Springfield")
    payment = Payment(
        "pay_1", "org_1", "purchase", 10_000_000, "succeeded", "pm_1", "visa", "4242", None,
        "cg_1", 100, "pi_1", address,
    )  # fmt: skip
    assert payment_from_json(payment_json(payment)) == payment
    values = json.loads(payment_json(payment))
    assert payment_from_json(json.dumps(values[:12])).billed_to is None  # before 0020
    assert payment_from_json(json.dumps(values[:11])).provider_ref is None  # before 0019
