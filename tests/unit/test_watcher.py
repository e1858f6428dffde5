"""The spend watcher: a threshold crossed is one email, judged on the gateway's own books."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pytest

from keyplane.billing.periods import period_of
from keyplane.billing.ports import SpendAlert
from keyplane.billing.wallet import OrgMoney
from keyplane.billing.watcher import SpendWatcher
from keyplane.clock import FrozenClock

NOW = 1_800_000_000.0
PERIOD = period_of(NOW)


class Store:
    def __init__(self, alerts: Sequence[SpendAlert], stored: tuple[int, dict[str, int]]) -> None:
        self._alerts = list(alerts)
        self.stored = stored
        self.sums = 0

    def alerts(self, org_id: str) -> list[SpendAlert]:
        return [a for a in self._alerts if a.org_id == org_id]

    def month_spend(self, org_id: str, period: str) -> tuple[int, dict[str, int]]:
        self.sums += 1  # a scan of the month's usage records
        return self.stored

    def enqueue_recharge(self, *args: Any) -> bool:
        raise AssertionError("no auto-recharge here")

    def settings(self, org_id: str) -> None:
        return None  # no billing settings stored: no low-balance alert


class Outbox:
    def __init__(self) -> None:
        self.subjects: list[str] = []
        self.bodies: list[str] = []

    def enqueue(
        self, dedupe_key: str, to: Sequence[str], subject: str, body: str, *a: Any, **k: Any
    ) -> bool:
        self.subjects.append(subject)
        self.bodies.append(body)
        return True


def alert(id_: str, threshold: int, project_id: str | None = None) -> SpendAlert:
    return SpendAlert(id_, "org-1", project_id, threshold, ("owner@example.com",), 0)


def watcher(store: Store, outbox: Outbox) -> SpendWatcher:
    return SpendWatcher(
        store, outbox, FrozenClock(NOW),  # type: ignore[arg-type]
        billing_emails=lambda _: ["owner@example.com"], org_name=lambda _: "Acme",
        public_url="http://keyplane.test",
    )  # fmt: skip


def test_thresholds_are_judged_on_the_gateways_books_without_summing_usage_records() -> None:
    store = Store([alert("a1", 1_000), alert("a2", 5_000), alert("p1", 600, "proj_1")], (0, {}))
    outbox = Outbox()
    w = watcher(store, outbox)
    money = OrgMoney("org-1")
    money.spent[PERIOD] = 900
    money.project_spent[("proj_1", PERIOD)] = 700
    money.project_spent[("proj_2", PERIOD)] = 200
    money.spent["2026-01"] = 10**9  # another month's spend counts for nothing

    assert w.check(["org-1"], {"org-1": money}) == 1  # the project's 600, not the org's 1,000
    money.spent[PERIOD] = 1_200
    assert w.check(["org-1"], {"org-1": money}) == 1  # now the org's 1,000
    assert w.check(["org-1"], {"org-1": money}) == 0  # each once
    assert store.sums == 0
    assert [s.split(" reached ")[1].split(" of ")[0] for s in outbox.subjects] == [
        "$0.0006", "$0.001",
    ]  # fmt: skip


def test_an_organization_not_loaded_here_is_judged_on_the_stored_records() -> None:
    store = Store([alert("a1", 1_000)], (1_500, {"proj_1": 1_500}))
    outbox = Outbox()
    assert watcher(store, outbox).check(["org-1"], {}) == 1
    assert store.sums == 1


def test_a_recharge_that_was_not_enough_or_failed_is_asked_for_again_a_minute_later() -> None:
    """The process does not ask again at every settlement batch while a recharge is pending, but
    neither does it forget the organization for good (a recharge capped below the target, a job
    given up and auto-recharge turned on again)."""
    from keyplane.billing.wallet import Lot
    from keyplane.billing.watcher import RECHARGE_RECHECK_S

    enqueued: list[int] = []

    class RechargeStore(Store):
        def enqueue_recharge(self, job_id: str, org_id: str, target: int, at: int) -> bool:
            enqueued.append(at)
            return True

    clock = FrozenClock(NOW)
    w = SpendWatcher(
        RechargeStore([], (0, {})), Outbox(), clock,  # type: ignore[arg-type]
        billing_emails=lambda _: ["owner@example.com"], org_name=lambda _: "Acme",
        public_url="http://keyplane.test",
    )  # fmt: skip
    money = OrgMoney("org-1", auto_recharge=True, recharge_threshold=5_000_000,
                     recharge_target=20_000_000)  # fmt: skip
    money.lots.append(Lot("cg_1", "grant", 10_000_000, 1_000_000, 0, None))  # $1 left
    w.check(["org-1"], {"org-1": money})
    w.check(["org-1"], {"org-1": money})
    assert enqueued == [int(NOW)]  # once, while it may be pending
    clock.advance(RECHARGE_RECHECK_S)
    w.check(["org-1"], {"org-1": money})  # still under the threshold a minute later
    assert enqueued == [int(NOW), int(NOW + RECHARGE_RECHECK_S)]


def test_the_email_says_the_spend_in_cents_rounded_up_and_the_threshold_as_set() -> None:
    """As the dashboard shows money: $5.016157 spent is "$5.02" (never less than was spent)."""
    store = Store([alert("a1", 5_000_000)], (0, {}))
    outbox = Outbox()
    money = OrgMoney("org-1")
    money.spent[PERIOD] = 5_016_157
    assert watcher(store, outbox).check(["org-1"], {"org-1": money}) == 1
    [body] = outbox.bodies
    assert "has reached $5.02, crossing your notification threshold of $5.00." in body
    assert "5.016157" not in body
    assert "Usage: http://keyplane.test/usage?org=org-1\n" in body  # (opens that organization)


# -- the low-balance alert ----------------------------------------------------------------------
class ArmedStore(Store):
    """A store holding the low-balance alert's arming, armed once its threshold was set."""

    def __init__(self) -> None:
        super().__init__([], (0, {}))
        self.arming: str | None = "lba_first"
        self.reads = 0
        self.disarm_fails = 0

    def low_balance_arming(self, org_id: str) -> str | None:
        self.reads += 1
        return self.arming

    def arm_low_balance(self, org_id: str, arming: str, *, replace: bool = False) -> bool:
        if self.arming is not None and not replace:
            return False
        self.arming = arming
        return True

    def disarm_low_balance(self, org_id: str, arming: str) -> bool:
        if self.disarm_fails:
            self.disarm_fails -= 1
            raise ConnectionError("the database went away")
        if self.arming != arming:
            return False
        self.arming = None
        return True


class KeyedOutbox(Outbox):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def enqueue(
        self, dedupe_key: str, to: Sequence[str], subject: str, body: str, *a: Any, **k: Any
    ) -> bool:
        if dedupe_key in self.keys:
            return False
        self.keys.append(dedupe_key)
        return super().enqueue(dedupe_key, to, subject, body)


class Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, org_id: str, actor: Any, event_type: str, **kwargs: Any) -> None:
        self.events.append((event_type, kwargs["details"]["data"]))

    def atomic(self) -> contextlib.nullcontext[None]:  # (no database: nothing to commit)
        return contextlib.nullcontext()


def low_balance_watcher(
    store: ArmedStore, outbox: Outbox, published: list[tuple[Any, ...]], audit: Audit
) -> SpendWatcher:
    return SpendWatcher(
        store, outbox, FrozenClock(NOW),  # type: ignore[arg-type]
        billing_emails=lambda _: ["owner@example.com"], org_name=lambda _: "Acme",
        public_url="http://keyplane.test", publish=lambda *event: published.append(event),
        audit=audit,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_balance_under_the_alert_is_one_email_event_and_audit_entry_holds_not_counted() -> None:
    """The settled balance is compared: $1.50 left with $1.00 held by a request in flight is not
    under a $1.00 alert (the hold is that request's worst case, mostly released when it ends)."""
    from keyplane.billing.wallet import Hold, Lot

    store, outbox, published, audit = ArmedStore(), KeyedOutbox(), [], Audit()
    w = low_balance_watcher(store, outbox, published, audit)
    money = OrgMoney("org-1", low_balance_alert=1_000_000)
    lot = Lot("cg_1", "grant", 5_000_000, 1_500_000, 0, None)
    money.add_lot(lot)
    money.restore_hold(Hold("req_1", "org-1", "proj_1", 1_000_000, PERIOD, int(NOW), int(NOW) + 60))
    assert money.available(NOW) == 500_000
    assert w.check(["org-1"], {"org-1": money}) == 0
    assert outbox.keys == [] and store.arming == "lba_first"

    lot.remaining = 999_999
    assert w.check(["org-1"], {"org-1": money}) == 1
    assert outbox.keys == ["low_balance:lba_first"] and store.arming is None
    assert outbox.subjects == ["[keyplane] The credit balance of Acme is below $1.00"]
    assert outbox.bodies[0].startswith("The credit balance of Acme is $0.99, below $1.00.")
    data = {"balance_micro_usd": 999_999, "threshold_micro_usd": 1_000_000}
    assert published == [("org-1", "billing.low_balance", data, "low_balance:lba_first")]
    assert audit.events == [("billing.low_balance", data)]

    reads = store.reads
    lot.remaining = 500_000  # further spend: nothing, and no database read
    assert w.check(["org-1"], {"org-1": money}) == 0
    assert store.reads == reads and len(outbox.keys) == 1 and len(audit.events) == 1

    lot.remaining = 1_000_000  # back at the threshold (a purchase): armed again, then a new email
    w.check(["org-1"], {"org-1": money})
    rearmed = store.arming
    assert rearmed is not None and rearmed != "lba_first"
    lot.remaining = 900_000
    assert w.check(["org-1"], {"org-1": money}) == 1
    assert outbox.keys == ["low_balance:lba_first", f"low_balance:{rearmed}"]
    assert len(audit.events) == 2


def test_a_process_dying_before_it_disarmed_asks_for_the_same_email_again() -> None:
    from keyplane.billing.wallet import Lot

    store, outbox, published, audit = ArmedStore(), KeyedOutbox(), [], Audit()
    store.disarm_fails = 1
    money = OrgMoney("org-1", low_balance_alert=1_000_000)
    money.add_lot(Lot("cg_1", "grant", 5_000_000, 10_000, 0, None))
    with pytest.raises(ConnectionError):
        low_balance_watcher(store, outbox, published, audit).check(["org-1"], {"org-1": money})
    # The next process (a restart) finds it still armed: the same dedupe key, one email.
    again = low_balance_watcher(store, outbox, published, audit)
    assert again.check(["org-1"], {"org-1": money}) == 0
    assert outbox.keys == ["low_balance:lba_first"] and store.arming is None
    assert [p[3] for p in published] == ["low_balance:lba_first"] * 2  # (the webhook dedupes too)
    assert len(audit.events) == 1
    # Restarted again, the balance still under: the alert was sent for this fall, nothing more.
    restarted = low_balance_watcher(store, outbox, published, audit)
    assert restarted.check(["org-1"], {"org-1": money}) == 0
    assert outbox.keys == ["low_balance:lba_first"] and len(published) == 2


def test_an_alert_that_is_off_is_never_looked_up() -> None:
    from keyplane.billing.wallet import Lot

    store, outbox = ArmedStore(), KeyedOutbox()
    money = OrgMoney("org-1")  # no alert
    money.add_lot(Lot("cg_1", "grant", 5_000_000, 0, 0, None))
    assert low_balance_watcher(store, outbox, [], Audit()).check(["org-1"], {"org-1": money}) == 0
    assert store.reads == 0 and outbox.keys == []
