"""The spend watcher: a threshold crossed is one email, judged on the gateway's own books."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
