"""Billing → Preferences against a real keyplane: the billing email (where billing emails go
instead of the Owners), the currency (US dollars, shown, not chosen), the billing address (on
receipts as "Billed to", as it was when the payment was made); form errors, Readers, the audit
log, and the next billing email reaching the billing email through a real SMTP server."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_accounts_web import OWNER_PASSWORD, PASSWORD, Browser, text_of
from test_dashboard_billing import DECLINED, VISA, add_card, buy, events
from test_dashboard_keys import SignIn, browser_for, join, kp  # noqa: F401  (fixtures)

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import AuditFilter
from keyplane.billing.address import BillingAddress
from kptest import ServerThread, wait_until
from smtp_support import Inbox, SmtpServer

PREFS = "/billing/preferences"
ADDRESS = {
    "name": "Acme Inc.", "line1": "1 Main St", "line2": "Suite 5", "city": "Springfield",
    "state": "IL", "postal_code": "62701", "country": "US", "tax_id": "US-123",
}  # fmt: skip
EMPTY = dict.fromkeys(ADDRESS, "")


def save(b: Browser, **fields: str) -> httpx.Response:
    """The Preferences form sent with ``fields`` (the others empty)."""
    b.get(PREFS)
    return b.post(PREFS, {"billing_email": "", **EMPTY, **fields})


def error_for(page: httpx.Response, field: str) -> str:
    """The message shown under ``field`` (and checks the field says it is invalid)."""
    said = re.search(rf'id="pref-{field}-error">([^<]*)<', page.text)
    assert said is not None, (field, text_of(page))
    assert re.search(rf'id="pref-{field}"[^>]*aria-invalid="true"', page.text), field
    return html.unescape(said.group(1))


def test_an_owner_saves_the_billing_email_and_address_and_sees_them_audited(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get(PREFS)
    assert page.status_code == 200
    assert re.search(r'href="/billing/preferences" aria-current="page">Preferences', page.text)
    assert 'href="/billing/preferences"' in owner.get("/billing").text  # the tab bar
    assert 'value="US dollars (USD)" readonly' in page.text
    assert "keyplane bills in US dollars only" in text_of(page)
    assert "Leave it empty to send them to the Owners (owner@example.com)" in text_of(page)
    assert '<option value="US">United States</option>' in page.text

    r = save(owner, billing_email=" Billing@Example.COM ", **{**ADDRESS, "country": "us"})
    assert r.status_code == 303 and r.headers["location"] == PREFS + "?saved=1"
    page = owner.get(r.headers["location"])
    assert "Billing preferences saved." in text_of(page)
    assert 'value="billing@example.com"' in page.text
    assert '<option value="US" selected>United States</option>' in page.text
    for name, value in ADDRESS.items():
        if name != "country":
            assert f'name="{name}" type="text" maxlength' in page.text
            assert re.search(rf'name="{name}"[^>]*value="{re.escape(value)}"', page.text), name
    settings = kp.container.billing.settings(kp.org.id)
    assert settings.billing_email == "billing@example.com"
    assert settings.billing_address == BillingAddress(**ADDRESS)
    # The Limits page says where notification thresholds now go.
    assert "An email to billing@example.com the first time" in text_of(owner.get("/limits"))

    assert save(owner, billing_email="billing@example.com", **ADDRESS).status_code == 303
    assert save(owner, billing_email="billing@example.com").status_code == 303  # address removed
    assert kp.container.billing.settings(kp.org.id).billing_address is None
    entries = kp.container.audit.query(
        kp.org.id, AuditFilter(event_types=["billing_settings.updated"])
    ).events
    assert [e.details for e in reversed(entries)] == [
        {"before": {"billing_email": None, "billing_address": None},
         "after": {"billing_email": "billing@example.com", "billing_address": ADDRESS}},
        # (saved again unchanged: nothing recorded)
        {"before": {"billing_address": ADDRESS}, "after": {"billing_address": None}},
    ]  # fmt: skip
    assert all(e.actor.email == "owner@example.com" for e in entries)


def test_bad_fields_are_refused_next_to_each_field_and_nothing_is_saved(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    r = save(owner, billing_email="billing@example.com, boss@example.com", line2="Suite 5")
    assert r.status_code == 400
    assert "The preferences were not saved" in text_of(r)
    assert "valid email address" in error_for(r, "billing_email")
    assert error_for(r, "country") == "Choose a country."
    assert error_for(r, "line1") == "Enter the address line 1."
    assert error_for(r, "city") == "Enter the city."
    assert 'value="billing@example.com, boss@example.com"' in r.text  # typed, kept
    assert re.search(r'name="line2"[^>]*value="Suite 5"', r.text)
    for field, value, said in (
        ("country", "XX", "Choose a country from the list"),
        ("postal_code", "9" * 21, "Postal code has at most 20 characters."),
        ("name", "Acme\u202eInc", "Name or company cannot contain control characters."),
        ("city", "Spring\nfield", "City cannot contain control characters."),
        ("line1", "x" * 201, "Address line 1 has at most 200 characters."),
    ):
        r = save(owner, **{**ADDRESS, field: value})
        assert r.status_code == 400, field
        assert said in error_for(r, field), field
    assert kp.container.billing.settings(kp.org.id).billing_address is None
    assert kp.container.billing.settings(kp.org.id).billing_email is None
    assert events(kp, "billing_settings.updated") == []


def test_a_reader_sees_the_preferences_read_only_and_is_refused_changes(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    assert save(owner, billing_email="billing@example.com", **ADDRESS).status_code == 303
    join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get(PREFS)
    assert page.status_code == 200
    text = text_of(page)
    assert "Billing emails go to billing@example.com." in text
    assert "US dollars (USD)" in text
    assert "Acme Inc. 1 Main St Suite 5 Springfield IL 62701 United States Tax ID: US-123" in text
    assert 'method="post" action="/billing/preferences"' not in page.text
    for field in ("billing_email", *ADDRESS):
        assert f'name="{field}"' not in page.text, field  # nothing to type into
    r = reader.post(PREFS, {"billing_email": "rita@example.com", **EMPTY, "org_id": kp.org.id})
    assert r.status_code == 403
    assert kp.container.billing.settings(kp.org.id).billing_email == "billing@example.com"
    assert kp.container.billing.settings(kp.org.id).billing_address == BillingAddress(**ADDRESS)


def test_a_receipt_is_billed_to_the_address_of_the_day_of_its_payment(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    add_card(owner, VISA)
    [method] = kp.container.payments.methods(kp.org.id)
    before_any = buy(owner, "5", method.id)
    assert save(owner, **ADDRESS).status_code == 303
    first = buy(owner, "10", method.id)
    moved = {**ADDRESS, "name": "", "line1": "2 Harbour Rd", "line2": "", "city": "London",
             "state": "", "postal_code": "E1 6AN", "country": "GB", "tax_id": ""}  # fmt: skip
    assert save(owner, **moved).status_code == 303
    second = buy(owner, "10", method.id)

    def billed_to(payment_id: str) -> str:
        text = text_of(owner.get(f"/billing/history/{payment_id}/receipt"))
        return text.partition("Billed to ")[2].partition(" Date ")[0]

    assert billed_to(before_any) == "Acme"  # no address then: the organization's name
    assert billed_to(first) == (
        "Acme Inc. 1 Main St Suite 5 Springfield IL 62701 United States Tax ID US-123"
    )
    assert billed_to(second) == "Acme 2 Harbour Rd London E1 6AN United Kingdom"


@pytest.fixture
def mailing_kp(
    tmp_path: Path, simulator: ServerThread, smtp: tuple[Inbox, SmtpServer]
) -> Iterator[Keyplane]:
    """keyplane sending its emails to the test SMTP server."""
    _, server = smtp
    instance = start_keyplane(
        tmp_path, simulator.url + "/v1", smtp_port=server.port, email_dispatch_interval_s=0.05
    )
    yield instance
    instance.server.stop()
    instance.container.close()


def test_the_next_billing_email_goes_to_the_billing_email_not_the_owners(
    mailing_kp: Keyplane, smtp: tuple[Inbox, SmtpServer]
) -> None:
    """An auto-recharge declined: emailed to the billing email once one is set; without one, to
    the Owners (as before)."""
    inbox, _ = smtp
    instance = mailing_kp
    owner = Browser(kphttp.Client(base_url=instance.server.url, follow_redirects=False))
    try:
        owner.log_in_named("owner@example.com", OWNER_PASSWORD)
        assert instance.container.billing_emails(instance.org.id) == ["owner@example.com"]
        assert save(owner, billing_email="Billing@Example.com").status_code == 303
        add_card(owner, DECLINED)
        owner.get("/billing")
        # $5.00 of credit, under a $6.00 threshold: turned on, a recharge is due at once.
        on = owner.post("/billing/auto-recharge", {"threshold": "6", "target": "20"})
        assert on.status_code == 303
        instance.container.payments.run_recharges()  # (or the server's own background run did)
        wait_until(
            lambda: any("Auto-recharge" in str(m.message["Subject"]) for m in inbox.received)
        )
    finally:
        owner.client.close()
    [mail] = [m for m in inbox.received if "Auto-recharge" in str(m.message["Subject"])]
    assert mail.rcpt_tos == ["billing@example.com"]
    assert str(mail.message["To"]) == "billing@example.com"
    assert "Auto-recharge for Acme failed: your card was declined" in str(mail.message["Subject"])
