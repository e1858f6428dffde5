"""Paying for credits (BRIEF C5) on each database: purchases charged once and credited exactly,
declines recorded and never credited, and auto-recharge, off by default, that buys back up to the
target when spend takes the balance under the threshold, and gives up after three declines."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

import kphttp
from conftest import initialized, start_keyplane
from keyplane import bootstrap
from keyplane.audit.models import Actor, ActorType, AuditEvent, AuditFilter
from keyplane.billing.declines import PaymentFailed
from keyplane.billing.payment_ports import CardDetails, Payment
from keyplane.billing.ports import Done
from keyplane.billing.recharge import RECHARGE_RETRY_S, SYSTEM
from keyplane.clock import FrozenClock
from keyplane.errors import IdempotencyKeyReused, InvalidRequest
from keyplane.storage import payment_repository
from keyplane.storage.notify_tables import email_outbox
from keyplane.storage.payment_tables import payments
from kptest import ServerThread, wait_until

VISA = CardDetails("4242 4242 4242 4242", 12, 2034, "123")
DECLINED = CardDetails("4000000000000002", 12, 2034, "123")
NO_FUNDS = CardDetails("4000000000009995", 12, 2034, "123")
USD = 1_000_000
# Who buys, as the dashboard names its signed-in Owner to the service (the audit log's actor).
BUYER = Actor(ActorType.SESSION, "session-of-the-owner", email="owner@example.com")


def test_a_purchase_is_charged_once_and_credited_exactly(tmp_path: Path, database_url: str) -> None:
    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1", credit=0, database_url=database_url)
    try:
        with pytest.raises(InvalidRequest, match="Add a payment method first"):
            c.payments.purchase(org.id, 10 * USD, actor=BUYER)
        card = c.payments.add_method(org.id, VISA)
        assert (card.brand, card.last4, card.is_default) == ("visa", "4242", True)
        first = c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        again = c.payments.purchase(
            org.id, 10 * USD, actor=BUYER, idempotency_key="order-1"
        )  # a retry
        assert again == first and first.status == "succeeded"
        assert c.billing.balance(org.id).available == 10 * USD
        with pytest.raises(IdempotencyKeyReused):
            c.payments.purchase(org.id, 20 * USD, actor=BUYER, idempotency_key="order-1")
        # A purchase is a non-refundable lot expiring a year later, counted toward usage tiers.
        ((lot, note),) = c.billing.balance(org.id).lots
        assert (lot.id, lot.kind, note) == (first.lot_id, "purchase", "Credit purchase")
        assert lot.expires_at == lot.created_at + 365 * 86400
        # Declined: in the history, never credited.
        c.payments.add_method(org.id, DECLINED)  # (now the default)
        with pytest.raises(PaymentFailed) as declined:
            c.payments.purchase(org.id, 10 * USD, actor=BUYER)
        assert declined.value.code == "card_declined"
        assert declined.value.message == "Your card was declined."
        paid = c.payments.purchase(org.id, 5 * USD, actor=BUYER, method_id=card.id)
        assert c.billing.balance(org.id).available == 15 * USD
        history = c.payments.history(org.id)
        assert [(p.status, p.amount, p.last4) for p in history] == [
            ("succeeded", 5 * USD, "4242"), ("failed", 10 * USD, "0002"),
            ("succeeded", 10 * USD, "4242"),
        ]  # fmt: skip
        assert history[0] == paid and history[1].failure == "card_declined"
        assert [p.provider_ref for p in history] == [None] * 3  # (the sandbox makes no ids)
        # One audit entry a charge, declined too, by whoever bought; none for the replay.
        assert [(e.target_id, e.actor) for e in entries(c, org.id)] == [
            (p.id, BUYER) for p in history
        ]
    finally:
        c.close()


def entries(
    c: bootstrap.Container, org_id: str, kind: str = "credit_purchase.created"
) -> list[AuditEvent]:
    """The organization's audit log entries of ``kind``, newest first."""
    return list(c.audit.query(org_id, AuditFilter(event_types=[kind]), limit=100).events)


class Crash(Exception):
    """The process dying at this point: nothing after it runs, the claim's release included."""


def test_a_purchase_cut_short_by_a_crash_is_retried_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the charge and its credit (stored with the payment's line), before the key's
    response was stored: the key does not stay "in progress" forever; a retry a minute later
    completes it with that line, charging, crediting and listing nothing more, and later retries
    replay it."""
    clock = FrozenClock()
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", clock=clock, credit=0, database_url=database_url
    )
    try:
        c.payments.add_method(org.id, VISA)

        def crash(*args: object, **kwargs: object) -> None:
            raise Crash

        monkeypatch.setattr(c.payments._store, "add_payment", crash)
        monkeypatch.setattr(c.money_store, "release_idempotency", crash)
        with pytest.raises(Crash):
            c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        monkeypatch.undo()  # the restarted process
        assert c.billing.balance(org.id).available == 10 * USD  # the credit was stored
        [line] = c.payments.history(org.id)  # with its line
        assert (line.status, line.amount) == ("succeeded", 10 * USD)
        clock.advance(30)
        with pytest.raises(IdempotencyKeyReused, match="still in progress"):
            c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        clock.advance(31)
        paid = c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        assert paid == line
        assert c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1") == paid
        assert c.billing.balance(org.id).available == 10 * USD  # credited once
        assert c.payments.history(org.id) == [paid]
        ((lot, _),) = c.billing.balance(org.id).lots
        assert paid.lot_id == lot.id
        # Audited with the line, before the crash; not again by the retry or the replay.
        [entry] = entries(c, org.id)
        assert (entry.target_id, entry.actor) == (paid.id, BUYER)
    finally:
        c.close()


def test_a_lot_has_one_line_and_a_second_is_taken_as_already_recorded(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database keeps one line of the history a lot: a second line for a lot listed already
    is refused by its unique index, and the store answers the line it has instead of failing,
    also when the other line was written between its look and its write (PostgreSQL's READ
    COMMITTED lets that happen); nothing of the second is stored, its audit entry included."""
    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1", credit=0, database_url=database_url)
    try:
        c.payments.add_method(org.id, VISA)
        paid = c.payments.purchase(org.id, 10 * USD, actor=BUYER)
        store = c.payments._store
        again = dataclasses.replace(paid, id="pay_again", created_at=paid.created_at + 1)
        entry = c.audit.entry(org.id, BUYER, "credit_purchase.created", target_id=again.id)
        with pytest.raises(IntegrityError), c.engine.begin() as conn:
            conn.execute(payments.insert().values(
                id=again.id, org_id=org.id, kind=again.kind, amount_micro=again.amount,
                status=again.status, method_id=again.method_id, brand=again.brand,
                last4=again.last4, lot_id=again.lot_id, created_at=again.created_at,
            ))  # fmt: skip
        assert store.add_payment(again, audit=entry) == paid
        looked = payment_repository._line_of_lot

        def not_yet(*args: Any) -> Payment | None:  # the first look misses the other's line
            monkeypatch.setattr(payment_repository, "_line_of_lot", looked)
            return None

        monkeypatch.setattr(payment_repository, "_line_of_lot", not_yet)
        assert store.add_payment(again, audit=entry) == paid
        assert c.payments.history(org.id) == [paid]
        assert [e.target_id for e in entries(c, org.id)] == [paid.id]
    finally:
        c.close()


def test_two_runs_listing_a_lot_stored_without_its_line_list_it_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lot an older keyplane stored without its line gets it from the purchase's retry; should
    another run of the charge list it at the same moment, the retry answers that run's line:
    one line, one audit entry, and no error."""
    clock = FrozenClock()
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", clock=clock, credit=0, database_url=database_url
    )
    try:
        c.payments.add_method(org.id, VISA)
        scoped = hashlib.sha256(f"{org.id}:purchase:order-1".encode()).hexdigest()[:40]
        lot = c.billing.record_purchase(org.id, 10 * USD, idempotency_key=f"pay:{scoped}")
        store = c.payments._store
        add_payment = store.add_payment
        theirs: list[Payment] = []

        def other_run_first(
            line: Payment, done: Done | None = None, audit: AuditEvent | None = None
        ) -> Payment | None:
            if not theirs:  # the other run lists the lot just before this one
                other = dataclasses.replace(line, id="pay_other_run")
                entry = c.audit.entry(org.id, SYSTEM, "credit_purchase.created", target_id=other.id)
                assert add_payment(other, None, entry) is None
                theirs.append(other)
            return add_payment(line, done, audit)

        monkeypatch.setattr(store, "add_payment", other_run_first)
        paid = c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1")
        monkeypatch.undo()
        assert paid == theirs[0] and paid.lot_id == lot.id
        assert c.payments.history(org.id) == [paid]
        assert c.payments.purchase(org.id, 10 * USD, actor=BUYER, idempotency_key="order-1") == paid
        assert [e.target_id for e in entries(c, org.id)] == [paid.id]
        assert c.billing.balance(org.id).available == 10 * USD
    finally:
        c.close()


def test_a_grant_whose_run_died_before_its_write_is_taken_over_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FrozenClock()
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", clock=clock, credit=0, database_url=database_url
    )
    try:

        def crash(*args: object, **kwargs: object) -> None:
            raise Crash

        with monkeypatch.context() as patched:
            patched.setattr(c.money_store, "add_lot", crash)
            patched.setattr(c.money_store, "release_idempotency", crash)
            with pytest.raises(Crash):
                c.billing.grant(org.id, USD, idempotency_key="g")
        clock.advance(59)
        with pytest.raises(IdempotencyKeyReused, match="still in progress"):
            c.billing.grant(org.id, USD, idempotency_key="g")
        with pytest.raises(IdempotencyKeyReused, match="different parameters"):
            c.billing.grant(org.id, 2 * USD, idempotency_key="g")
        clock.advance(1)
        lot = c.billing.grant(org.id, USD, idempotency_key="g")
        assert c.billing.grant(org.id, USD, idempotency_key="g").id == lot.id
        assert c.billing.balance(org.id).available == USD
    finally:
        c.close()


def test_a_stale_run_finishing_after_its_claim_was_taken_over_credits_nothing_more(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run slower than the stale limit (not dead) writes after the run that took its claim
    over: its write is rolled back and it returns the stored result."""
    clock = FrozenClock()
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", clock=clock, credit=0, database_url=database_url
    )
    try:
        add_lot = c.money_store.add_lot
        taken_over = []

        def slow(*args: object, **kwargs: object) -> None:
            monkeypatch.undo()
            clock.advance(61)
            taken_over.append(c.billing.grant(org.id, USD, idempotency_key="g"))
            add_lot(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(c.money_store, "add_lot", slow)
        slow_result = c.billing.grant(org.id, USD, idempotency_key="g")
        assert [slow_result.id] == [lot.id for lot in taken_over]
        assert c.billing.balance(org.id).available == USD
        # A failed run releases only its own claim, never one completed by another.
        assert c.billing.grant(org.id, USD, idempotency_key="g").id == slow_result.id
    finally:
        c.close()


@pytest.mark.parametrize(
    ("amount", "why"),
    [(4_990_000, "between \\$5.00 and \\$100.00"), (100_010_000, "between"),
     (10_005_000, "whole cents")],
)  # fmt: skip
def test_purchase_amounts_are_bounded_and_whole_cents(
    tmp_path: Path, amount: int, why: str
) -> None:
    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1", credit=0)
    try:
        c.payments.add_method(org.id, VISA)
        with pytest.raises(InvalidRequest, match=why):
            c.payments.purchase(org.id, amount, actor=BUYER)
        assert c.payments.history(org.id) == []
    finally:
        c.close()


def test_the_bounds_are_configurable(tmp_path: Path) -> None:
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", credit=0, credit_purchase_min="1", credit_purchase_max="2500"
    )
    try:
        c.payments.add_method(org.id, VISA)
        assert c.payments.purchase(org.id, 1 * USD, actor=BUYER).status == "succeeded"
        assert c.payments.purchase(org.id, 2500 * USD, actor=BUYER).status == "succeeded"
    finally:
        c.close()


def test_only_what_identifies_a_card_is_stored(tmp_path: Path, database_url: str) -> None:
    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1", credit=0, database_url=database_url)
    try:
        c.payments.add_method(org.id, CardDetails("378282246310005", 1, 2031, "1234"))
        with pytest.raises(InvalidRequest, match="test cards only"):  # a real card's number
            c.payments.add_method(org.id, CardDetails("4532 0151 1283 0366", 1, 2031, "123"))
        with c.engine.connect() as conn:
            dump = "\n".join(
                str(tuple(row))
                for table in ("payment_methods", "payments", "audit_events")
                for row in conn.exec_driver_sql(f"SELECT * FROM {table}")
            )
        assert "378282246310005" not in dump and "1234" not in dump
        assert "0005" in dump and "amex" in dump
    finally:
        c.close()


def outbox_subjects(c: bootstrap.Container) -> list[str]:
    with c.engine.connect() as conn:
        return [
            r.subject
            for r in conn.execute(select(email_outbox).order_by(email_outbox.c.created_at))
        ]


def test_declined_recharges_are_retried_hourly_then_auto_recharge_turns_off(
    tmp_path: Path, database_url: str
) -> None:
    clock = FrozenClock()
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", clock=clock, credit=2 * USD, database_url=database_url
    )
    try:
        c.billing.update_settings(
            org.id, auto_recharge=True, recharge_threshold=5 * USD, recharge_target=20 * USD
        )
        c.payments.add_method(org.id, NO_FUNDS)
        # (Turned on under the threshold: a job is pending already.)
        assert not c.money_store.enqueue_recharge("rj_1", org.id, 20 * USD, int(clock.now()))
        assert c.payments.run_recharges() == 0  # declined: due again in an hour
        assert c.payments.run_recharges() == 0  # (not before)
        assert len(outbox_subjects(c)) == 1
        for _ in range(2):
            clock.advance(RECHARGE_RETRY_S)
            c.payments.run_recharges()
        assert not c.billing.settings(org.id).auto_recharge
        assert c.billing.balance(org.id).available == 2 * USD
        subjects = outbox_subjects(c)
        assert len(subjects) == 3
        assert (
            subjects[0]
            == "[keyplane] Auto-recharge for Acme failed: your card has insufficient funds"
        )
        assert subjects[-1] == "[keyplane] Auto-recharge for Acme is turned off: the payment failed"
        assert [p.amount for p in c.payments.history(org.id)] == [18 * USD] * 3
        page = c.audit.query(org.id, AuditFilter(event_types=["billing.auto_recharge_disabled"]))
        assert len(page.events) == 1
        # Nothing more to do, and a new job can be enqueued once it is turned on again.
        clock.advance(RECHARGE_RETRY_S)
        assert c.payments.run_recharges() == 0 and len(c.payments.history(org.id)) == 3
        assert c.money_store.enqueue_recharge("rj_2", org.id, 20 * USD, int(clock.now()))
    finally:
        c.close()


def test_spend_under_the_threshold_recharges_up_to_the_target(
    tmp_path: Path, obedient_simulator: ServerThread
) -> None:
    """Through the gateway: a request takes the balance under $5; the gateway's own background
    work buys back up to $20 with the default card, exactly, and requests go on."""
    kp = start_keyplane(
        tmp_path, obedient_simulator.url + "/v1", credit=5_100_000, recharge_check_interval_s=0.05
    )
    try:
        c = kp.container
        c.payments.add_method(kp.org.id, VISA)
        c.billing.update_settings(
            kp.org.id, auto_recharge=True, recharge_threshold=5 * USD, recharge_target=20 * USD
        )
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 16_000}  # fmt: skip
        r = kphttp.post(
            kp.base_url + "/chat/completions", json=body,
            headers={"authorization": f"Bearer {kp.key}"},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        (record,) = kp.usage(expect=1)
        assert 5_100_000 - record.cost_micro_usd < 5 * USD
        recharged = AuditFilter(event_types=["billing.auto_recharged"])
        # (Its audit entry is written with its credit and its line, in one transaction.)
        wait_until(lambda: c.audit.query(kp.org.id, recharged).events, timeout=10)
        (payment,) = c.payments.history(kp.org.id)
        spent = record.cost_micro_usd
        assert payment.kind == "recharge" and payment.status == "succeeded"
        # Up to the target, rounded up to a cent.
        assert payment.amount == -(-(20 * USD - (5_100_000 - spent)) // 10_000) * 10_000
        assert c.billing.balance(kp.org.id).available == 5_100_000 - spent + payment.amount
        assert len(c.audit.query(kp.org.id, recharged).events) == 1
    finally:
        kp.server.stop()
        kp.container.close()


def test_turning_auto_recharge_on_under_the_threshold_recharges_without_waiting_for_spend(
    tmp_path: Path,
) -> None:
    """With no credit left every request is refused before it spends: no settlement would ever
    notice the balance, so turning auto-recharge on is what asks for the recharge."""
    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1", credit=0)
    try:
        c.payments.add_method(org.id, VISA)
        c.billing.update_settings(
            org.id, auto_recharge=True, recharge_threshold=5 * USD, recharge_target=20 * USD
        )
        assert c.payments.run_recharges() == 1
        assert c.billing.balance(org.id).available == 20 * USD
        # Changed again while over the threshold: nothing to buy.
        c.billing.update_settings(org.id, recharge_target=30 * USD)
        assert c.payments.run_recharges() == 0
    finally:
        c.close()


def test_a_recharge_capped_by_the_purchase_maximum_is_followed_by_the_next_a_minute_later(
    tmp_path: Path,
) -> None:
    """Without any request to notice the balance (they may all be refused meanwhile)."""
    clock = FrozenClock()
    c, _, org, _, _ = initialized(
        tmp_path, "http://sim/v1", clock=clock, credit=5 * USD, credit_purchase_max="20"
    )
    try:
        c.payments.add_method(org.id, VISA)
        c.billing.update_settings(
            org.id, auto_recharge=True, recharge_threshold=50 * USD, recharge_target=100 * USD
        )
        balances = []
        for _ in range(4):
            c.payments.run_recharges()
            assert c.payments.run_recharges() == 0  # the next one is not due yet
            balances.append(c.billing.balance(org.id).available)
            clock.advance(60)
        assert balances == [25 * USD, 45 * USD, 65 * USD, 65 * USD]
        assert [p.amount for p in c.payments.history(org.id)] == [20 * USD] * 3
    finally:
        c.close()
