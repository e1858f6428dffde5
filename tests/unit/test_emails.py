"""Email addresses: one ordinary mailbox, or a clear 400 (never a link sent where it cannot arrive,
or to two people)."""

from __future__ import annotations

import pytest

from keyplane.emails import normalize_email
from keyplane.errors import InvalidRequest


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        (" Ada@Example.com ", "ada@example.com"),
        ("first.last+tag@mail.example.co.uk", "first.last+tag@mail.example.co.uk"),
        ("o'brien@xn--exmple-cua.com", "o'brien@xn--exmple-cua.com"),
        ("x@a-b.io", "x@a-b.io"),
    ],
)
def test_ordinary_addresses_are_stored_trimmed_and_lower_case(typed: str, stored: str) -> None:
    assert normalize_email(typed) == stored


@pytest.mark.parametrize(
    "typed",
    [
        "nobody",
        "bob@example.com,carol@example.com",  # two mailboxes
        "bob@example.com; carol@example.com",
        "bob@example.com.",  # a trailing dot
        "bob@[127.0.0.1]",  # an IP literal
        "bob@127.0.0.1",
        "bób@exámple.com",  # needs SMTPUTF8
        "bob@localhost",
        ".bob@example.com",
        "bo..b@example.com",
        "bob@-example.com",
        "bob@exa_mple.com",
        '"bob smith"@example.com',
        "bob@example.com\x00",
        "b" * 65 + "@example.com",
        "bob@" + "a" * 250 + ".com",
        "@example.com",
        "bob@",
    ],
)
def test_anything_else_is_refused_naming_the_field(typed: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        normalize_email(typed, param="recipients")
    assert refused.value.param == "recipients"
