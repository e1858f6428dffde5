"""Refunds and disputes of credit purchases made through Stripe (billing/reversals.py): Stripe's
signed events posted to the real webhook route, Stripe's API the only stand-in (tests/stripe_fake.py,
which also plays the operator refunding in Stripe's Dashboard and the cardholder disputing). The
credit comes off the balance once per event however often and in whatever order Stripe sends them,
from the purchase's own lot first and below zero when it was spent; a failed refund and a won
dispute give it back; the billing history, the receipt, the audit log, the webhook event and an
email say so; and the gateway refuses what the reduced balance no longer covers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from test_accounts_web import text_of
from test_admin_org import admin_key
from test_low_balance import alert_rows
from test_payments import BUYER, entries
from test_stripe_payments import (
    billing_history,
    crash_after_the_charge,
    deliver,
    owner_browser,
    post_event,
    receipt_of,
    stripe_settings,
)

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane import bootstrap
from keyplane.billing.payment_ports import Payment, ProviderReport
from keyplane.billing.payments import PROVIDER
from keyplane.billing.periods import period_of
from keyplane.billing.reversals import EVENTS
from keyplane.billing.wallet import Hold, Outcome
from keyplane.clock import FrozenClock
from keyplane.notify.dispatcher import EmailDispatcher
from keyplane.notify.smtp import SmtpMailer
from keyplane.storage.billing_tables import ledger_entries
from keyplane.storage.webhook_tables import webhook_deliveries
from keyplane.usage.records import Outcome as RequestOutcome
from keyplane.usage.records import UsageRecord
from kptest import ServerThread, wait_until
from smtp_support import Inbox, SmtpServer
from stripe_fake import FakeStripe, event, signature

USD = 1_000_000


@contextlib.contextmanager
def keyplane(
    tmp_path: Path, fake: FakeStripe, database_url: str = "", upstream: str = "http://sim/v1",
    **more: Any,
) -> Iterator[Keyplane]:  # fmt: skip
    kp = start_keyplane(
        tmp_path, upstream, credit=0, database_url=database_url, **stripe_settings(fake), **more
    )
    try:
        yield kp
    finally:
        kp.server.stop()
        kp.container.close()


def buy(kp: Keyplane, fake: FakeStripe, dollars: int) -> tuple[Payment, dict[str, Any]]:
    """A credit purchase paid through Stripe: its line of the history and its PaymentIntent."""
    c, org_id = kp.container, kp.org.id
    if not c.payments.methods(org_id):
        c.payments.add_method(org_id, fake.card())
    paid = c.payments.purchase(org_id, dollars * USD, actor=BUYER)
    [intent] = [i for i in fake.charges if i["id"] == paid.provider_ref]
    return paid, intent


def send(kp: Keyplane, kind: str, obj: dict[str, Any], times: int = 1) -> bytes:
    """Stripe's event, signed, posted ``times`` (at least once: redelivered); returns it."""
    payload = event(kind, obj)
    send_again(kp, payload, times)
    return payload


def send_again(kp: Keyplane, payload: bytes, times: int = 1) -> None:
    for _ in range(times):
        r = post_event(kp.server.url, payload, signature(payload))
        assert r.status_code == 200, r.text
        assert r.json() == {"received": True}


def balance(kp: Keyplane) -> int:
    return kp.container.billing.balance(kp.org.id).available


def remaining(kp: Keyplane, lot_id: str | None) -> int:
    return next(
        lot.remaining for lot, _ in kp.container.billing.balance(kp.org.id).lots if lot.id == lot_id
    )


def moves(c: bootstrap.Container, txn: str) -> list[tuple[str, str | None, int]]:
    """A ledger transaction's entries: (account, lot id, amount)."""
    e = ledger_entries.c
    with c.engine.connect() as conn:
        rows = conn.execute(
            select(e.account, e.lot_id, e.amount_micro).where(e.txn_id == txn).order_by(e.id)
        ).all()
    return [(account, lot_id, int(amount)) for account, lot_id, amount in rows]


def page_text(kp: Keyplane, path: str) -> str:
    """A dashboard page's text, as the Owner sees it."""
    owner = owner_browser(kp)
    try:
        page = owner.get(path)
        assert page.status_code == 200
        return text_of(page)
    finally:
        owner.close()


def history_text(kp: Keyplane) -> str:
    return page_text(kp, "/billing/history")


def webhook_events(c: bootstrap.Container) -> list[dict[str, Any]]:
    """The webhook events queued for the organization's endpoints, oldest first."""
    with c.engine.connect() as conn:
        rows = conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.id)).all()
    return [json.loads(row.body) for row in rows]


def emails(c: bootstrap.Container, inbox: Inbox) -> list[tuple[str, str]]:
    """(subject, body) of the emails the mail server received, once the outbox is sent."""
    asyncio.run(EmailDispatcher(c.outbox, SmtpMailer.from_settings(c.settings), c.clock).run_once())
    sent = []
    for mail in inbox.received:
        part = mail.message.get_body(("plain",))  # (the HTML beside it: test_email_html.py)
        assert part is not None
        text: str = part.get_content()  # type: ignore[attr-defined]
        sent.append((str(mail.message["Subject"]), text.replace("\r\n", "\n")))
    return sent


# -- refunds ----------------------------------------------------------------------------------------
def test_a_partial_refund_takes_its_credit_back_once_however_often_stripe_sends_it(
    tmp_path: Path, fake: FakeStripe, database_url: str, smtp: tuple[Inbox, SmtpServer]
) -> None:
    inbox, server = smtp
    with keyplane(tmp_path, fake, database_url, smtp_port=server.port) as kp:
        c, org_id = kp.container, kp.org.id
        c.webhooks.create(org_id, "https://hooks.example/kp", ["billing.payment_refunded"])
        paid, intent = buy(kp, fake, 20)
        c.billing.grant(org_id, 3 * USD, note="goodwill")
        assert balance(kp) == 23 * USD
        refund = fake.refund(intent, 500)  # $5 of the $20, in Stripe's Dashboard
        charge = fake.charge_of(intent)
        assert charge["amount_refunded"] == 500
        # Stripe sends each event at least once: the charge's, twice, and the refund's own.
        send(kp, "charge.refunded", charge, times=2)
        send(kp, "refund.created", refund, times=2)
        assert balance(kp) == 18 * USD
        assert remaining(kp, paid.lot_id) == 15 * USD  # the purchase's own lot, not the grant
        [adjustment] = c.payments.adjustments(org_id)
        assert (adjustment.payment_id, adjustment.kind, adjustment.status) == (
            paid.id, "refund", "partially_refunded",
        )  # fmt: skip
        assert (adjustment.amount, adjustment.total) == (-5 * USD, 5 * USD)
        assert moves(c, adjustment.id) == [
            ("lot", paid.lot_id, -5 * USD),
            ("refunds", None, 5 * USD),
        ]
        # Audited once, by the payment provider, and one email to the Owners.
        [entry] = entries(c, org_id, "billing.payment_refunded")
        assert (entry.actor, entry.target_id) == (PROVIDER, paid.id)
        assert entry.details["data"]["credit_change_micro_usd"] == -5 * USD
        [sent] = webhook_events(c)
        assert (sent["type"], sent["organization_id"]) == ("billing.payment_refunded", org_id)
        assert sent["data"] == {
            "payment_id": paid.id, "provider_payment_id": intent["id"],
            "status": "partially_refunded", "credit_change_micro_usd": -5 * USD,
            "amount_refunded_micro_usd": 5 * USD,
        }  # fmt: skip
        # (besides the purchase's receipt, which the same run of the outbox may send after it)
        sent = emails(c, inbox)
        assert sum(s.startswith("[keyplane] Receipt for Acme") for s, _ in sent) == 1
        [(subject, body)] = [(s, b) for s, b in sent if not s.startswith("[keyplane] Receipt")]
        assert subject == "[keyplane] $5.00 of credit taken back from Acme"
        assert "was refunded in part: $5.00 so far" in body
        assert "The credit balance is now $18.00." in body
        # The history: the refund's line, and the purchase's status.
        text = history_text(kp)
        assert "Refund $5.00 of the $20.00 credit purchase of" in text
        assert "−$5.00 Credit taken back" in text
        assert "Partially refunded" in text
        assert "Status Partially refunded: $5.00 refunded" in text_of(receipt_of(kp, paid.id))
        # Refunded in full later: the rest comes off too, once.
        fake.refund(intent)
        send(kp, "charge.refunded", fake.charge_of(intent), times=2)
        assert balance(kp) == 3 * USD and remaining(kp, paid.lot_id) == 0
        assert [a.amount for a in c.payments.adjustments(org_id)] == [-5 * USD, -15 * USD]
        assert "Refunded" in history_text(kp)


def test_partial_refunds_reported_out_of_order_take_what_stripe_refunded_in_all(
    tmp_path: Path, fake: FakeStripe, database_url: str
) -> None:
    """Two partial refunds, $3 then $2; Stripe delivers the second's events first and the first's
    later (and again): $5 comes off, never $3 or $8. Each event's copy of the charge is only a
    pointer: keyplane asks Stripe for the amount refunded when the event comes."""
    with keyplane(tmp_path, fake, database_url) as kp:
        c, org_id = kp.container, kp.org.id
        _, intent = buy(kp, fake, 10)
        first = fake.refund(intent, 300)
        older = event("charge.refunded", fake.charge_of(intent))  # amount_refunded 300
        second = fake.refund(intent, 200)
        newer = event("charge.refunded", fake.charge_of(intent))  # amount_refunded 500
        send_again(kp, newer)
        assert balance(kp) == 5 * USD
        send_again(kp, older, times=2)
        send(kp, "refund.created", first)
        send(kp, "refund.created", second)
        send_again(kp, newer)
        assert balance(kp) == 5 * USD
        [adjustment] = c.payments.adjustments(org_id)
        assert (adjustment.amount, adjustment.total) == (-5 * USD, 5 * USD)
        assert json.loads(newer)["id"] == adjustment.event_id
        assert len(entries(c, org_id, "billing.payment_refunded")) == 1


@pytest.mark.parametrize("first", ["refund", "dispute"])
def test_a_refund_or_dispute_reported_before_its_payment_takes_the_credit_back_once(
    tmp_path: Path, fake: FakeStripe, database_url: str, monkeypatch: pytest.MonkeyPatch,
    first: str,
) -> None:  # fmt: skip
    """Stripe does not keep its events in order. The process that charged died before it stored
    anything of the purchase, and the refund (or the dispute) is delivered before the
    ``payment_intent.succeeded`` keyplane would store the purchase from: its event stores the
    purchase from Stripe's own record of it, then takes the credit back. The payment's event,
    and every event again, change nothing more."""
    with keyplane(tmp_path, fake, database_url) as kp:
        c, org_id = kp.container, kp.org.id
        c.payments.add_method(org_id, fake.card())
        intent = crash_after_the_charge(monkeypatch, kp, fake, "order-1", 20 * USD)
        if first == "refund":
            refund = fake.refund(intent, 500)  # $5 of the $20
            reported = [
                send(kp, "charge.refunded", fake.charge_of(intent)),
                send(kp, "refund.created", refund),
            ]
            left, status = 15 * USD, "partially_refunded"
        else:
            reported = [send(kp, "charge.dispute.created", fake.dispute(intent))]
            left, status = 0, "needs_response"
        assert balance(kp) == left
        [paid] = c.payments.history(org_id)
        assert (paid.status, paid.amount, paid.provider_ref) == (
            "succeeded",
            20 * USD,
            intent["id"],
        )
        [adjustment] = c.payments.adjustments(org_id)
        assert (adjustment.payment_id, adjustment.status) == (paid.id, status)
        assert adjustment.amount == left - 20 * USD
        # The payment's own event comes, then every event again: nothing more.
        deliver(kp, intent, times=2)
        for payload in reported:
            send_again(kp, payload, times=2)
        assert balance(kp) == left
        assert c.payments.history(org_id) == [paid] and len(c.billing.balance(org_id).lots) == 1
        assert c.payments.adjustments(org_id) == [adjustment]
        [line] = billing_history(kp)
        assert (line["id"], line["provider_payment_id"]) == (paid.id, intent["id"])
        # The purchase is audited once (on Stripe's word), and so is what took its credit back.
        assert [e.actor for e in entries(c, org_id)] == [PROVIDER]
        assert len(entries(c, org_id, EVENTS[first])) == 1


def test_a_failed_refund_gives_the_credit_back(
    tmp_path: Path, fake: FakeStripe, database_url: str
) -> None:
    with keyplane(tmp_path, fake, database_url) as kp:
        c, org_id = kp.container, kp.org.id
        paid, intent = buy(kp, fake, 10)
        refund = fake.refund(intent, 400)
        send(kp, "charge.refunded", fake.charge_of(intent))
        assert balance(kp) == 6 * USD
        failed = fake.fail_refund(refund["id"])  # the card was closed: the money stays
        send(kp, "charge.refund.updated", failed, times=2)
        send(kp, "refund.failed", failed)
        assert balance(kp) == 10 * USD and remaining(kp, paid.lot_id) == 10 * USD
        taken, given = c.payments.adjustments(org_id)
        assert (taken.amount, given.amount, given.total) == (-4 * USD, 4 * USD, 0)
        assert given.status == "refund_failed"
        assert moves(c, given.id) == [("lot", paid.lot_id, 4 * USD), ("refunds", None, -4 * USD)]
        text = history_text(kp)
        assert "Refund failed $0.00 of the $10.00 credit purchase of" in text
        assert "+$4.00 Credit given back" in text
        # The charge's own event, late: Stripe says nothing is refunded now.
        send(kp, "charge.refunded", fake.charge_of(intent))
        assert balance(kp) == 10 * USD and len(c.payments.adjustments(org_id)) == 2


def test_refunding_spent_credit_takes_other_credit_then_goes_below_zero_until_credit_is_added(
    tmp_path: Path, fake: FakeStripe, database_url: str
) -> None:
    with keyplane(tmp_path, fake, database_url) as kp:
        c, org_id = kp.container, kp.org.id
        first, intent = buy(kp, fake, 10)
        # $8 of the $10 spent, then $3 granted.
        spend(kp, 8 * USD)
        grant = c.billing.grant(org_id, 3 * USD, note="goodwill")
        assert balance(kp) == 5 * USD
        fake.refund(intent)  # all $10 back to the card
        send(kp, "charge.refunded", fake.charge_of(intent))
        # $2 left on its own lot, $3 of the grant, and $5 below zero on its own lot.
        assert balance(kp) == -5 * USD
        assert remaining(kp, first.lot_id) == -5 * USD and remaining(kp, grant.id) == 0
        [refund] = c.payments.adjustments(org_id)
        assert moves(c, refund.id) == [
            ("lot", first.lot_id, -2 * USD), ("lot", grant.id, -3 * USD),
            ("lot", first.lot_id, -5 * USD), ("refunds", None, 10 * USD),
        ]  # fmt: skip
        owner = owner_browser(kp)
        try:
            overview = text_of(owner.get("/billing"))
        finally:
            owner.close()
        assert "Credit balance: −$5.00" in overview and "In debt" in overview
        # Credit added pays the debt first: $20 bought leaves $15.
        second, _ = buy(kp, fake, 20)
        assert balance(kp) == 15 * USD
        assert remaining(kp, first.lot_id) == 0 and remaining(kp, second.lot_id) == 15 * USD
        assert moves(c, f"repay:{second.lot_id}") == [
            ("lot", second.lot_id, -5 * USD), ("lot", first.lot_id, 5 * USD),
        ]  # fmt: skip


def spend(kp: Keyplane, amount: int) -> None:
    """``amount`` spent by a request, as the gateway stores its settlement (this process's gateway
    has not loaded the organization: no request came through it)."""
    c, now = kp.container, int(time.time())
    store = c.money_store
    money = store.load(kp.org.id, period_of(now), lambda tier: 10**12)
    hold = Hold("req_spent", kp.org.id, kp.project.id, amount, period_of(now), now, now + 60)
    assert money.place_hold(hold) is None
    settled = money.settle(hold.id, amount)
    assert settled is not None and not settled.uncovered
    record = UsageRecord(
        request_id=hold.id, created_at=now, org_id=kp.org.id, project_id=kp.project.id,
        key_id="key_x", owner_type="user", owner_id="u", model="gpt-4o",
        endpoint="chat.completions", input_tokens=10, cached_input_tokens=0, output_tokens=100,
        status=200, latency_ms=5, client_ip=None, cost_micro_usd=amount, stream=False,
        outcome=RequestOutcome.COMPLETED, period=period_of(now),
    )  # fmt: skip
    assert store.resolve([Outcome(record, settled)], now, [hold]) == 1


# -- disputes --------------------------------------------------------------------------------------
def test_a_lost_dispute_keeps_its_credit_taken_and_a_won_one_gives_it_back(
    tmp_path: Path, fake: FakeStripe, database_url: str
) -> None:
    with keyplane(tmp_path, fake, database_url) as kp:
        c, org_id = kp.container, kp.org.id
        lost, lost_intent = buy(kp, fake, 10)
        won, won_intent = buy(kp, fake, 20)
        assert balance(kp) == 30 * USD
        opened = fake.dispute(lost_intent)
        send(kp, "charge.dispute.created", opened, times=2)
        send(kp, "charge.dispute.funds_withdrawn", opened)
        assert balance(kp) == 20 * USD and remaining(kp, lost.lot_id) == 0
        assert "Disputed" in history_text(kp)
        send(kp, "charge.dispute.closed", fake.close_dispute(opened["id"], "lost"), times=2)
        send(kp, "charge.dispute.created", opened)  # late and stale: nothing
        assert balance(kp) == 20 * USD
        assert [(a.status, a.amount) for a in c.payments.adjustments(org_id, lost.id)] == [
            ("needs_response", -10 * USD), ("lost", 0),
        ]  # fmt: skip
        # The other: disputed, then won.
        disputed = fake.dispute(won_intent, 1500)  # $15 of the $20
        send(kp, "charge.dispute.created", disputed)
        assert balance(kp) == 5 * USD
        send(kp, "charge.dispute.closed", fake.close_dispute(disputed["id"], "won"), times=2)
        assert balance(kp) == 20 * USD and remaining(kp, won.lot_id) == 20 * USD
        opened_, closed = c.payments.adjustments(org_id, won.id)
        assert (opened_.amount, closed.status, closed.amount) == (-15 * USD, "won", 15 * USD)
        assert moves(c, closed.id) == [("lot", won.lot_id, 15 * USD), ("disputes", None, -15 * USD)]
        # Audited: each dispute opened and closed, by the payment provider.
        audited = entries(c, org_id, "billing.payment_disputed")
        assert sorted(e.details["data"]["status"] for e in audited) == [
            "lost", "needs_response", "needs_response", "won",
        ]  # fmt: skip
        assert {e.actor for e in audited} == {PROVIDER}
        text = history_text(kp)
        assert "Dispute lost" in text and "Dispute won" in text and "Dispute opened" in text
        assert "+$15.00 Credit given back" in text
        assert "Status Dispute lost" in text_of(receipt_of(kp, lost.id))


def test_a_dispute_closed_before_its_opening_is_delivered_moves_nothing(
    tmp_path: Path, fake: FakeStripe, database_url: str
) -> None:
    with keyplane(tmp_path, fake, database_url) as kp:
        c, org_id = kp.container, kp.org.id
        _, intent = buy(kp, fake, 10)
        opened = fake.dispute(intent)
        closed = fake.close_dispute(opened["id"], "won")
        send(kp, "charge.dispute.closed", closed)
        send(kp, "charge.dispute.created", opened)
        assert balance(kp) == 10 * USD
        [adjustment] = c.payments.adjustments(org_id)
        assert (adjustment.status, adjustment.amount) == ("won", 0)


# -- the low-balance alert and auto-recharge --------------------------------------------------------
@pytest.mark.parametrize("books", ["loaded", "not loaded"])
def test_credit_taken_back_is_checked_for_the_low_balance_alert_and_auto_recharge_at_once(
    tmp_path: Path, fake: FakeStripe, database_url: str, books: str
) -> None:
    """A refund lowers the balance as spend does, and is checked as spend is: the low-balance
    alert emails and auto-recharge buys back to its target at once, not when the organization
    next spends (refused, below zero, it would not). Whether or not the gateway has loaded the
    organization's books (no request came through it yet)."""
    with keyplane(tmp_path, fake, database_url, recharge_check_interval_s=0.05) as kp:
        c, org_id = kp.container, kp.org.id
        _, intent = buy(kp, fake, 20)
        c.billing.update_settings(
            org_id, low_balance_alert=10 * USD, auto_recharge=True,
            recharge_threshold=10 * USD, recharge_target=20 * USD,
        )  # fmt: skip
        if books == "loaded":
            kp.server.call(kp.gateway.pipeline.money.org(org_id))
        kp.flush()  # (checked: over both thresholds, nothing to do)
        assert alert_rows(c) == [] and len(c.payments.history(org_id)) == 1
        fake.refund(intent, 1500)
        send(kp, "charge.refunded", fake.charge_of(intent))
        wait_until(lambda: len(alert_rows(c)) == 1)
        # Bought back up to $20 with the saved card: $15 more.
        recharge = wait_until(
            lambda: [p for p in c.payments.history(org_id) if p.kind == "recharge"]
        )
        assert [(p.amount, p.status) for p in recharge] == [(15 * USD, "succeeded")]
        assert wait_until(lambda: balance(kp) == 20 * USD)
        kp.flush()
        assert len(alert_rows(c)) == 1 and len(c.payments.history(org_id)) == 2


# -- the Admin API -----------------------------------------------------------------------------------
def test_the_admin_apis_billing_history_says_what_was_refunded_and_disputed(
    tmp_path: Path, fake: FakeStripe
) -> None:
    """As the dashboard's billing history does: each paid charge's amount refunded and where its
    dispute stands, described in the OpenAPI document."""
    with keyplane(tmp_path, fake) as kp:
        refunded, refunded_intent = buy(kp, fake, 20)
        disputed, disputed_intent = buy(kp, fake, 10)
        untouched, _ = buy(kp, fake, 5)
        fake.refund(refunded_intent, 500)
        send(kp, "charge.refunded", fake.charge_of(refunded_intent))
        dispute = fake.dispute(disputed_intent)
        send(kp, "charge.dispute.created", dispute)

        def standing() -> dict[str, tuple[int, str | None]]:
            return {
                line["id"]: (line["amount_refunded_micro_usd"], line["dispute_status"])
                for line in billing_history(kp)
            }

        assert standing() == {
            refunded.id: (5 * USD, None),
            disputed.id: (0, "needs_response"),
            untouched.id: (0, None),
        }
        fake.refund(refunded_intent)
        send(kp, "charge.refunded", fake.charge_of(refunded_intent))
        send(kp, "charge.dispute.closed", fake.close_dispute(dispute["id"], "lost"))
        assert standing() == {
            refunded.id: (20 * USD, None),
            disputed.id: (0, "lost"),
            untouched.id: (0, None),
        }
        schema = kphttp.get(kp.server.url + "/openapi.json").json()
        purchase = schema["components"]["schemas"]["CreditPurchase"]
        for field in ("amount_refunded_micro_usd", "dispute_status"):
            assert field in purchase["required"]
            assert purchase["properties"][field]["description"]


# -- usage tiers ----------------------------------------------------------------------------------
def admin_get(kp: Keyplane, path: str) -> dict[str, Any]:
    key = admin_key(kp.container, kp.org.id, kp.owner.id)
    r = kphttp.get(
        f"{kp.server.url}/v1/organization/{path}", headers={"authorization": f"Bearer {key}"}
    )
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def limits_page(kp: Keyplane) -> str:
    return page_text(kp, "/limits")


def test_refunded_or_disputed_credit_does_not_count_toward_the_next_usage_tier(
    tmp_path: Path, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiers go by the amount paid (BRIEF C6): credit bought, then refunded or withheld by a
    dispute, was not paid, so buying $40 and refunding it never buys a tier. A tier reached
    stays (tiers never move down); the Limits page and the Admin API show the net amount."""
    clock = FrozenClock()
    with keyplane(tmp_path, fake, tier="free", clock=clock) as kp:
        c, org_id = kp.container, kp.org.id
        c.payments.add_method(org_id, fake.card())
        # A $10 charge whose process died, refunded before Stripe reported it paid: no tier.
        died = crash_after_the_charge(monkeypatch, kp, fake, "order-0", 10 * USD)
        fake.refund(died)
        send(kp, "charge.refunded", fake.charge_of(died))
        assert c.promoter.current(org_id).id == "free"
        _, intent = buy(kp, fake, 40)
        assert c.promoter.current(org_id).id == "tier-1"  # ($5 paid)
        fake.refund(intent)
        send(kp, "charge.refunded", fake.charge_of(intent))
        assert c.promoter.current(org_id).id == "tier-1"  # never down
        # Eight days on, $20 more: $70 bought, $20 kept. Tier 2 asks for $50 paid and 7 days.
        clock.advance(8 * 86_400)
        _, kept = buy(kp, fake, 20)
        c.promoter.check_all()
        tier = admin_get(kp, "usage_tier")
        assert tier["tier"] == "tier-1"
        assert (tier["next"]["tier"], tier["next"]["paid_needed_micro_usd"]) == ("tier-2", 50 * USD)
        assert (tier["next"]["paid_micro_usd"], tier["next"]["paid_reversed_micro_usd"]) == (
            20 * USD, 50 * USD,
        )  # fmt: skip
        assert tier["next"]["paid_met"] is False and tier["next"]["days_met"] is True
        assert "$20.00 so far (refunds and disputes of $50.00 not counted)" in limits_page(kp)
        # An open dispute withholds too; won, it counts again.
        dispute = fake.dispute(kept, 1000)
        send(kp, "charge.dispute.created", dispute)
        assert admin_get(kp, "usage_tier")["next"]["paid_micro_usd"] == 10 * USD
        send(kp, "charge.dispute.closed", fake.close_dispute(dispute["id"], "won"))
        assert admin_get(kp, "usage_tier")["next"]["paid_micro_usd"] == 20 * USD
        # $30 more: $50 paid, net. Up it goes.
        buy(kp, fake, 30)
        assert c.promoter.current(org_id).id == "tier-2"


# -- what is not keyplane's, and Stripe unreachable ------------------------------------------------
def test_events_of_charges_keyplane_did_not_sell_change_nothing_and_stripe_down_is_503(
    tmp_path: Path, fake: FakeStripe
) -> None:
    with keyplane(tmp_path, fake) as kp:
        c, org_id = kp.container, kp.org.id
        _, intent = buy(kp, fake, 10)
        other = {**fake.charge_of(intent), "id": "ch_other", "payment_intent": "pi_other"}
        send(kp, "charge.refunded", other)  # (a PaymentIntent Stripe does not know)
        # Another system's payment on the same Stripe account: no keyplane charge in its metadata.
        fake.intents["pi_theirs"] = {**intent, "id": "pi_theirs", "metadata": {}}
        send(kp, "charge.refunded", {**other, "payment_intent": "pi_theirs"})
        send(kp, "charge.dispute.created", {**fake.dispute(intent), "payment_intent": "pi_other"})
        send(kp, "charge.dispute.created", {**fake.dispute(intent), "currency": "eur"})
        send(kp, "customer.updated", {"id": "cus_1", "object": "customer"})
        assert balance(kp) == 10 * USD and c.payments.adjustments(org_id) == []
        # A bad signature on a refund is refused as any other event.
        payload = event("charge.refunded", fake.charge_of(intent))
        forged = post_event(kp.server.url, payload, signature(payload, "whsec_" + "x" * 32))
        assert forged.status_code == 400
        # Stripe cannot be asked for the charge's refunds: 503, and Stripe sends it again.
        fake.refund(intent, 100)
        payload = event("charge.refunded", fake.charge_of(intent))
        fake.stop()
        r = post_event(kp.server.url, payload, signature(payload))
        assert r.status_code == 503, r.text
        # …nor for the payment an event names that keyplane has not stored.
        payload = event("charge.refunded", other)
        r = post_event(kp.server.url, payload, signature(payload))
        assert r.status_code == 503, r.text
        assert balance(kp) == 10 * USD and c.payments.adjustments(org_id) == []


# -- the gateway -----------------------------------------------------------------------------------
def test_the_gateway_refuses_spend_beyond_the_refunded_balance_at_once(
    tmp_path: Path, fake: FakeStripe, simulator: ServerThread
) -> None:
    """The refund reaches the gateway's books through the money change feed, as a grant does:
    the webhook's own process applies it before it answers Stripe, the others at their poll."""
    with keyplane(tmp_path, fake, upstream=simulator.url + "/v1") as kp:
        c, org_id = kp.container, kp.org.id
        _, intent = buy(kp, fake, 10)
        kp.server.call(kp.gateway.pipeline.money.refresh())
        headers = {"authorization": f"Bearer {kp.key}"}
        body = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 16,
        }

        def chat() -> httpx.Response:
            return kphttp.post(kp.base_url + "/chat/completions", json=body, headers=headers)

        assert chat().status_code == 200
        kp.flush()
        spent = 10 * USD - balance(kp)
        assert 0 < spent < 10_000
        # Refunded in full: what the request spent is now owed. (The gateway would lower a
        # request's max_tokens to fit a little credit left; with none, it refuses.)
        fake.refund(intent)
        send(kp, "charge.refunded", fake.charge_of(intent))
        books = kp.gateway.pipeline.money.cached_org(org_id)
        assert books is not None
        assert books.balance(c.clock.now()) == balance(kp) == -spent
        refused = chat()
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "insufficient_quota"
        # The refund failed after all: the credit is back, and so are requests.
        [refund] = fake.refunds
        send(kp, "charge.refund.updated", fake.fail_refund(refund))
        assert chat().status_code == 200
        kp.flush()  # (the books are ahead of the database until the batch is stored)
        # A gateway that did not take the event (another process) gets it from the feed at its
        # next poll, which is this refresh: a dispute of the whole payment, applied elsewhere.
        dispute = fake.dispute(intent)
        report = ProviderReport("evt_elsewhere", "dispute", intent["id"], dispute["id"],
                                10 * USD, "needs_response")  # fmt: skip
        assert c.payments.reverse(report) is not None
        kp.server.call(kp.gateway.pipeline.money.refresh())
        assert books.balance(c.clock.now()) == balance(kp) < 0
        assert chat().status_code == 429
