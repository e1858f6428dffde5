"""The dashboard's Billing pages against a real keyplane (the sandbox payment provider, the public
test cards): adding a card, buying credit through Configure payment and Confirm payment, once per
form however often it is sent, declines, bad card details and amounts, Readers, removing a card,
and the billing history with its receipts. The flow in a real browser is in
tests/e2e/test_browser.py."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import time

import httpx
from sqlalchemy import update
from test_accounts_web import OWNER_PASSWORD, PASSWORD, Browser, text_of
from test_admin_billing import add_organization
from test_dashboard_keys import SignIn, browser_for, join, kp  # noqa: F401  (fixtures)
from test_payments import BUYER

from conftest import Keyplane
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import AuditFilter
from keyplane.billing.payment_ports import CardDetails, PaymentMethod
from keyplane.billing.wallet import Lot
from keyplane.ids import new_id
from keyplane.storage import tables
from keyplane.usage.pricing import format_usd
from kptest import wait_until

YEAR = dt.datetime.now(dt.UTC).year + 3
YY = YEAR % 100
VISA = "4242 4242 4242 4242"
DECLINED = "4000 0000 0000 0002"
MASTERCARD = "5555 5555 5555 4444"
AMEX = "3782 822463 10005"


def add_card(b: Browser, number: str, *, cvc: str = "123", default: bool = False) -> httpx.Response:
    b.get("/billing/payment-methods/new")
    fields = {"number": number, "expiry": f"12 / {YY}", "cvc": cvc}
    return b.post("/billing/payment-methods", fields | ({"make_default": "on"} if default else {}))


def owner_with_card(instance: Keyplane, sign_in: SignIn) -> tuple[Browser, PaymentMethod]:
    """The Owner signed in, with the Visa test card saved (their only, default card)."""
    owner = sign_in("owner@example.com", OWNER_PASSWORD)
    add_card(owner, VISA)
    [method] = instance.container.payments.methods(instance.org.id)
    return owner, method


def confirm_page(b: Browser, amount: str, method_id: str, form_id: str = "") -> httpx.Response:
    """Configure payment sent with an amount and a card: the Confirm payment page."""
    address = {"amount": amount, "payment_method": method_id, "form_id": form_id}
    page = b.get("/billing/purchase/confirm", params=address)
    assert page.status_code == 200, text_of(page)
    return page


def hidden(page: httpx.Response) -> dict[str, str]:
    fields = dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', page.text))
    return {k: html.unescape(v) for k, v in fields.items()}


def confirm_form(b: Browser, amount: str, method_id: str, form_id: str = "") -> dict[str, str]:
    """The Confirm payment form's fields, as a browser sends them (its one-time id included)."""
    return hidden(confirm_page(b, amount, method_id, form_id))


def buy(b: Browser, amount: str, method_id: str) -> str:
    """Configure payment, then Confirm payment: the payment's id ("" when declined)."""
    paid = b.post("/billing/purchase/confirm", confirm_form(b, amount, method_id))
    location = paid.headers.get("location", "")
    return location.partition("paid=")[2]


def day(ts: int | None) -> str:
    """A date as the dashboard writes one: "Dec 6, 2026" (UTC)."""
    assert ts is not None
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return f"{when:%b} {when.day}, {when.year}"


def rows_of(page: httpx.Response) -> list[str]:
    """The text of each line of the page's table."""
    body = page.text.partition("<tbody>")[2].partition("</tbody>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", row)).split()) for row in rows]


def balance(instance: Keyplane) -> int:
    return instance.container.billing.balance(instance.org.id).available


def events(instance: Keyplane, *types: str) -> list[str]:
    """The types of the organization's audit events of ``types``."""
    audit, org_id = instance.container.audit, instance.org.id
    found = audit.query(org_id, AuditFilter(event_types=types), limit=100)
    return [e.type for e in found.events]


def test_an_owner_adds_a_card_buys_10_dollars_and_sees_the_balance_and_the_history(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    before = balance(kp)
    overview = owner.get("/billing")
    assert 'href="/billing/purchase"' in overview.text and "Add to credit balance" in overview.text
    assert re.search(r'href="/billing" aria-current="page">Overview', overview.text)
    assert "No payment method yet" in text_of(owner.get("/billing/purchase"))

    added = add_card(owner, VISA)
    [method] = kp.container.payments.methods(kp.org.id)
    where = f"/billing/payment-methods?added={method.id}"
    assert added.status_code == 303 and added.headers["location"] == where
    listing = owner.get(where)
    assert "Visa •••• 4242 Default" in text_of(listing) and f"12/{YEAR}" in text_of(listing)
    assert re.search(r'role="status">Visa •••• 4242 was added\.<', listing.text)
    assert 'role="status"' not in owner.get("/billing/payment-methods").text
    assert re.search(r'aria-current="page">Payment methods', listing.text)

    configure = text_of(owner.get("/billing/purchase"))
    assert "Enter an amount between $5.00 and $100.00" in configure and "(default)" in configure
    confirm = text_of(confirm_page(owner, "10", method.id))
    assert "Confirm payment" in confirm and "$10.00" in confirm and "Visa •••• 4242" in confirm
    paid = owner.post("/billing/purchase/confirm", {"amount": "10.00", "payment_method": method.id})
    assert paid.status_code == 303 and paid.headers["location"].startswith("/billing?paid=pay_")
    assert balance(kp) == before + 10_000_000
    page = text_of(owner.get(paid.headers["location"]))
    new_balance = format_usd(before + 10_000_000)
    assert (
        f"Payment of $10.00 charged to Visa •••• 4242: your credit balance is now ${new_balance}"
        in page
    )
    assert f"Credit balance: ${new_balance}" in page

    history = owner.get("/billing/history")
    assert re.search(r'aria-current="page">Billing history', history.text)
    assert "Credit purchase Visa •••• 4242 $10.00 Succeeded" in text_of(history)
    assert sorted(events(kp, "payment_method.created", "credit_purchase.created")) == [
        "credit_purchase.created", "payment_method.created"
    ]  # fmt: skip
    logged = json.dumps(
        [e.details for e in kp.container.audit.query(kp.org.id, AuditFilter()).events]
    )
    assert "4242424242424242" not in logged and "4242 4242" not in logged


def test_sending_the_confirm_form_again_charges_once(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    """A double click, a form sent again, Back to Confirm payment and Confirm again: one charge,
    one credit, one audit event. Only Configure payment starts another purchase."""
    owner, method = owner_with_card(kp, browser_for)
    before = balance(kp)
    form_id = hidden(owner.get("/billing/purchase"))["form_id"]
    fields = confirm_form(owner, "10.50", method.id, form_id)
    assert fields["form_id"] == form_id
    first = owner.client.post("/billing/purchase/confirm", data=fields)
    again = owner.client.post("/billing/purchase/confirm", data=fields)
    back = owner.post("/billing/purchase/confirm", confirm_form(owner, "10.50", method.id, form_id))
    assert first.status_code == again.status_code == back.status_code == 303
    assert first.headers["location"] == again.headers["location"] == back.headers["location"]
    assert balance(kp) == before + 10_500_000
    assert len(kp.container.payments.history(kp.org.id)) == 1
    assert events(kp, "credit_purchase.created") == ["credit_purchase.created"]
    other_org = owner.client.post(
        "/billing/purchase/confirm", data=fields | {"org_id": "org_switched_to_since"}
    )
    assert other_org.status_code == 409 and balance(kp) == before + 10_500_000


def test_a_declined_card_says_so_credits_nothing_and_is_a_failed_line_of_the_history(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    add_card(owner, VISA)
    assert add_card(owner, DECLINED, default=True).status_code == 303
    declined = kp.container.payments.methods(kp.org.id)[0]
    assert declined.last4 == "0002" and declined.is_default
    before = balance(kp)
    fields = confirm_form(owner, "10", declined.id)
    r = owner.post("/billing/purchase/confirm", fields)
    assert r.status_code == 402 and "Your card was declined." in text_of(r)
    assert 'value="10.00"' in r.text and "Configure payment" in text_of(r)  # the form again
    r = owner.client.post("/billing/purchase/confirm", data=fields)
    assert r.status_code == 402  # sent again: the same decline, not a second charge
    assert balance(kp) == before
    assert "Credit purchase Visa •••• 0002 $10.00 Failed Your card was declined." in text_of(
        owner.get("/billing/history")
    )
    assert len(kp.container.payments.history(kp.org.id)) == 1
    assert events(kp, "credit_purchase.created") == ["credit_purchase.created"]  # once


def test_bad_card_details_are_refused_next_to_their_field_and_never_shown_again(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    cases = [
        ({"number": "4242 4242 4242 4241"}, "number", "Your card number is incorrect."),
        ({"number": "4111 1111 1111 1111"}, "number", "takes test cards only"),
        ({"number": ""}, "number", "Enter your card number."),
        ({"expiry": "01 / 20"}, "expiry", "Your card's expiration date is in the past."),
        ({"expiry": "13/30"}, "expiry", "Your card's expiration month is invalid."),
        ({"expiry": "soon"}, "expiry", "Enter the expiration date as MM / YY"),
        ({"cvc": "12"}, "cvc", "Your card's security code must be 3 digits."),
        ({"number": AMEX, "cvc": "123"}, "cvc", "Your card's security code must be 4 digits."),
    ]
    for change, field, said in cases:
        owner.get("/billing/payment-methods/new")
        typed = {"number": VISA, "expiry": f"12 / {YY}", "cvc": "123"} | change
        r = owner.post("/billing/payment-methods", typed)
        text = text_of(r)
        assert r.status_code == 400 and said in text, (change, text)
        next_to = re.search(rf'id="card-{field}-error">([^<]*)<', r.text)  # (aria-describedby)
        assert next_to and said in html.unescape(next_to.group(1))
        assert f'value="{html.escape(typed["expiry"])}"' in r.text  # the expiry is kept
        number = typed["number"]
        assert not number or (number not in r.text and number.replace(" ", "") not in r.text)
        assert 'name="cvc" value' not in r.text and f'value="{typed["cvc"]}"' not in r.text
    assert kp.container.payments.methods(kp.org.id) == []
    assert events(kp, "payment_method.created") == []


def test_an_amount_outside_the_bounds_is_refused_on_the_form(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner, method = owner_with_card(kp, browser_for)
    for typed, said in (
        ("4.99", "The amount must be between $5.00 and $100.00."),
        ("100.01", "The amount must be between $5.00 and $100.00."),
        ("-5", "The amount must be between $5.00 and $100.00."),
        ("$-5", "The amount must be between $5.00 and $100.00."),
        ("10.005", "The amount is finer than a cent: enter dollars and cents, like 10.50."),
        ("1e3", "Enter an amount in dollars, like 10.50."),
        ("ten", "Enter an amount in dollars, like 10.50."),
        ("", "Enter the amount"),
    ):
        r = owner.get(
            "/billing/purchase/confirm", params={"amount": typed, "payment_method": method.id}
        )
        assert r.status_code == 400 and said in text_of(r), (typed, text_of(r))
        assert f'value="{typed}"' in r.text and "Configure payment" in text_of(r)
        assert "1000000000" not in text_of(r) and "from 0 to" not in text_of(r)
    fields = confirm_form(owner, "10", method.id) | {"amount": "500"}  # a changed hidden field
    r = owner.post("/billing/purchase/confirm", fields)
    assert r.status_code == 400 and "between $5.00 and $100.00" in text_of(r)
    assert kp.container.payments.history(kp.org.id) == []


def test_a_reader_sees_the_billing_pages_without_forms_and_is_refused_changes(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner, method = owner_with_card(kp, browser_for)
    fields = confirm_form(owner, "10", method.id)
    join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    for path, shows in (
        ("/billing", "Credit balance"),
        ("/billing/payment-methods", "Visa •••• 4242 Default"),
        ("/billing/history", "Credit grant test credit"),
    ):
        page = reader.get(path)
        assert page.status_code == 200 and shows in text_of(page)
        assert 'method="post" action="/billing' not in page.text
        for absent in ("Add to credit balance", "Add payment details", "Make default", "Remove"):
            assert absent not in page.text, (path, absent)
    for path in ("/billing/purchase", "/billing/payment-methods/new",
                 f"/billing/payment-methods/{method.id}/remove"):  # fmt: skip
        assert reader.get(path).status_code == 403
    reader.get("/billing")
    for path, data in (
        ("/billing/purchase/confirm", {k: v for k, v in fields.items() if k != "csrf_token"}),
        ("/billing/payment-methods", {"number": VISA, "expiry": f"12/{YY}", "cvc": "123"}),
        (f"/billing/payment-methods/{method.id}/default", {}),
        (f"/billing/payment-methods/{method.id}/remove", {}),
    ):
        assert reader.post(path, data).status_code == 403, path
        reader.get("/billing")
    assert kp.container.payments.history(kp.org.id) == []
    assert len(kp.container.payments.methods(kp.org.id)) == 1


def test_make_default_then_remove_it_after_a_confirmation_moves_the_default(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    add_card(owner, VISA)
    add_card(owner, MASTERCARD)
    add_card(owner, AMEX, cvc="1234")
    by_last4 = {m.last4: m for m in kp.container.payments.methods(kp.org.id)}
    assert by_last4["4242"].is_default and not by_last4["4444"].is_default
    owner.get("/billing/payment-methods")
    made = owner.post(f"/billing/payment-methods/{by_last4['4444'].id}/default", {})
    assert made.status_code == 303
    assert "Mastercard •••• 4444 Default" in text_of(owner.get("/billing/payment-methods"))

    page = owner.get(f"/billing/payment-methods/{by_last4['4444'].id}/remove")
    text = text_of(page)
    assert page.status_code == 200 and "Remove payment method" in text
    successor = re.search(r"((?:Visa|American Express) •••• \d{4}) becomes the default", text)
    assert successor, text  # (the newest other card: they may share a second here)
    assert len(kp.container.payments.methods(kp.org.id)) == 3  # nothing removed by asking
    removed = owner.post(f"/billing/payment-methods/{by_last4['4444'].id}/remove", {})
    assert removed.status_code == 303
    listing = text_of(owner.get("/billing/payment-methods"))
    assert f"{successor.group(1)} Default" in listing and "4444" not in listing
    assert len(kp.container.payments.methods(kp.org.id)) == 2
    assert (
        owner.post(f"/billing/payment-methods/{by_last4['4444'].id}/remove", {}).status_code == 404
    )
    assert sorted(events(kp, "payment_method.updated", "payment_method.deleted")) == [
        "payment_method.deleted", "payment_method.updated"
    ]  # fmt: skip


def test_the_history_lists_charges_and_grants_newest_first_and_a_purchase_once(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    """A card purchase is one line (its charge's, not its credit lot's too); a grant is a line with
    its note and expiry, revoked or not; a purchase paid outside keyplane (recorded by the
    operator) is a line without a card."""
    billing = kp.container.billing
    now = int(time.time())
    old = Lot(new_id("cg_"), "grant", 3_000_000, 3_000_000, now - 40 * 86400, now - 10 * 86400)
    kp.container.money_store.add_lot(kp.org.id, old, "Conference <b>promo</b>", "grants")
    owner, method = owner_with_card(kp, browser_for)
    paid = buy(owner, "10", method.id)
    recorded = billing.record_purchase(kp.org.id, 20_000_000)
    lots = {note: lot for lot, note in billing.balance(kp.org.id).lots if lot.kind == "grant"}
    billing.revoke_grant(kp.org.id, lots["test credit"].id)
    [charge] = kp.container.payments.history(kp.org.id)

    page = owner.get("/billing/history")
    assert page.status_code == 200 and re.search(r'aria-current="page">Billing history', page.text)
    rows = rows_of(page)
    test_credit = lots["test credit"]
    assert len(rows) == 4, rows  # the $10.00 purchase's lot has no line of its own
    assert sorted(rows[:3]) == sorted([
        f"{day(charge.created_at)} Credit purchase Visa •••• 4242 $10.00 Succeeded Receipt for the "
        f"$10.00 charge of {day(charge.created_at)}",
        f"{day(recorded.created_at)} Credit purchase paid outside keyplane · expires "
        f"{day(recorded.expires_at)} — $20.00 Recorded",
        f"{day(test_credit.created_at)} Credit grant test credit · expires "
        f"{day(test_credit.expires_at)} — $5.00 Revoked",
    ])  # fmt: skip
    assert rows[3] == (
        f"{day(old.created_at)} Credit grant Conference <b>promo</b> · expired "
        f"{day(old.expires_at)} — $3.00 Granted"
    )  # the oldest, last
    assert "Conference &lt;b&gt;promo&lt;/b&gt;" in page.text
    assert f'<a href="/billing/history/{paid}/receipt" download>' in page.text


def test_a_receipt_downloads_as_one_printable_file_with_what_was_paid(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    name = '<script>alert("x")</script> & Co'
    with kp.container.engine.begin() as conn:
        conn.execute(
            update(tables.organizations)
            .where(tables.organizations.c.id == kp.org.id)
            .values(name=name)
        )
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    add_card(owner, MASTERCARD)
    [method] = kp.container.payments.methods(kp.org.id)
    paid = buy(owner, "12.34", method.id)
    [payment] = kp.container.payments.history(kp.org.id)
    [lot] = [lot for lot, _ in kp.container.billing.balance(kp.org.id).lots if lot.kind != "grant"]
    assert payment.lot_id == lot.id

    r = owner.get(f"/billing/history/{paid}/receipt")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="keyplane-receipt-{paid}.html"'
    )
    when = dt.datetime.fromtimestamp(payment.created_at, dt.UTC)
    text = text_of(r)
    for said in (
        "Receipt keyplane",
        f"Billed to {name}",
        f"Date {day(payment.created_at)}, {when:%H:%M:%S} UTC",
        f"Receipt number {paid}",
        "Paid with Mastercard •••• 4444",
        f"Credit grant {lot.id}",
        f"Credit purchase Prepaid credit, non-refundable, expires {day(lot.expires_at)} $12.34",
        "Amount paid $12.34 USD",
    ):
        assert said in text, (said, text)
    assert "Payment reference" not in text  # the sandbox makes no payment id (Stripe: pi_…)
    assert "<script>" not in r.text and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in r.text
    assert "<style>" in r.text  # self-contained: nothing to fetch, nothing to run
    for external in ("<link", "<script", "src=", "href=", "url(", "@import"):
        assert external not in r.text, external
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_a_declined_charge_and_another_organizations_payment_have_no_receipt(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    add_card(owner, VISA)
    add_card(owner, DECLINED)
    by_last4 = {m.last4: m for m in kp.container.payments.methods(kp.org.id)}
    paid = buy(owner, "10", by_last4["4242"].id)
    assert buy(owner, "10", by_last4["0002"].id) == ""
    declined = next(p for p in kp.container.payments.history(kp.org.id) if p.id != paid)
    assert declined.status == "failed"
    history = owner.get("/billing/history")
    receipts = re.findall(r'href="(/billing/history/[^"]+/receipt)"', history.text)
    assert receipts == [f"/billing/history/{paid}/receipt"]  # not the declined line's
    assert owner.get(receipts[0]).status_code == 200
    assert owner.get(f"/billing/history/{declined.id}/receipt").status_code == 404

    other_org, _, _ = add_organization(kp.container, "globex")
    payments = kp.container.payments
    payments.add_method(other_org, CardDetails(VISA.replace(" ", ""), 12, YEAR, "123"))
    theirs = payments.purchase(other_org, 10_000_000, actor=BUYER)
    assert theirs.status == "succeeded"
    assert owner.get(f"/billing/history/{theirs.id}/receipt").status_code == 404
    assert owner.get("/billing/history/pay_nothing/receipt").status_code == 404


def test_a_reader_downloads_a_receipt(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner, method = owner_with_card(kp, browser_for)
    paid = buy(owner, "10", method.id)
    join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    history = reader.get("/billing/history")
    assert f'href="/billing/history/{paid}/receipt"' in history.text
    r = reader.get(f"/billing/history/{paid}/receipt")
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment;")
    assert "Paid with Visa •••• 4242" in text_of(r) and "$10.00" in text_of(r)


def recharge_form(page: httpx.Response) -> str:
    """The auto-recharge section of the Overview, as text."""
    section = page.text.partition('id="auto-recharge"')[2].partition("</section>")[0]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", section)).split())


def test_an_owner_turns_auto_recharge_on_with_its_amounts_and_it_tops_the_balance_up(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    """Off by default; on with a threshold and a target (checked against the bounds, each other
    and a saved card), audited as the Admin API's change is; then a balance under the threshold
    is bought back up to the target with the card."""
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/billing")
    section = recharge_form(page)
    assert "Auto recharge is off" in section and "Turn on auto recharge" in section
    assert "Turn off auto recharge" not in section
    assert 'name="threshold" type="text" inputmode="decimal" required value=""' in page.text
    r = owner.post("/billing/auto-recharge", {"threshold": "6", "target": "20"})  # no card yet
    assert r.status_code == 400
    assert "Add a payment method first: auto recharge charges your default card." in text_of(r)
    assert 'href="/billing/payment-methods/new?next=/billing"' in r.text
    assert not kp.container.billing.settings(kp.org.id).auto_recharge

    add_card(owner, VISA)
    for threshold, target, field, said in (
        ("4.99", "20", "threshold", "The amount must be between $5.00 and $95.00."),
        ("-5", "20", "threshold", "The amount must be between $5.00 and $95.00."),
        ("six", "20", "threshold", "Enter an amount in dollars, like 10.50."),
        ("6", "100.01", "target", "The amount must be between $10.00 and $100.00."),
        ("6", "", "target", "Enter the balance to bring it back up to, like 10.00."),
        ("6.005", "20", "threshold", "The amount is finer than a cent"),
        ("20", "20", "target", "The amount must be more than the threshold ($20.00)"),
    ):
        owner.get("/billing")
        r = owner.post("/billing/auto-recharge", {"threshold": threshold, "target": target})
        assert r.status_code == 400, (threshold, target)
        said_by = re.search(rf'id="recharge-{field}-error">([^<]*)<', r.text)
        assert said_by is not None and said in html.unescape(said_by.group(1)), text_of(r)
        assert re.search(rf'id="recharge-{field}"[^>]*aria-invalid="true"', r.text)
        assert f'required value="{threshold}"' in r.text and f'required value="{target}"' in r.text
        assert "1000000000" not in r.text
        assert not kp.container.billing.settings(kp.org.id).auto_recharge
    assert events(kp, "billing_settings.updated") == []

    # $5.00 of credit, under a $6.00 threshold: turning it on buys it back up to $20.00.
    assert balance(kp) == 5_000_000
    owner.get("/billing")
    on = owner.post("/billing/auto-recharge", {"threshold": "6", "target": "$20"})
    assert on.status_code == 303 and on.headers["location"] == "/billing#auto-recharge"
    settings = kp.container.billing.settings(kp.org.id)
    assert (settings.auto_recharge, settings.recharge_threshold, settings.recharge_target) == (
        True, 6_000_000, 20_000_000
    )  # fmt: skip
    kp.container.payments.run_recharges()  # (or the server's own background run did)
    wait_until(lambda: balance(kp) == 20_000_000)
    [payment] = kp.container.payments.history(kp.org.id)
    assert (payment.kind, payment.amount, payment.status) == ("recharge", 15_000_000, "succeeded")
    page = owner.get("/billing")
    section = recharge_form(page)
    assert (
        "Auto recharge is on: when your credit balance falls below $6.00, Visa •••• 4242 is "
        "charged to bring it back up to $20.00." in section
    )
    assert 'required value="6.00"' in page.text and 'required value="20.00"' in page.text
    assert "Credit balance: $20.00" in text_of(page)
    assert "Auto-recharge Visa •••• 4242 $15.00 Succeeded" in text_of(owner.get("/billing/history"))
    [entry] = kp.container.audit.query(
        kp.org.id, AuditFilter(event_types=["billing_settings.updated"])
    ).events
    assert entry.actor.email == "owner@example.com"
    assert entry.details == {
        "before": {"auto_recharge": {"enabled": False, "threshold_micro_usd": None,
                                     "target_micro_usd": None}},
        "after": {"auto_recharge": {"enabled": True, "threshold_micro_usd": 6_000_000,
                                    "target_micro_usd": 20_000_000}},
    }  # fmt: skip


def test_one_button_turns_auto_recharge_off_and_then_nothing_is_bought(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner, _ = owner_with_card(kp, browser_for)
    kp.container.billing.update_settings(
        kp.org.id, auto_recharge=True, recharge_threshold=5_000_000, recharge_target=20_000_000
    )
    page = owner.get("/billing")
    assert "Auto recharge is on" in recharge_form(page)
    off = owner.post("/billing/auto-recharge/off", {})
    assert off.status_code == 303
    settings = kp.container.billing.settings(kp.org.id)
    assert not settings.auto_recharge and settings.recharge_threshold == 5_000_000  # (kept)
    page = owner.get("/billing")
    section = recharge_form(page)
    assert "Auto recharge is off" in section and "Turn off auto recharge" not in section
    assert 'required value="5.00"' in page.text  # the form as it was, to turn it on again
    # A recharge asked for before it was turned off (the spend watcher's) buys nothing now.
    [(lot, _)] = kp.container.billing.balance(kp.org.id).lots
    kp.container.billing.revoke_grant(kp.org.id, lot.id)  # $0.00 left: under the $5.00
    assert kp.container.money_store.enqueue_recharge("rj_off", kp.org.id, 20_000_000, 0)
    kp.container.payments.run_recharges()
    assert kp.container.payments.history(kp.org.id) == []
    [entry] = kp.container.audit.query(
        kp.org.id, AuditFilter(event_types=["billing_settings.updated"])
    ).events
    assert entry.details == {
        "before": {"auto_recharge": {"enabled": True, "threshold_micro_usd": 5_000_000,
                                     "target_micro_usd": 20_000_000}},
        "after": {"auto_recharge": {"enabled": False, "threshold_micro_usd": 5_000_000,
                                    "target_micro_usd": 20_000_000}},
    }  # fmt: skip
    owner.get("/billing")
    assert owner.post("/billing/auto-recharge/off", {}).status_code == 303  # sent again
    assert len(events(kp, "billing_settings.updated")) == 1  # (nothing changed: not recorded)


def test_a_reader_sees_whether_auto_recharge_is_on_but_cannot_change_it(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner_with_card(kp, browser_for)
    kp.container.billing.update_settings(
        kp.org.id, auto_recharge=True, recharge_threshold=5_000_000, recharge_target=20_000_000
    )
    join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get("/billing")
    section = recharge_form(page)
    assert "Auto recharge is on: when your credit balance falls below $5.00" in section
    assert "<form" not in page.text.partition('id="auto-recharge"')[2].partition("</section>")[0]
    assert reader.post("/billing/auto-recharge/off", {}).status_code == 403
    reader.get("/billing")
    r = reader.post("/billing/auto-recharge", {"threshold": "6", "target": "30"})
    assert r.status_code == 403
    settings = kp.container.billing.settings(kp.org.id)
    assert (settings.auto_recharge, settings.recharge_target) == (True, 20_000_000)
