"""The stripe payment provider (BRIEF C5) with Stripe's real SDK, against a stand-in for Stripe's
API on a loopback socket (tests/stripe_fake.py), on each database: cards saved from the
PaymentMethod id Stripe.js made (one Customer per organization), purchases charged once however
often they run, declines and 3-D Secure recorded and never credited, Stripe unreachable, auto-
recharge, the signed webhook that credits a charge whose process died and lists it in the billing
history, exactly once whoever comes first, and the Admin API's and the dashboard's forms."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_accounts_web import OWNER_PASSWORD, Browser, text_of
from test_admin_org import OrgEnv, admin_key, org_env
from test_payments import BUYER, entries

import kphttp
from conftest import Keyplane, initialized, start_keyplane
from keyplane import bootstrap
from keyplane.billing.declines import PaymentFailed
from keyplane.billing.payment_ports import CardDetails, Charged
from keyplane.billing.payments import PROVIDER
from keyplane.billing.ports import Claim
from keyplane.billing.recharge import SYSTEM
from keyplane.clock import FrozenClock
from keyplane.errors import InvalidRequest
from stripe_fake import PUBLISHABLE_KEY, SECRET_KEY, WEBHOOK_SECRET, FakeStripe, event, signature

USD = 1_000_000
VISA = CardDetails("4242424242424242", 12, 2034, "123")


def stripe_settings(fake: FakeStripe, **more: Any) -> dict[str, Any]:
    return {
        "payment_provider": "stripe",
        "stripe_secret_key": SECRET_KEY,
        "stripe_publishable_key": PUBLISHABLE_KEY,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "stripe_api_base": fake.url,
        **more,
    }


@contextlib.contextmanager
def stripe_keyplane(
    tmp_path: Path, fake: FakeStripe, database_url: str = "", clock: FrozenClock | None = None
) -> Iterator[tuple[bootstrap.Container, str]]:
    """A container paying through ``fake``, and its organization's id (no credit)."""
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", credit=0, database_url=database_url, clock=clock,
        **stripe_settings(fake),
    )  # fmt: skip
    try:
        yield c, org.id
    finally:
        c.close()


def charge_key(org_id: str, kind: str, key: str) -> str:
    """The idempotency key keyplane gives Stripe for a charge (``PaymentService._charge``)."""
    return hashlib.sha256(f"{org_id}:{kind}:{key}".encode()).hexdigest()[:40]


class Crash(Exception):
    """The process dying at this point: nothing after it runs."""


# -- saving cards ---------------------------------------------------------------------------------
def test_a_card_is_saved_from_its_payment_method_id_under_one_customer(
    tmp_path: Path, fake: FakeStripe, database_url: str
) -> None:
    with stripe_keyplane(tmp_path, fake, database_url) as (c, org_id):
        first = fake.card("visa", "4242", exp=(8, 2031))
        visa = c.payments.add_method(org_id, first)
        assert (visa.brand, visa.last4, visa.exp_month, visa.exp_year) == ("visa", "4242", 8, 2031)
        assert visa.provider == "stripe" and visa.is_default
        [customer] = fake.customers.values()
        assert customer["metadata"] == {"org_id": org_id}
        assert visa.provider_ref == f"{customer['id']}/{first}"
        # A second card: attached to the same Customer, not a new one.
        second = fake.card("mastercard", "4444")
        master = c.payments.add_method(org_id, second, make_default=False)
        assert (master.brand, master.last4, master.is_default) == ("mastercard", "4444", False)
        assert len(fake.customers) == 1
        assert fake.methods[second]["customer"] == customer["id"]
        # The form sent twice: the card saved then, no second row.
        assert c.payments.add_method(org_id, second, make_default=False) == master
        assert [m.last4 for m in c.payments.methods(org_id)] == ["4242", "4444"]
        # Card details never go to keyplane with Stripe; an id Stripe does not know is refused.
        with pytest.raises(InvalidRequest, match=r"Stripe\.js") as details:
            c.payments.add_method(org_id, VISA)
        assert details.value.param == "card"
        with pytest.raises(InvalidRequest, match="No such PaymentMethod: 'pm_unknown'"):
            c.payments.add_method(org_id, "pm_unknown")
        with pytest.raises(InvalidRequest, match="looks like pm_"):
            c.payments.add_method(org_id, "tok_visa")
        assert len(c.payments.methods(org_id)) == 2


# -- purchases --------------------------------------------------------------------------------------
def test_a_purchase_charges_once_and_credits_exactly_even_when_run_again_after_a_crash(
    tmp_path: Path, fake: FakeStripe, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FrozenClock()
    with stripe_keyplane(tmp_path, fake, database_url, clock) as (c, org_id):
        method = c.payments.add_method(org_id, fake.card())
        paid = c.payments.purchase(org_id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        assert paid.status == "succeeded" and c.billing.balance(org_id).available == 10 * USD
        [intent] = fake.charges
        customer, _, pm = method.provider_ref.partition("/")
        assert (intent["amount"], intent["currency"]) == (1000, "usd")
        assert (intent["customer"], intent["payment_method"]) == (customer, pm)
        key = charge_key(org_id, "purchase", "order-1")
        assert intent["metadata"] == {"org_id": org_id, "kind": "purchase", "charge_key": key}
        [sent] = fake.calls("POST", "/v1/payment_intents")
        assert sent.idempotency_key == key
        assert (sent.params["off_session"], sent.params["confirm"]) == ("true", "true")
        # A replay answers the first payment: Stripe is not even asked.
        assert c.payments.purchase(org_id, 10 * USD, actor=BUYER, idempotency_key="order-1") == paid
        assert len(fake.calls("POST", "/v1/payment_intents")) == 1

        # The process dies after Stripe charged, before anything was stored; a minute later
        # the purchase runs again with the same key: Stripe answers its first answer again.
        with monkeypatch.context() as dying:
            dying.setattr(c.billing, "record_purchase", _crash)
            dying.setattr(c.money_store, "release_idempotency", _crash)
            with pytest.raises(Crash):
                c.payments.purchase(org_id, 20 * USD, actor=BUYER, idempotency_key="order-2")
        assert len(fake.charges) == 2 and c.billing.balance(org_id).available == 10 * USD
        clock.advance(61)
        again = c.payments.purchase(org_id, 20 * USD, actor=BUYER, idempotency_key="order-2")
        assert again.status == "succeeded"
        retried = fake.calls("POST", "/v1/payment_intents")[-1]
        assert retried.replayed and len(fake.charges) == 2  # charged once
        assert c.billing.balance(org_id).available == 30 * USD  # credited once
        assert [p.amount for p in c.payments.history(org_id)] == [20 * USD, 10 * USD]
        # Each line names its PaymentIntent (the retry's is Stripe's first answer again), and
        # has one audit entry, by whoever bought.
        first, second = fake.charges
        assert (paid.provider_ref, again.provider_ref) == (first["id"], second["id"])
        assert [(e.target_id, e.actor) for e in entries(c, org_id)] == [
            (again.id, BUYER), (paid.id, BUYER),
        ]  # fmt: skip


def _crash(*args: object, **kwargs: object) -> None:
    raise Crash


def test_a_decline_is_in_the_history_with_its_decline_code_and_credits_nothing(
    tmp_path: Path, fake: FakeStripe, database_url: str
) -> None:
    with stripe_keyplane(tmp_path, fake, database_url) as (c, org_id):
        c.payments.add_method(org_id, fake.card(last4="9995", outcome="insufficient_funds"))
        with pytest.raises(PaymentFailed) as declined:
            c.payments.purchase(org_id, 10 * USD, actor=BUYER)
        assert declined.value.code == "insufficient_funds"  # the issuer's, not "card_declined"
        assert declined.value.message == "Your card has insufficient funds."
        c.payments.add_method(org_id, fake.card(last4="0069", outcome="expired_card"))
        with pytest.raises(PaymentFailed, match=r"Your card has expired\."):
            c.payments.purchase(org_id, 5 * USD, actor=BUYER)
        history = c.payments.history(org_id)
        assert [(p.status, p.failure, p.last4, p.lot_id) for p in history] == [
            ("failed", "expired_card", "0069", None),
            ("failed", "insufficient_funds", "9995", None),
        ]
        assert c.billing.balance(org_id).available == 0 and fake.charges == []
        # A declined payment is a PaymentIntent too: its id, for Stripe's Dashboard.
        intents = [i["id"] for i in fake.intents.values()]
        assert [p.provider_ref for p in history] == intents[::-1]


@pytest.mark.parametrize("outcome", ["requires_action", "authentication_required"])
def test_a_card_that_asks_for_3d_secure_is_a_failed_payment_that_says_so(
    tmp_path: Path, fake: FakeStripe, outcome: str
) -> None:
    """Off-session, Stripe either fails it at once (402 ``authentication_required``) or leaves the
    PaymentIntent waiting for the cardholder (``requires_action``): keyplane cancels that one,
    as nobody will complete it."""
    with stripe_keyplane(tmp_path, fake) as (c, org_id):
        c.payments.add_method(org_id, fake.card(last4="3155", outcome=outcome))
        with pytest.raises(PaymentFailed, match="3-D Secure") as failed:
            c.payments.purchase(org_id, 10 * USD, actor=BUYER)
        assert failed.value.code == "authentication_required"
        [line] = c.payments.history(org_id)
        assert (line.status, line.failure) == ("failed", "authentication_required")
        assert c.billing.balance(org_id).available == 0
        [intent] = fake.intents.values()
        assert intent["status"] == ("canceled" if outcome == "requires_action" else
                                    "requires_payment_method")  # fmt: skip


def test_auto_recharge_charges_through_stripe(tmp_path: Path, fake: FakeStripe) -> None:
    clock = FrozenClock()
    with stripe_keyplane(tmp_path, fake, clock=clock) as (c, org_id):
        c.payments.add_method(org_id, fake.card())
        c.billing.update_settings(
            org_id, auto_recharge=True, recharge_threshold=5 * USD, recharge_target=20 * USD
        )
        assert c.payments.run_recharges() == 1
        assert c.billing.balance(org_id).available == 20 * USD
        [intent] = fake.charges
        assert intent["amount"] == 2000 and intent["metadata"]["kind"] == "recharge"
        [sent] = fake.calls("POST", "/v1/payment_intents")
        assert sent.params["off_session"] == "true" and sent.idempotency_key
        [payment] = c.payments.history(org_id)
        assert (payment.kind, payment.status) == ("recharge", "succeeded")
        assert payment.provider_ref == intent["id"]
        [entry] = entries(c, org_id, "billing.auto_recharged")
        assert (entry.target_id, entry.actor) == (payment.id, SYSTEM)


def test_stripe_unreachable_is_a_failed_payment_with_nothing_credited(
    tmp_path: Path, fake: FakeStripe
) -> None:
    with stripe_keyplane(tmp_path, fake) as (c, org_id):
        c.payments.add_method(org_id, fake.card())
        fake.stop()
        with pytest.raises(PaymentFailed, match="could not be processed") as failed:
            c.payments.purchase(org_id, 10 * USD, actor=BUYER)
        assert failed.value.code == "processing_error"
        [line] = c.payments.history(org_id)
        assert (line.status, line.failure, line.lot_id) == ("failed", "processing_error", None)
        assert line.provider_ref is None  # (no PaymentIntent was made)
        assert c.billing.balance(org_id).available == 0
        with pytest.raises(InvalidRequest, match="Stripe could not be reached"):
            c.payments.add_method(org_id, fake.card("mastercard", "4444"))
        assert len(c.payments.methods(org_id)) == 1


def test_a_credit_being_recorded_by_the_webhook_is_waited_for_not_refused(
    tmp_path: Path, fake: FakeStripe
) -> None:
    """Stripe's webhook may record a charge's credit at the very moment the purchase that made
    the charge does: the purchase waits for it and credits nothing more."""
    with stripe_keyplane(tmp_path, fake) as (c, org_id):
        method = c.payments.add_method(org_id, fake.card())
        key = charge_key(org_id, "purchase", "order-1")
        # The webhook's run, holding the credit's key (in progress)…
        held = Claim(f"grant:{org_id}", f"pay:{key}", "", int(c.clock.now()))
        waits: list[float] = []

        def meanwhile(seconds: float) -> None:  # …finishes while the purchase waits.
            waits.append(seconds)
            c.money_store.release_idempotency(held)
            c.billing.record_purchase(org_id, 10 * USD, idempotency_key=f"pay:{key}")

        params = {"amount": 10 * USD, "expires_in_s": 365 * 86400, "note": "Credit purchase",
                  "kind": "purchase"}  # fmt: skip
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        held = Claim(held.scope, held.key, digest, held.claimed_at)
        assert c.money_store.claim_idempotency(held) is None
        c.payments._sleep = meanwhile  # type: ignore[method-assign]
        paid = c.payments.purchase(
            org_id, 10 * USD, actor=BUYER, method_id=method.id, idempotency_key="order-1"
        )
        assert paid.status == "succeeded" and len(waits) == 1
        [(lot, _)] = c.billing.balance(org_id).lots
        assert paid.lot_id == lot.id and c.billing.balance(org_id).available == 10 * USD


# -- the webhook ------------------------------------------------------------------------------------
def post_event(url: str, payload: bytes, sig: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if sig is not None:
        headers["stripe-signature"] = sig
    return kphttp.post(url + "/stripe/webhook", content=payload, headers=headers)


@contextlib.contextmanager
def served_stripe_keyplane(
    tmp_path: Path, fake: FakeStripe, database_url: str, clock: FrozenClock
) -> Iterator[Keyplane]:
    kp = start_keyplane(
        tmp_path, "http://sim/v1", credit=0, clock=clock, database_url=database_url,
        **stripe_settings(fake),
    )  # fmt: skip
    try:
        yield kp
    finally:
        kp.server.stop()
        kp.container.close()


def crash_after_the_charge(
    monkeypatch: pytest.MonkeyPatch, kp: Keyplane, fake: FakeStripe, key: str, amount: int
) -> dict[str, Any]:
    """Stripe charges the purchase; the process dies before keyplane stores anything of it (the
    credit, the history's line, the key's response). Returns the PaymentIntent."""
    c, org_id = kp.container, kp.org.id
    with monkeypatch.context() as dying:
        dying.setattr(c.billing, "record_purchase", _crash)
        dying.setattr(c.money_store, "release_idempotency", _crash)
        with pytest.raises(Crash):
            c.payments.purchase(org_id, amount, actor=BUYER, idempotency_key=key)
    charged = charge_key(org_id, "purchase", key)
    [intent] = [i for i in fake.charges if i["metadata"]["charge_key"] == charged]
    assert c.billing.balance(org_id).available == 0 and c.payments.history(org_id) == []
    return intent


def billing_history(kp: Keyplane) -> list[dict[str, Any]]:
    """The billing history as the Admin API lists it."""
    key = admin_key(kp.container, kp.org.id, kp.owner.id)
    r = kphttp.get(
        kp.server.url + "/v1/organization/billing_history",
        headers={"authorization": f"Bearer {key}"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    lines: list[dict[str, Any]] = r.json()["data"]
    return lines


def receipt_of(kp: Keyplane, payment_id: str) -> httpx.Response:
    """The receipt of a line of the history, as the Owner downloads it from the dashboard."""
    owner = owner_browser(kp)
    try:
        r = owner.get(f"/billing/history/{payment_id}/receipt")
        assert r.status_code == 200
        return r
    finally:
        owner.close()


def deliver(kp: Keyplane, intent: dict[str, Any], times: int = 2) -> None:
    """Stripe's ``payment_intent.succeeded``, delivered at least once: ``times`` here."""
    payload = event("payment_intent.succeeded", intent)
    for _ in range(times):
        r = post_event(kp.server.url, payload, signature(payload))
        assert r.status_code == 200 and r.json() == {"received": True}


@pytest.mark.parametrize("first", ["webhook", "retry"])
def test_a_charge_whose_process_died_is_credited_and_listed_once_whoever_comes_first(
    tmp_path: Path, fake: FakeStripe, database_url: str, monkeypatch: pytest.MonkeyPatch,
    first: str,
) -> None:  # fmt: skip
    """Stripe charged; the process died before it stored the credit or the history's line. The
    signed webhook and the client's retry with the same Idempotency-Key each store the credit
    and the line if the other has not: one lot, one line, one charge, whatever the order."""
    clock = FrozenClock()
    with served_stripe_keyplane(tmp_path, fake, database_url, clock) as kp:
        c, org_id = kp.container, kp.org.id
        method = c.payments.add_method(org_id, fake.card("mastercard", "4444"))
        intent = crash_after_the_charge(monkeypatch, kp, fake, "order-1", 10 * USD)
        clock.advance(61)  # (the retry may take the dead run's claim over)
        if first == "webhook":
            deliver(kp, intent)
            # The history has the purchase at once, as a charge with its receipt.
            [line] = billing_history(kp)
            assert (line["kind"], line["status"], line["amount_micro_usd"]) == (
                "purchase", "succeeded", 10 * USD,
            )  # fmt: skip
            assert (line["payment_method"], line["brand"], line["last4"]) == (
                method.id, "mastercard", "4444",
            )  # fmt: skip
            assert line["created_at"] == intent["created"]  # when Stripe charged it
            [(lot, note)] = c.billing.balance(org_id).lots
            assert (lot.kind, note, line["credit_grant_id"]) == (
                "purchase",
                "Credit purchase",
                lot.id,
            )
            owner = owner_browser(kp)
            try:
                page = owner.get("/billing/history")
                assert f"/billing/history/{line['id']}/receipt" in page.text
                assert "paid outside keyplane" not in text_of(page)
                receipt = owner.get(f"/billing/history/{line['id']}/receipt")
                assert receipt.status_code == 200 and "4444" in receipt.text
            finally:
                owner.close()
            paid = c.payments.purchase(org_id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        else:
            paid = c.payments.purchase(org_id, 10 * USD, actor=BUYER, idempotency_key="order-1")
            deliver(kp, intent)
        # The retry answers the purchase the history lists; nothing more charged or credited.
        assert paid.status == "succeeded" and len(fake.charges) == 1
        [line] = billing_history(kp)
        assert (line["id"], line["credit_grant_id"]) == (paid.id, paid.lot_id)
        assert c.payments.history(org_id) == [paid]
        [(lot, _)] = c.billing.balance(org_id).lots
        assert lot.id == paid.lot_id and c.billing.balance(org_id).available == 10 * USD
        # The line names the PaymentIntent, on the receipt too, whoever stored it.
        assert paid.provider_ref == line["provider_payment_id"] == intent["id"]
        assert f"Payment reference {intent['id']}" in text_of(receipt_of(kp, paid.id))
        # Later retries and deliveries change nothing.
        assert c.payments.purchase(org_id, 10 * USD, actor=BUYER, idempotency_key="order-1") == paid
        deliver(kp, intent, times=1)
        assert c.payments.history(org_id) == [paid] and len(c.billing.balance(org_id).lots) == 1
        # One audit entry: the webhook's (keyplane, on the payment provider's word) when it
        # stored the line, else the buyer's; none for the retry, the replay or the deliveries.
        [entry] = entries(c, org_id)
        assert (entry.target_id, entry.actor) == (
            paid.id,
            PROVIDER if first == "webhook" else BUYER,
        )
        assert entry.details["data"] == {
            "amount_micro_usd": 10 * USD, "status": "succeeded", "failure_code": None,
            "payment_method": method.id,
        }  # fmt: skip


def test_a_purchase_then_its_webhook_is_one_line_with_its_payment_intent_and_one_audit_entry(
    tmp_path: Path, fake: FakeStripe, database_url: str
) -> None:
    """The usual order: the Admin API's purchase stores the credit, the line and its audit entry;
    Stripe's event for it, delivered after (twice: at least once), finds them stored and adds
    nothing. The Admin API lists the line with its PaymentIntent's id."""
    clock = FrozenClock()
    with served_stripe_keyplane(tmp_path, fake, database_url, clock) as kp:
        c, org_id = kp.container, kp.org.id
        c.payments.add_method(org_id, fake.card())
        key = admin_key(c, org_id, kp.owner.id)
        headers = {"authorization": f"Bearer {key}", "idempotency-key": "api-1"}
        r = kphttp.post(
            kp.server.url + "/v1/organization/credit_purchases",
            json={"amount_micro_usd": 10 * USD}, headers=headers,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        bought = r.json()
        [intent] = fake.charges
        assert bought["provider_payment_id"] == intent["id"]
        deliver(kp, intent)
        assert billing_history(kp) == [bought]
        assert len(c.billing.balance(org_id).lots) == 1 and len(fake.charges) == 1
        r = kphttp.get(
            kp.server.url + "/v1/organization/audit_logs?event_types[]=credit_purchase.created",
            headers=headers,
        )  # fmt: skip
        [event] = r.json()["data"]
        assert event["credit_purchase.created"]["id"] == bought["id"]
        assert event["actor"]["type"] == "api_key"  # the caller's, not the webhook's


def test_the_webhook_arriving_while_the_purchase_is_still_running_lists_it_once(
    tmp_path: Path, fake: FakeStripe, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripe's event may arrive before the purchase that made the charge stores its credit (a
    slow process, not a dead one): the webhook stores the credit and the line, and the purchase,
    finishing late, answers that line and stores nothing more."""
    clock = FrozenClock()
    with served_stripe_keyplane(tmp_path, fake, database_url, clock) as kp:
        c, org_id = kp.container, kp.org.id
        c.payments.add_method(org_id, fake.card())
        provider = c.payments._provider
        charge = provider.charge

        def charge_then_webhook(*args: Any, **kwargs: Any) -> Charged:
            charged = charge(*args, **kwargs)
            [intent] = fake.charges
            deliver(kp, intent, times=1)
            # Listed and credited before the purchase goes on.
            assert len(c.payments.history(org_id)) == 1
            assert c.billing.balance(org_id).available == 10 * USD
            return charged

        monkeypatch.setattr(provider, "charge", charge_then_webhook)
        paid = c.payments.purchase(org_id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        monkeypatch.undo()
        assert paid.status == "succeeded" and c.payments.history(org_id) == [paid]
        assert [p["id"] for p in billing_history(kp)] == [paid.id]
        [(lot, _)] = c.billing.balance(org_id).lots
        assert paid.lot_id == lot.id and len(fake.charges) == 1
        assert c.payments.purchase(org_id, 10 * USD, actor=BUYER, idempotency_key="order-1") == paid
        # The webhook stored the line: its audit entry is the one, the purchase adds none.
        assert paid.provider_ref == fake.charges[0]["id"]
        [entry] = entries(c, org_id)
        assert (entry.target_id, entry.actor) == (paid.id, PROVIDER)


def test_the_webhook_lists_a_charge_of_a_card_removed_since(
    tmp_path: Path, fake: FakeStripe, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card was removed between the charge and the event: the money was still taken, so the
    credit and the line are stored, naming the card as it was saved."""
    clock = FrozenClock()
    with served_stripe_keyplane(tmp_path, fake, database_url, clock) as kp:
        c, org_id = kp.container, kp.org.id
        amex = c.payments.add_method(org_id, fake.card("amex", "0005"))
        intent = crash_after_the_charge(monkeypatch, kp, fake, "order-1", 10 * USD)
        c.payments.remove_method(org_id, amex.id)
        deliver(kp, intent)
        [line] = c.payments.history(org_id)
        assert (line.kind, line.amount, line.method_id, line.brand, line.last4) == (
            "purchase", 10 * USD, amex.id, "amex", "0005",
        )  # fmt: skip
        assert c.billing.balance(org_id).available == 10 * USD


def test_an_auto_recharge_whose_process_died_is_listed_by_the_webhook_once(
    tmp_path: Path, fake: FakeStripe, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auto-recharge charges through the same path: its line is stored with its credit by the
    webhook, and the job taken over after its lease lists and credits nothing more."""
    clock = FrozenClock()
    with served_stripe_keyplane(tmp_path, fake, database_url, clock) as kp:
        c, org_id = kp.container, kp.org.id
        c.payments.add_method(org_id, fake.card())
        c.billing.update_settings(
            org_id, auto_recharge=True, recharge_threshold=5 * USD, recharge_target=20 * USD
        )
        with monkeypatch.context() as dying:
            dying.setattr(c.billing, "record_purchase", _crash)
            with pytest.raises(Crash):
                c.payments.run_recharges()
        [intent] = fake.charges
        assert intent["metadata"]["kind"] == "recharge" and c.payments.history(org_id) == []
        deliver(kp, intent)
        [line] = billing_history(kp)
        assert (line["kind"], line["status"], line["amount_micro_usd"]) == (
            "recharge", "succeeded", 20 * USD,
        )  # fmt: skip
        assert c.billing.balance(org_id).available == 20 * USD
        assert line["provider_payment_id"] == intent["id"]
        clock.advance(601)  # the dead process's lease on the job runs out
        assert c.payments.run_recharges() == 1  # (topped up already: ended without a charge)
        assert [p["id"] for p in billing_history(kp)] == [line["id"]]
        assert len(c.billing.balance(org_id).lots) == 1 and len(fake.charges) == 1
        # Audited once, by the webhook that stored it.
        [entry] = entries(c, org_id, "billing.auto_recharged")
        assert (entry.target_id, entry.actor) == (line["id"], PROVIDER)


def test_the_webhook_refuses_bad_signatures_and_ignores_what_is_not_keyplanes(
    tmp_path: Path, fake: FakeStripe
) -> None:
    kp = start_keyplane(tmp_path, "http://sim/v1", credit=0, **stripe_settings(fake))
    try:
        c, org_id = kp.container, kp.org.id
        c.payments.add_method(org_id, fake.card())
        c.payments.purchase(org_id, 10 * USD, actor=BUYER)
        [intent] = fake.charges
        payload = event("payment_intent.succeeded", intent)
        refused = [
            (payload, None),  # no signature
            (payload, signature(payload, "whsec_" + "x" * 32)),  # another secret
            (payload, signature(payload, at=int(c.clock.now()) - 3600)),  # an old one, replayed
            (payload.replace(b'"amount": 1000', b'"amount": 100000'), signature(payload)),
            (b"\xff\xfe not even UTF-8", "t=1,v1=00"),
            (b"{}", "garbage"),
        ]
        for body, sig in refused:
            r = post_event(kp.server.url, body, sig)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["type"] == "invalid_request_error"
        # Signed, but not a keyplane payment to credit: 200, nothing changes.
        foreign = {**intent, "metadata": {}}
        other_org = {**intent, "metadata": {**intent["metadata"], "org_id": "org-elsewhere"}}
        for kind, obj in [
            ("payment_intent.payment_failed", intent),
            ("charge.refunded", {"id": "ch_1", "object": "charge"}),
            ("payment_intent.succeeded", foreign),
            ("payment_intent.succeeded", other_org),
        ]:
            body = event(kind, obj)
            assert post_event(kp.server.url, body, signature(body)).status_code == 200
        assert c.billing.balance(org_id).available == 10 * USD
        assert len(c.billing.balance(org_id).lots) == 1
    finally:
        kp.server.stop()
        kp.container.close()


def test_the_webhook_is_not_there_without_stripe(tmp_path: Path) -> None:
    kp = start_keyplane(tmp_path, "http://sim/v1")
    try:
        payload = b"{}"
        r = post_event(kp.server.url, payload, signature(payload))
        assert r.status_code == 404
    finally:
        kp.server.stop()
        kp.container.close()


# -- the Admin API -----------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def admin(tmp_path: Path, **settings: Any) -> AsyncIterator[OrgEnv]:
    async with org_env(tmp_path, **settings) as env:
        yield env


@pytest.mark.anyio
async def test_the_admin_api_saves_a_payment_method_id_and_refuses_card_details(
    tmp_path: Path, fake: FakeStripe
) -> None:
    async with admin(tmp_path, **stripe_settings(fake)) as env:
        pm = fake.card("amex", "0005", exp=(1, 2031))
        method = await env.ok("POST", "/payment_methods", {"payment_method": pm})
        assert (method["brand"], method["last4"], method["exp_year"]) == ("amex", "0005", 2031)
        assert method["is_default"] is True and "cus_" not in json.dumps(method)
        card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
        for body, param, says in [
            ({"card": card}, "card", "send the PaymentMethod id Stripe.js created"),
            ({}, "payment_method", "Missing `payment_method`"),
            ({"card": card, "payment_method": pm}, "payment_method", "not both"),
        ]:
            r = await env.call("POST", "/payment_methods", body)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == param and says in error["message"]
            assert "4242424242424242" not in r.text
        # A purchase through the Admin API, and Stripe unreachable: 402, never a 500.
        r = await env.client.post(
            "/v1/organization/credit_purchases", json={"amount_micro_usd": 10 * USD},
            headers={**env.headers(), "Idempotency-Key": "api-1"},
        )  # fmt: skip
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        fake.stop()
        r = await env.client.post(
            "/v1/organization/credit_purchases", json={"amount_micro_usd": 10 * USD},
            headers=env.headers(),
        )  # fmt: skip
        assert r.status_code == 402, r.text
        assert r.json()["error"]["code"] == "processing_error"
        balance = (await env.ok("GET", "/credit_balance"))["available_micro_usd"]
        assert balance == 15 * USD  # org_env's $5, and the one purchase


@pytest.mark.anyio
async def test_the_sandbox_refuses_a_payment_method_id(tmp_path: Path) -> None:
    async with admin(tmp_path) as env:
        r = await env.call("POST", "/payment_methods", {"payment_method": "pm_123"})
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["param"] == "payment_method" and "takes card details" in error["message"]
        assert (await env.ok("GET", "/payment_methods"))["data"] == []


# -- the dashboard ------------------------------------------------------------------------------------
@pytest.fixture
def stripe_kp(tmp_path: Path, fake: FakeStripe) -> Iterator[Keyplane]:
    kp = start_keyplane(tmp_path, "http://sim/v1", credit=0, **stripe_settings(fake))
    yield kp
    kp.server.stop()
    kp.container.close()


def owner_browser(kp: Keyplane) -> Browser:
    b = Browser(kphttp.Client(base_url=kp.server.url, follow_redirects=False))
    b.log_in_named("owner@example.com", OWNER_PASSWORD)
    return b


def test_the_dashboard_card_form_is_stripe_js_and_posts_a_payment_method_id(
    stripe_kp: Keyplane, fake: FakeStripe
) -> None:
    owner = owner_browser(stripe_kp)
    try:
        page = owner.get("/billing/payment-methods/new")
        assert page.status_code == 200
        assert '<script src="https://js.stripe.com/v3"></script>' in page.text
        assert f'data-stripe-key="{PUBLISHABLE_KEY}"' in page.text
        assert SECRET_KEY not in page.text and WEBHOOK_SECRET not in page.text
        assert 'name="number"' not in page.text and 'name="cvc"' not in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self' https://js.stripe.com" in csp
        assert "frame-src https://js.stripe.com" in csp and "frame-ancestors 'none'" in csp
        # Without JavaScript the page says why it cannot take a card, and how else to add one.
        noscript = re.search(r"<noscript>(.*?)</noscript>", page.text, re.S)
        assert noscript is not None and "needs JavaScript" in noscript.group(1)
        # Sent without a PaymentMethod id (no JavaScript): refused on the form, nothing saved.
        refused = owner.post("/billing/payment-methods", {"payment_method": ""})
        assert refused.status_code == 400 and "needs JavaScript" in text_of(refused)
        # What Stripe.js posts once it made the PaymentMethod.
        owner.get("/billing/payment-methods/new")
        added = owner.post("/billing/payment-methods", {"payment_method": fake.card()})
        assert added.status_code == 303, text_of(added)
        listing = owner.get("/billing/payment-methods")
        assert "Visa •••• 4242 Default" in text_of(listing)
        # A PaymentMethod Stripe does not know: its reason, on the form.
        owner.get("/billing/payment-methods/new")
        unknown = owner.post("/billing/payment-methods", {"payment_method": "pm_nope"})
        assert unknown.status_code == 400 and "No such PaymentMethod" in text_of(unknown)
        assert len(stripe_kp.container.payments.methods(stripe_kp.org.id)) == 1
    finally:
        owner.close()


def test_the_sandbox_card_form_loads_no_stripe(kp_sandbox: Keyplane) -> None:
    owner = owner_browser(kp_sandbox)
    try:
        page = owner.get("/billing/payment-methods/new")
        assert 'name="number"' in page.text and "js.stripe.com" not in page.text
        assert "js.stripe.com" not in page.headers["content-security-policy"]
    finally:
        owner.close()


@pytest.fixture
def kp_sandbox(tmp_path: Path) -> Iterator[Keyplane]:
    kp = start_keyplane(tmp_path, "http://sim/v1", credit=0)
    yield kp
    kp.server.stop()
    kp.container.close()
