"""The billing address and billing email of an organization (BRIEF C5: "billing address,
preferences (billing email, currency display)").

The address is what a receipt says the organization was billed to: the fields of the guide's "Add
payment details" dialog (country, two address lines, city, postal code, state or region) plus the
name or company and an optional tax id, as Stripe's invoices have them. Only the country, the first
line and the city are required; every field is one line of printable text of a bounded length. A
receipt keeps the address as it was when the payment was made (the payment's own copy), as an
issued invoice does.

keyplane bills in US dollars only: there is no currency to choose, and no amount is ever converted.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import Any

from keyplane.errors import InvalidRequest, KeyplaneError
from keyplane.text import refuse_control_characters

CURRENCY = "USD"


@dataclass(frozen=True, slots=True)
class BillingAddress:
    country: str  # ISO 3166-1 alpha-2, upper case
    line1: str
    city: str
    line2: str = ""
    state: str = ""  # state, county, province or region
    postal_code: str = ""
    name: str = ""  # the name or company billed ("" : the organization's name)
    tax_id: str = ""

    def lines(self) -> list[str]:
        """The address as printed on a receipt, one line each (empty ones left out)."""
        place = " ".join(p for p in (self.city, self.state, self.postal_code) if p)
        shown = [self.name, self.line1, self.line2, place, country_name(self.country)]
        return [line for line in shown if line]


# (label, longest length, required) of each field, in the form's order.
FIELDS: dict[str, tuple[str, int, bool]] = {
    "name": ("Name or company", 200, False),
    "country": ("Country", 2, True),
    "line1": ("Address line 1", 200, True),
    "line2": ("Address line 2", 200, False),
    "city": ("City", 100, True),
    "state": ("State, county, province, or region", 100, False),
    "postal_code": ("Postal code", 20, False),
    "tax_id": ("Tax ID", 50, False),
}


@functools.cache
def countries() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code -> short English name, in the order of the names."""
    text = resources.files("keyplane.billing").joinpath("countries.txt").read_text("utf-8")
    rows = (line.split("\t", 1) for line in text.splitlines() if line and line[0] != "#")
    return {code: name for code, name in rows}


def country_name(code: str) -> str:
    return countries().get(code, code)


def address_errors(values: dict[str, str]) -> dict[str, str]:
    """What is wrong with each field of an address as typed (trimmed first), by field name; empty
    when it is a valid address. Unknown field names are refused under their own name."""
    errors = {name: "There is no such field." for name in values if name not in FIELDS}
    for name, (label, longest, required) in FIELDS.items():
        value = values.get(name, "").strip()
        if not value:
            if required:
                errors[name] = (
                    "Choose a country." if name == "country" else f"Enter the {label.lower()}."
                )
            continue
        if name == "country":
            if value.upper() not in countries():
                errors[name] = "Choose a country from the list (an ISO 3166-1 alpha-2 code)."
            continue
        if len(value) > longest:
            errors[name] = f"{label} has at most {longest} characters."
            continue
        try:
            refuse_control_characters(value, label, name)
        except KeyplaneError as exc:
            errors[name] = exc.message
    return errors


def parse_address(values: dict[str, str], *, param: str = "billing_address") -> BillingAddress:
    """The address from its fields (trimmed; the country upper-cased). Raises InvalidRequest for
    the first field that is wrong, its ``param`` ``billing_address.<field>``."""
    errors = address_errors(values)
    if errors:
        name = next(iter(errors))
        raise InvalidRequest(errors[name], param=f"{param}.{name}")
    clean = {name: values.get(name, "").strip() for name in FIELDS}
    clean["country"] = clean["country"].upper()
    return BillingAddress(**clean)


def normalize_address(address: BillingAddress) -> BillingAddress:
    """``address`` checked as ``parse_address`` checks typed fields. Raises InvalidRequest."""
    return parse_address({f.name: getattr(address, f.name) for f in fields(address)})


def address_json(address: BillingAddress | None) -> str | None:
    """How an address is stored (a JSON object); None for none."""
    return None if address is None else json.dumps(asdict(address), sort_keys=True)


def address_from_json(text: str | None) -> BillingAddress | None:
    if not text:
        return None
    data: dict[str, Any] = json.loads(text)
    known = {f.name for f in fields(BillingAddress)}
    return BillingAddress(**{k: str(v) for k, v in data.items() if k in known})


def address_shown(address: BillingAddress | None) -> dict[str, str] | None:
    """The address as the Admin API and the audit log show it."""
    return None if address is None else asdict(address)
