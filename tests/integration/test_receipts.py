"""Receipt emails (BRIEF C5), through a real SMTP server: every paid charge — a purchase, an
auto-recharge, a charge Stripe's webhook credits — emails one receipt to the billing recipients,
and no retry with the same Idempotency-Key, re-run recharge job or webhook delivered again sends a
second; declines and credit grants send none."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_admin_org import admin_key
from test_payments import BUYER, DECLINED, USD, VISA, Crash
from test_stripe_payments import (
    crash_after_the_charge,
    deliver,
    stripe_settings,
)

import kphttp
from conftest import initialized, start_keyplane
from keyplane import bootstrap
from keyplane.billing.address import BillingAddress
from keyplane.billing.declines import PaymentFailed
from keyplane.billing.recharge import RECHARGE_LEASE_S
from keyplane.clock import FrozenClock
from keyplane.notify.dispatcher import EmailDispatcher
from keyplane.notify.smtp import SmtpMailer
from smtp_support import Inbox, Received, SmtpServer
from stripe_fake import FakeStripe

ADDRESS = BillingAddress(
    "DE", "Unter den Linden 1", "Berlin", postal_code="10117", name="Acme GmbH", tax_id="DE123"
)


def receipts(c: bootstrap.Container, inbox: Inbox) -> list[Received]:
    """The receipts the mail server received, once every email waiting in the outbox is sent."""
    dispatcher = EmailDispatcher(c.outbox, SmtpMailer.from_settings(c.settings), c.clock)
    asyncio.run(dispatcher.run_once())
    return [r for r in inbox.received if str(r.message["Subject"]).startswith("[keyplane] Receipt")]


def body(mail: Received) -> str:
    """The plain text part (the HTML beside it says the same: test_email_html.py)."""
    part = mail.message.get_body(("plain",))
    assert part is not None
    text: str = part.get_content()  # type: ignore[attr-defined]
    return text.replace("\r\n", "\n")


def test_each_paid_purchase_and_recharge_emails_one_receipt(
    tmp_path: Path, database_url: str, smtp: tuple[Inbox, SmtpServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    inbox, server = smtp
    clock = FrozenClock(1_796_000_000)  # 2026-11-30 (UTC)
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", clock=clock, credit=0, database_url=database_url,
        smtp_port=server.port, public_url="https://keyplane.example.com",
        credit_purchase_max="20",
    )  # fmt: skip
    try:
        c.billing.update_settings(org.id, billing_address=ADDRESS)
        card = c.payments.add_method(org.id, VISA)
        paid = c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        assert c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1") == paid
        [mail] = receipts(c, inbox)
        assert mail.rcpt_tos == ["owner@example.com"]  # no billing email: the Owners
        assert str(mail.message["Subject"]) == "[keyplane] Receipt for Acme: $10.00 of credits"
        text = body(mail)
        for fact in (
            "Acme bought $10.00 of prepaid credits.",
            f"Receipt number: {paid.id}\n",
            "Date: 2026-11-30 00:53:20 UTC\n",
            "Amount paid: $10.00 USD\n",
            "Paid with: Visa •••• 4242\n",
            "Tax ID: DE123\n",
            "Billed to:\n  Acme GmbH\n  Unter den Linden 1\n  Berlin 10117\n  Germany\n",
            "non-refundable; they expire on 2027-11-30 (UTC).",
            f"https://keyplane.example.com/billing/history/{paid.id}/receipt?org={org.id}\n",
        ):
            assert fact in text
        assert "4242 4242" not in text and "424242" not in text

        # Declined, and granted: no receipt.
        c.payments.add_method(org.id, DECLINED)
        with pytest.raises(PaymentFailed):
            c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-2")
        c.billing.grant(org.id, 50 * USD, note="goodwill")
        assert len(receipts(c, inbox)) == 1

        # An auto-recharge whose process died after its charge was credited and listed, before
        # its job was finished: the job taken over (still under the threshold: the charge is
        # capped at $20) runs the same charge again, which charges, credits and emails nothing.
        c.payments.set_default(org.id, card.id)
        c.billing.update_settings(
            org.id, auto_recharge=True, recharge_threshold=95 * USD, recharge_target=100 * USD
        )
        with monkeypatch.context() as dying:
            dying.setattr(c.payments._store, "finish_recharge", _crash)
            with pytest.raises(Crash):
                c.payments.run_recharges()
        clock.advance(RECHARGE_LEASE_S + 1)
        assert c.payments.run_recharges() == 1
        assert c.billing.balance(org.id).available == 80 * USD
        recharge = c.payments.history(org.id)[0]
        assert (recharge.kind, recharge.amount) == ("recharge", 20 * USD)
        assert len(c.payments.history(org.id)) == 3
        _, second = receipts(c, inbox)
        assert body(second).startswith(
            "Thank you for your payment. Auto-recharge bought $20.00 of prepaid credits for Acme."
        )
        assert f"Receipt number: {recharge.id}\n" in body(second)

        # A billing email set: receipts go there, not to the Owners.
        c.billing.update_settings(org.id, billing_email="books@example.com")
        c.payments.purchase(org.id, 5 * USD, actor=BUYER)
        assert [r.rcpt_tos for r in receipts(c, inbox)] == [
            ["owner@example.com"], ["owner@example.com"], ["books@example.com"],
        ]  # fmt: skip
    finally:
        c.close()


def _crash(*args: object, **kwargs: object) -> None:
    raise Crash


def test_a_purchase_whose_process_died_before_its_receipt_was_queued_sends_it_on_retry(
    tmp_path: Path, smtp: tuple[Inbox, SmtpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The charge, its credit and its line stored, then the process died before it queued the
    receipt: the retry with the same Idempotency-Key takes the purchase over and sends it, once."""
    inbox, server = smtp
    clock = FrozenClock()
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", clock=clock, credit=0, smtp_port=server.port
    )
    try:
        c.payments.add_method(org.id, VISA)
        with monkeypatch.context() as dying:
            dying.setattr(c.outbox, "enqueue", _crash)
            dying.setattr(c.money_store, "release_idempotency", _crash)
            with pytest.raises(Crash):
                c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        [line] = c.payments.history(org.id)
        assert receipts(c, inbox) == []
        clock.advance(61)  # (the retry may take the dead run's claim over)
        assert c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1") == line
        assert c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1") == line
        [mail] = receipts(c, inbox)
        assert f"Receipt number: {line.id}\n" in body(mail)
    finally:
        c.close()


def test_stripe_purchases_email_one_receipt_however_often_the_webhook_comes(
    tmp_path: Path, fake: FakeStripe, smtp: tuple[Inbox, SmtpServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A charge whose process died before storing anything: the webhook (delivered twice)
    credits it and emails its receipt, with the PaymentIntent; the client's retry sends nothing
    more. The Admin API's purchase (retried), then its webhook delivered twice: one receipt."""
    inbox, server = smtp
    settings: dict[str, Any] = stripe_settings(fake, smtp_port=server.port)
    clock = FrozenClock()
    # (The app's own dispatcher sends nothing after its first look: ``receipts`` sends.)
    kp = start_keyplane(
        tmp_path, "http://sim/v1", credit=0, clock=clock, email_dispatch_interval_s=3600,
        **settings,
    )  # fmt: skip
    c, org_id = kp.container, kp.org.id
    try:
        c.payments.add_method(org_id, fake.card("mastercard", "4444"))
        died = crash_after_the_charge(monkeypatch, kp, fake, "order-1", 20 * USD)
        deliver(kp, died, times=2)
        [mail] = receipts(c, inbox)
        [line] = c.payments.history(org_id)
        text = body(mail)
        assert "Acme bought $20.00 of prepaid credits." in text
        assert f"Receipt number: {line.id}\n" in text
        assert f"Payment reference: {died['id']}\n" in text
        assert "Paid with: Mastercard •••• 4444\n" in text
        clock.advance(61)
        assert c.payments.purchase(org_id, 20 * USD, actor=BUYER, idempotency_key="order-1") == line
        assert len(receipts(c, inbox)) == 1

        headers = {
            "authorization": f"Bearer {admin_key(c, org_id, kp.owner.id)}",
            "idempotency-key": "api-1",
        }
        for _ in range(2):
            r = kphttp.post(
                kp.server.url + "/v1/organization/credit_purchases",
                json={"amount_micro_usd": 10 * USD}, headers=headers,
            )  # fmt: skip
            assert r.status_code == 200, r.text
        [intent] = [i for i in fake.charges if i["id"] != died["id"]]
        deliver(kp, intent, times=2)
        _, mail = receipts(c, inbox)
        assert f"Receipt number: {r.json()['id']}\n" in body(mail)
        assert f"Payment reference: {intent['id']}\n" in body(mail)
    finally:
        kp.server.stop()
        c.close()
