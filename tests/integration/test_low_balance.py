"""The low-balance alert ("Email me when my credit balance falls below $X"; BRIEF C5, C6): through
the real gateway, its spend watcher and a real SMTP server, one email to the billing recipients
each time the settled balance falls below the amount an Owner set, none while it stays below, one
again once a purchase brought it back above; none while the alert is off. Set on the dashboard's
Billing page (a bad amount refused next to its field) by Owners only."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
from sqlalchemy import select
from test_accounts_web import OWNER_PASSWORD, PASSWORD, text_of
from test_dashboard_keys import SignIn, browser_for, join, kp  # noqa: F401  (fixtures)
from test_payments import BUYER, VISA

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane import bootstrap
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import AuditFilter
from keyplane.storage.notify_tables import email_outbox
from keyplane.usage.pricing import format_cents
from kptest import ServerThread, wait_until
from smtp_support import Inbox, Received, SmtpServer

THRESHOLD = 1_000_000  # $1.00
CENT = 10_000


def alert_rows(c: bootstrap.Container) -> list[dict[str, object]]:
    """The low-balance emails in the outbox (sent or not)."""
    query = select(email_outbox).where(email_outbox.c.dedupe_key.like("low_balance:%"))
    with c.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def alerts(live: Keyplane, inbox: Inbox, count: int) -> list[Received]:
    """The low-balance emails the mail server received, once the outbox's ``count`` are sent."""
    rows = lambda: alert_rows(live.container)  # noqa: E731
    wait_until(lambda: len(rows()) == count and all(r["sent_at"] for r in rows()))
    return [r for r in inbox.received if " is below " in str(r.message["Subject"])]


def chat(live: Keyplane) -> None:
    """One request of about a tenth of a cent (100 output tokens of gpt-4o)."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    headers = {"authorization": f"Bearer {live.key}"}
    r = kphttp.post(live.base_url + "/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text


def spend(live: Keyplane, requests: int, sent: int) -> int:
    """Sends ``requests`` one at a time, each settled and flushed (the spend watcher has looked at
    it once its record is stored); returns how many were sent in all."""
    for _ in range(requests):
        chat(live)
        sent += 1
        live.usage(expect=sent)
    return sent


def spend_below(live: Keyplane, sent: int) -> int:
    """Spends until the balance is under the threshold (bounded); returns how many were sent."""
    for _ in range(60):
        if live.container.billing.credit_left(live.org.id) < THRESHOLD:
            return sent
        sent = spend(live, 1, sent)
    raise AssertionError("the balance never fell below the threshold")


def text_body(mail: Received) -> str:
    part = mail.message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


def html_body(mail: Received) -> str:
    part = mail.message.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def test_the_alert_emails_once_each_time_the_balance_falls_below_it(
    tmp_path: Path,
    database_url: str,
    obedient_simulator: ServerThread,
    smtp: tuple[Inbox, SmtpServer],
) -> None:
    inbox, server = smtp
    live = start_keyplane(
        tmp_path, obedient_simulator.url + "/v1", credit=THRESHOLD + 2_500,
        database_url=database_url, smtp_port=server.port, email_dispatch_interval_s=0.05,
        public_url="https://keyplane.example.com", credit_purchase_min="0.01",
    )  # fmt: skip
    c, org = live.container, live.org
    try:
        c.billing.update_settings(org.id, low_balance_alert=THRESHOLD)
        sent = spend_below(live, 0)
        [mail] = alerts(live, inbox, 1)
        assert mail.rcpt_tos == ["owner@example.com"]  # no billing email: the Owners
        assert (
            str(mail.message["Subject"]) == "[keyplane] The credit balance of Acme is below $1.00"
        )
        text = text_body(mail)
        balance = "$" + format_cents(c.billing.credit_left(org.id))
        assert text.startswith(f"The credit balance of Acme is {balance}, below $1.00.\n")
        assert "requests are refused (429 insufficient_quota)" in text
        purchase = f"https://keyplane.example.com/billing/purchase?org={org.id}"
        assert f"Add to your credit balance: {purchase}\n" in text
        assert (
            "To change the amount or turn this alert off: "
            f"https://keyplane.example.com/billing?org={org.id}#low-balance-alert\n" in text
        )
        page = html_body(mail)
        assert f"is <strong>{balance}</strong>, below $1.00" in page
        assert f'<a href="{purchase}" ' in page  # the button
        assert "You received this email because" in page

        # Still below after more spend: nothing more.
        sent = spend(live, 3, sent)
        assert len(alert_rows(c)) == 1

        # A purchase brings the balance back above; the next fall is emailed again, to the
        # billing email set meanwhile.
        c.payments.add_method(org.id, VISA)
        c.payments.purchase(org.id, 2 * CENT, actor=BUYER)
        assert c.billing.credit_left(org.id) >= THRESHOLD
        c.billing.update_settings(org.id, billing_email="books@example.com")
        live.server.call(live.gateway.pipeline.money.refresh())  # as the Admin API's change does
        spend_below(live, sent)
        first, second = alerts(live, inbox, 2)
        assert second.rcpt_tos == ["books@example.com"]
        assert str(second.message["Subject"]) == str(first.message["Subject"])

        found = c.audit.query(org.id, AuditFilter(event_types=["billing.low_balance"])).events
        assert [(e.actor.type.value, e.details["data"]["threshold_micro_usd"]) for e in found] == [
            ("system", THRESHOLD),
            ("system", THRESHOLD),
        ]
    finally:
        live.server.stop()
        c.close()


def test_no_email_while_the_alert_is_off_and_one_after_the_next_request_once_set(
    tmp_path: Path, obedient_simulator: ServerThread, smtp: tuple[Inbox, SmtpServer]
) -> None:
    """Off by default: the balance falling under any amount emails nobody. Set while the balance is
    under it already, the alert emails after the next request (the Owner asked to know)."""
    inbox, server = smtp
    live = start_keyplane(
        tmp_path, obedient_simulator.url + "/v1", credit=THRESHOLD + 2_500,
        smtp_port=server.port, email_dispatch_interval_s=0.05,
    )  # fmt: skip
    c, org = live.container, live.org
    try:
        assert c.billing.settings(org.id).low_balance_alert is None
        c.billing.update_settings(org.id, low_balance_alert=THRESHOLD)
        c.billing.update_settings(org.id, low_balance_alert=None)  # on, then off again
        sent = spend_below(live, 0)
        sent = spend(live, 2, sent)
        assert alert_rows(c) == []

        c.billing.update_settings(org.id, low_balance_alert=THRESHOLD)
        live.server.call(live.gateway.pipeline.money.refresh())
        spend(live, 1, sent)
        [mail] = alerts(live, inbox, 1)
        assert mail.rcpt_tos == ["owner@example.com"]
    finally:
        live.server.stop()
        c.close()


# -- the dashboard ---------------------------------------------------------------------------------
def alert_section(page: httpx.Response) -> str:
    """The low-balance alert section of Billing → Overview, as text."""
    section = page.text.partition('id="low-balance-alert"')[2].partition("</section>")[0]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", section)).split())


def test_an_owner_sets_the_alert_on_the_billing_page_and_a_bad_amount_is_refused_by_its_field(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/billing")
    assert "The low balance alert is off" in alert_section(page)
    assert "Turn on the alert" in alert_section(page)
    assert "Turn off the alert" not in alert_section(page)
    for typed, said in (
        ("", "Enter the balance to be emailed under, like 10.00."),
        ("0.99", "The amount must be between $1.00 and $100,000.00."),
        ("100000.01", "The amount must be between $1.00 and $100,000.00."),
        ("-5", "The amount must be between $1.00 and $100,000.00."),
        ("ten", "Enter an amount in dollars, like 10.50."),
        ("1.005", "The amount is finer than a cent"),
    ):
        owner.get("/billing")
        r = owner.post("/billing/low-balance-alert", {"amount": typed})
        assert r.status_code == 400, typed
        error = re.search(r'id="low-balance-amount-error">([^<]*)<', r.text)
        assert error is not None and said in html.unescape(error.group(1)), text_of(r)
        assert re.search(r'id="low-balance-amount"[^>]*aria-invalid="true"', r.text)
        assert f'required value="{typed}"' in r.text
        assert kp.container.billing.settings(kp.org.id).low_balance_alert is None
    assert (
        kp.container.audit.query(
            kp.org.id, AuditFilter(event_types=["billing_settings.updated"])
        ).events
        == []
    )

    owner.get("/billing")
    on = owner.post("/billing/low-balance-alert", {"amount": "$10"})
    assert on.status_code == 303 and on.headers["location"] == "/billing#low-balance-alert"
    assert kp.container.billing.settings(kp.org.id).low_balance_alert == 10_000_000
    page = owner.get("/billing")
    assert (
        "The low balance alert is on: when your credit balance falls below $10.00, the "
        "organization's Owners are emailed, once each time it does." in alert_section(page)
    )
    assert 'id="low-balance-amount" name="amount" type="text" inputmode="decimal" required value="10.00"' in page.text  # fmt: skip
    off = owner.post("/billing/low-balance-alert/off", {})
    assert off.status_code == 303
    assert kp.container.billing.settings(kp.org.id).low_balance_alert is None
    entries = kp.container.audit.query(
        kp.org.id, AuditFilter(event_types=["billing_settings.updated"])
    ).events
    assert [(e.details["before"], e.details["after"]) for e in reversed(entries)] == [
        ({"low_balance_alert_micro_usd": None}, {"low_balance_alert_micro_usd": 10_000_000}),
        ({"low_balance_alert_micro_usd": 10_000_000}, {"low_balance_alert_micro_usd": None}),
    ]


def test_a_reader_sees_the_alert_but_cannot_change_it(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    kp.container.billing.update_settings(kp.org.id, low_balance_alert=3_000_000)
    join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get("/billing")
    assert "The low balance alert is on: when your credit balance falls below $3.00" in (
        alert_section(page)
    )
    assert (
        "<form" not in page.text.partition('id="low-balance-alert"')[2].partition("</section>")[0]
    )
    assert reader.post("/billing/low-balance-alert/off", {}).status_code == 403
    reader.get("/billing")
    assert reader.post("/billing/low-balance-alert", {"amount": "5"}).status_code == 403
    assert kp.container.billing.settings(kp.org.id).low_balance_alert == 3_000_000


def test_credit_added_arms_the_alert_again_though_the_watcher_never_saw_the_balance_above_it(
    tmp_path: Path,
) -> None:
    """A purchase lifts the balance over the threshold and spend takes it under again before the
    spend watcher looks: the fall is emailed all the same (the purchase armed the alert)."""
    from conftest import initialized
    from keyplane.billing.periods import period_of
    from keyplane.billing.wallet import Lot
    from keyplane.billing.watcher import SpendWatcher

    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1", credit=THRESHOLD)
    try:
        c.billing.update_settings(org.id, low_balance_alert=THRESHOLD)
        watcher = SpendWatcher(
            c.money_store, c.outbox, c.clock, billing_emails=c.billing_emails,
            org_name=c.accounts.org_name, public_url="http://keyplane.test", audit=c.audit,
        )  # fmt: skip
        now = c.clock.now()
        money = c.money_store.load(org.id, period_of(now), c.billing.usage_limit_for)
        [lot] = money.lots
        lot.remaining = THRESHOLD - CENT  # the gateway's books: spent under the threshold
        assert watcher.check([org.id], {org.id: money}) == 1
        assert watcher.check([org.id], {org.id: money}) == 0

        c.billing.grant(org.id, 5 * CENT, note="goodwill")  # $1.05 as stored: armed again
        [added] = [x for x, _ in c.billing.balance(org.id).lots if x.id != lot.id]
        money.add_lot(
            Lot(added.id, "grant", added.amount, CENT // 2, added.created_at, added.expires_at)
        )
        assert money.balance(now) < THRESHOLD  # spent under again before the watcher looked
        assert watcher.check([org.id], {org.id: money}) == 1
        assert len(alert_rows(c)) == 2
    finally:
        c.close()
