"""The money state machine (billing/wallet.py) against a simple model, and its edge cases."""

from __future__ import annotations

import datetime as dt

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from keyplane.billing.bounds import CostBound
from keyplane.billing.periods import period_end, period_of, period_start
from keyplane.billing.wallet import BillingMode, Hold, Lot, OrgMoney, Scope

START = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp())
DAY = 86400


def hold(hid: str, amount: int, at: int, project: str = "p1", ttl: int = 600) -> Hold:
    return Hold(hid, "org", project, amount, period_of(at), at, at + ttl)


class WalletMachine(RuleBasedStateMachine):
    """Random grants, holds, partial settlements, voids, lot expiry, revocation and month rollover,
    checked against plain running totals."""

    @initialize(
        budget=st.none() | st.integers(0, 50_000), project_budget=st.none() | st.integers(0, 30_000)
    )
    def setup(self, budget: int | None, project_budget: int | None) -> None:
        self.now = START
        self.money = OrgMoney("org", budget=budget, usage_limit=80_000)
        if project_budget is not None:
            self.money.project_budgets["p1"] = project_budget
        self.granted = 0
        self.revoked = 0
        self.charged: dict[str, int] = {}  # period -> charged, the model of spend
        self.open: dict[str, Hold] = {}
        self.resolved: set[str] = set()
        self.next_id = 0

    def _id(self) -> str:
        self.next_id += 1
        return f"x{self.next_id}"

    @rule(amount=st.integers(1, 40_000), life=st.none() | st.integers(1, 60 * DAY))
    def grant(self, amount: int, life: int | None) -> None:
        lot_id = self._id()
        self.money.add_lot(
            Lot(
                lot_id, "grant", amount, amount, self.now, None if life is None else self.now + life
            )
        )
        self.granted += amount

    @rule(amount=st.integers(0, 20_000), project=st.sampled_from(["p1", "p2"]))
    def place(self, amount: int, project: str) -> None:
        h = hold(self._id(), amount, self.now, project)
        room, _ = self.money.headroom(project, self.now)
        refused = self.money.place_hold(h)
        assert (refused is None) == (amount <= room)
        if refused is None:
            self.open[h.id] = h

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(self.open)))
        h = self.open.pop(hid)
        cost = data.draw(st.integers(0, h.amount + 500))  # sometimes more than the hold
        s = self.money.settle(hid, cost)
        assert s is not None and s.charged == min(cost, h.amount)
        assert sum(a for _, a in s.consumed) + s.uncovered == s.charged
        self.charged[h.period] = self.charged.get(h.period, 0) + s.charged
        self.resolved.add(hid)
        assert self.money.settle(hid, cost) is None  # a hold resolves at most once
        assert self.money.void(hid) is None

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        hid = data.draw(st.sampled_from(sorted(self.open)))
        self.open.pop(hid)
        assert self.money.void(hid) is not None
        assert self.money.settle(hid, 1) is None

    @rule(seconds=st.integers(1, 20 * DAY))
    def time_passes(self, seconds: int) -> None:  # lots expire, months roll over
        self.now += seconds

    @precondition(lambda self: self.money.lots)
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        lot = data.draw(st.sampled_from(self.money.lots))
        self.revoked += self.money.revoke_lot(lot.id)

    @invariant()
    def money_is_conserved(self) -> None:
        consumed = sum(lot.amount - lot.remaining for lot in self.money.lots)
        uncovered = sum(self.charged.values()) - consumed
        assert all(lot.remaining >= 0 for lot in self.money.lots)
        assert uncovered >= 0  # charged = drawn from lots + whatever no lot covered
        assert sum(lot.amount for lot in self.money.lots) == self.granted

    @invariant()
    def holds_match_the_model(self) -> None:
        assert set(self.money.holds) == set(self.open)
        assert self.money.held_total == sum(h.amount for h in self.open.values())

    @invariant()
    def spend_never_exceeds_a_limit(self) -> None:
        for period, charged in self.charged.items():
            assert self.money.spent.get(period, 0) == charged
            assert self.money.month_spend(period) <= 80_000  # the usage limit
            if self.money.budget is not None:
                assert self.money.month_spend(period) <= self.money.budget
            if "p1" in self.money.project_budgets:
                assert self.money.month_spend(period, "p1") <= self.money.project_budgets["p1"]

    @invariant()
    def credit_never_goes_below_zero_from_admissions(self) -> None:
        # Holds only fit what was available when placed, so live credit covers them unless a lot
        # expired or was revoked while they were open (then the balance check refuses new ones).
        room, _ = self.money.headroom("p1", self.now)
        assert room >= 0


TestWallet = WalletMachine.TestCase
TestWallet.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_lots_are_consumed_earliest_expiry_first_and_expired_lots_stop_counting() -> None:
    money = OrgMoney("org")
    money.add_lot(Lot("late", "grant", 100, 100, START, START + 30 * DAY))
    money.add_lot(Lot("never", "grant", 100, 100, START, None))
    money.add_lot(Lot("soon", "grant", 100, 100, START, START + DAY))
    assert money.place_hold(hold("h1", 150, START)) is None
    s = money.settle("h1", 150)
    assert s is not None and s.consumed == (("soon", 100), ("late", 50))
    assert money.balance(START + DAY) == 150  # "soon" is empty anyway; the instant it expires
    assert money.balance(START + 30 * DAY) == 100  # "late" stops counting at its expiry instant


def test_a_request_admitted_before_a_lot_expired_may_still_draw_on_it() -> None:
    money = OrgMoney("org")
    money.add_lot(Lot("lot", "grant", 100, 100, START, START + 10))
    assert money.place_hold(hold("h", 80, START + 5)) is None
    s = money.settle("h", 70)
    assert s is not None and s.consumed == (("lot", 70),) and s.uncovered == 0


def test_rejection_names_the_tightest_scope() -> None:
    money = OrgMoney("org", budget=500, usage_limit=10_000)
    money.project_budgets["p1"] = 300
    money.add_lot(Lot("lot", "grant", 1_000, 1_000, START, None))
    refused = money.place_hold(hold("h", 301, START))
    assert refused is not None and refused.scope is Scope.PROJECT_BUDGET and refused.headroom == 300
    assert money.place_hold(hold("h2", 301, START, project="p2")) is None
    refused = money.place_hold(hold("h3", 300, START, project="p2"))
    assert refused is not None and refused.scope is Scope.ORG_BUDGET


def test_postpaid_needs_no_credit_but_stops_at_the_usage_limit() -> None:
    money = OrgMoney("org", mode=BillingMode.POSTPAID, usage_limit=1_000)
    assert money.place_hold(hold("h", 1_000, START)) is None
    s = money.settle("h", 600)
    assert s is not None and s.uncovered == 600
    refused = money.place_hold(hold("h2", 401, START))
    assert refused is not None and refused.scope is Scope.USAGE_LIMIT


def test_month_rollover_starts_at_zero_and_in_flight_holds_keep_their_month() -> None:
    end_of_nov = period_end("2026-11") - 1
    money = OrgMoney("org", mode=BillingMode.POSTPAID, budget=1_000)
    assert money.place_hold(hold("nov", 900, end_of_nov)) is None
    assert money.place_hold(hold("nov2", 101, end_of_nov)) is not None  # November is full
    dec = end_of_nov + 1
    assert period_of(dec) == "2026-12"
    assert money.place_hold(hold("dec", 1_000, dec)) is None  # December starts at $0
    money.settle("nov", 900)
    assert money.month_spend("2026-11") == 900 and money.month_spend("2026-12") == 1_000


def test_periods() -> None:
    assert period_of(START) == "2026-11"
    assert period_start("2026-12") == period_end("2026-11")
    assert period_of(period_end("2026-12")) == "2027-01"


def test_cost_bound_clamps_to_what_money_affords() -> None:
    bound = CostBound(fixed=80 * 2_500_000, per_output=10_000_000)  # gpt-4o: 80 input tokens
    assert bound.cost(100) == 1_200
    assert bound.max_output_for(1_200) == 100
    assert bound.cost(bound.max_output_for(1_199)) <= 1_199
    assert bound.max_output_for(199) == -1  # not even the input fits
    assert CostBound(10, 0).max_output_for(1) > 10**12
