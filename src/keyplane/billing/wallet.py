"""The money state of one organization, as a pure state machine.

Everything here is synchronous and does no I/O, so a gateway can check and reserve in one step
(no ``await`` between the two) and concurrent requests can never both spend the same micro-dollar.

- **Lots**: each purchase or grant is a lot with its own expiry; a lot stops counting at its
  expiry instant; lots are consumed earliest-expiry first. A refund or a dispute of a purchase
  takes credit back off lots (``adjusted``, billing/reversals.py); taking back credit already
  spent leaves its own lot below zero, a debt that counts in the balance, expired or not, until
  credit added later pays it.
- **Holds**: before forwarding, a request reserves its worst-case cost in every scope at once
  (credits, organization budget, project budget, usage limit) — all or none. Settling consumes the
  real cost (at most the hold, see below) and releases the rest; a hold resolves at most once.
- **Periods**: spend is counted per calendar month (UTC) of the hold's admission.

Settled spend never exceeds what was allowed because every hold fits the headroom of every scope at
admission and settling charges ``min(actual, hold)``. An upstream reporting more than keyplane's
bound (a misbehaving upstream, or a bound that is wrong) is therefore never charged beyond the hold;
the gateway logs such an overrun.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import final

from keyplane.billing.periods import period_of
from keyplane.usage.records import UsageRecord
from keyplane.values import Value


class Scope(enum.StrEnum):
    CREDITS = "credits"
    USAGE_LIMIT = "usage_limit"
    ORG_BUDGET = "org_budget"
    PROJECT_BUDGET = "project_budget"


class BillingMode(enum.StrEnum):
    PREPAID = "prepaid"  # a request needs credit
    POSTPAID = "postpaid"  # spend accrues; budgets and the usage limit still stop it


@dataclass(slots=True)
class Lot:
    id: str
    kind: str  # "purchase" | "grant"
    amount: int
    remaining: int
    created_at: int
    expires_at: int | None
    revoked: bool = False
    # Credit taken off the lot by refunds and disputes and moved by debt repayments, net (its
    # ledger entries; ``remaining`` already counts them): the gateway applies a change of it to
    # ``remaining``, which is its own (it consumes the lot between its writes to the database).
    adjusted: int = 0

    def live(self, at: float) -> bool:
        return not self.revoked and (self.expires_at is None or at < self.expires_at)

    def counts(self, at: float) -> bool:
        """Whether the lot counts in the balance: live, or in debt (below zero: credit a refund
        or a dispute took back after it was spent), which its expiry does not cancel."""
        return self.remaining < 0 or self.live(at)


# Members the per-request methods use, as module constants: on Python 3.11 ``Scope.CREDITS`` goes
# through the enum metaclass's ``__getattr__`` hook (~80 ns, against ~10 ns for a global).
_PREPAID = BillingMode.PREPAID
_CREDITS = Scope.CREDITS
_USAGE_LIMIT = Scope.USAGE_LIMIT
_ORG_BUDGET = Scope.ORG_BUDGET
_PROJECT_BUDGET = Scope.PROJECT_BUDGET


@final
class Hold(Value):
    FIELDS = (
        "id", "org_id", "project_id", "amount", "period", "created_at", "expires_at", "key_id",
        "model", "endpoint",
    )  # fmt: skip
    __slots__ = FIELDS

    def __init__(
        self,
        id: str,  # the request id
        org_id: str,
        project_id: str,
        amount: int,
        period: str,
        created_at: int,
        expires_at: int,
        # What the sweeper needs to write a usage record if the gateway dies mid-request.
        key_id: str = "",
        model: str = "",
        endpoint: str = "",
    ) -> None:
        self.id = id
        self.org_id = org_id
        self.project_id = project_id
        self.amount = amount
        self.period = period
        self.created_at = created_at
        self.expires_at = expires_at
        self.key_id = key_id
        self.model = model
        self.endpoint = endpoint


@final
class Settlement(Value):
    FIELDS = ("hold", "cost", "charged", "consumed", "uncovered")
    __slots__ = FIELDS

    def __init__(
        self,
        hold: Hold,
        cost: int,  # what the request really cost
        charged: int,  # min(cost, hold): what the scopes are charged
        consumed: tuple[tuple[str, int], ...],  # (lot id, amount) drawn, earliest expiry first
        uncovered: int,  # charged but not covered by lots (postpaid, or a lot revoked meanwhile)
    ) -> None:
        self.hold = hold
        self.cost = cost
        self.charged = charged
        self.consumed = consumed
        self.uncovered = uncovered


@final
class Outcome(Value):
    """How a request that held money ended: settled (with a Settlement) or voided."""

    FIELDS = ("record", "settlement")
    __slots__ = FIELDS

    def __init__(self, record: UsageRecord, settlement: Settlement | None) -> None:
        self.record = record
        self.settlement = settlement  # None: the hold was voided (nothing charged)


@final
class Rejection(Value):
    FIELDS = ("scope", "headroom")
    __slots__ = FIELDS

    def __init__(self, scope: Scope, headroom: int) -> None:
        self.scope = scope
        self.headroom = headroom


@dataclass(slots=True)
class OrgMoney:
    org_id: str
    mode: BillingMode = BillingMode.PREPAID
    usage_limit: int | None = None  # per month
    budget: int | None = None  # per month
    project_budgets: dict[str, int] = field(default_factory=dict)
    lots: list[Lot] = field(default_factory=list)
    holds: dict[str, Hold] = field(default_factory=dict)
    spent: dict[str, int] = field(default_factory=dict)  # period -> settled charge
    project_spent: dict[tuple[str, str], int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)  # period -> open holds
    project_held: dict[tuple[str, str], int] = field(default_factory=dict)
    held_total: int = 0
    auto_recharge: bool = False
    recharge_threshold: int | None = None
    recharge_target: int | None = None
    low_balance_alert: int | None = None  # email when the balance falls below; None: off
    tier: str | None = None  # usage tier id; sets the usage limit and the rate limits

    # -- reading ----------------------------------------------------------------------------
    def balance(self, at: float) -> int:
        """Credit left in live lots, less debts (not counting holds)."""
        return sum(lot.remaining for lot in self.lots if lot.counts(at))

    def available(self, at: float) -> int:
        return self.balance(at) - self.held_total

    def month_spend(self, period: str, project_id: str | None = None) -> int:
        """Settled plus held spend of the organization (or one project) in a month."""
        if project_id is None:
            return self.spent.get(period, 0) + self.held.get(period, 0)
        key = (project_id, period)
        return self.project_spent.get(key, 0) + self.project_held.get(key, 0)

    def headroom(self, project_id: str, at: float) -> tuple[int, Scope | None]:
        """Returns the most a new request may be held for, and the scope that sets it (None: no
        scope limits it; on a tie, the first of credits, usage limit, organization budget,
        project budget)."""
        period = period_of(at)
        # (One comparison per scope rather than min() over a list: this runs on every request.)
        room, scope = 2**62, None
        if self.mode is _PREPAID:
            room, scope = self.available(at), _CREDITS
        if self.usage_limit is not None:
            left = self.usage_limit - self.month_spend(period)
            if scope is None or left < room:
                room, scope = left, _USAGE_LIMIT
        if self.budget is not None:
            left = self.budget - self.month_spend(period)
            if scope is None or left < room:
                room, scope = left, _ORG_BUDGET
        project_budget = self.project_budgets.get(project_id)
        if project_budget is not None:
            left = project_budget - self.month_spend(period, project_id)
            if scope is None or left < room:
                room, scope = left, _PROJECT_BUDGET
        return (room if room > 0 else 0), scope

    # -- changing ---------------------------------------------------------------------------
    def place_hold(self, hold: Hold) -> Rejection | None:
        """Reserves ``hold.amount`` in every scope, or nothing and says which scope refused."""
        if hold.id in self.holds:
            raise ValueError(f"hold {hold.id} exists")
        room, scope = self.headroom(hold.project_id, hold.created_at)
        if hold.amount > room:
            assert scope is not None
            return Rejection(scope, room)
        self._add_held(hold, hold.amount)
        self.holds[hold.id] = hold
        return None

    def settle(self, hold_id: str, cost: int) -> Settlement | None:
        """Charges the real cost of a held request and releases the rest; None if the hold was
        already resolved (a hold resolves at most once)."""
        hold = self.holds.pop(hold_id, None)
        if hold is None:
            return None
        if cost < 0:
            raise ValueError("a cost is never negative")
        self._add_held(hold, -hold.amount)
        charged = cost if cost < hold.amount else hold.amount
        self.spent[hold.period] = self.spent.get(hold.period, 0) + charged
        key = (hold.project_id, hold.period)
        self.project_spent[key] = self.project_spent.get(key, 0) + charged
        consumed, uncovered = self._consume(charged, hold.created_at)
        return Settlement(hold, cost, charged, consumed, uncovered)

    def void(self, hold_id: str) -> Hold | None:
        """Releases a hold without charge; None if it was already resolved."""
        hold = self.holds.pop(hold_id, None)
        if hold is not None:
            self._add_held(hold, -hold.amount)
        return hold

    def restore_hold(self, hold: Hold) -> None:
        """Re-adds an open hold read back from storage (after a restart), without checks."""
        if hold.id not in self.holds:
            self.holds[hold.id] = hold
            self._add_held(hold, hold.amount)

    def add_lot(self, lot: Lot) -> None:
        self.lots.append(lot)
        self.lots.sort(key=lambda x: (x.expires_at is None, x.expires_at or 0, x.created_at, x.id))

    def revoke_lot(self, lot_id: str) -> int:
        """Revokes a lot; returns the amount it still held."""
        for lot in self.lots:
            if lot.id == lot_id and not lot.revoked:
                lot.revoked = True
                return lot.remaining
        return 0

    def readjust(self, lot_id: str, adjusted: int) -> None:
        """Brings a lot's ``adjusted`` to the stored figure, moving its remaining credit by the
        difference: idempotent, so the change feed may bring the same figure twice."""
        for lot in self.lots:
            if lot.id == lot_id:
                lot.remaining -= adjusted - lot.adjusted
                lot.adjusted = adjusted
                return

    def apply_consumption(self, consumed: tuple[tuple[str, int], ...]) -> None:
        by_id = {lot.id: lot for lot in self.lots}
        for lot_id, amount in consumed:
            if lot_id in by_id:
                by_id[lot_id].remaining -= amount

    def _consume(self, amount: int, admitted_at: int) -> tuple[tuple[tuple[str, int], ...], int]:
        # A request admitted while a lot was live may draw on it even if it expired since.
        out: list[tuple[str, int]] = []
        if self.mode is _PREPAID:
            for lot in self.lots:
                if amount == 0:
                    break
                if lot.remaining <= 0 or not lot.live(admitted_at):
                    continue
                take = lot.remaining if lot.remaining < amount else amount
                lot.remaining -= take
                amount -= take
                out.append((lot.id, take))
        return tuple(out), amount

    def _add_held(self, hold: Hold, delta: int) -> None:
        self.held_total += delta
        self.held[hold.period] = self.held.get(hold.period, 0) + delta
        key = (hold.project_id, hold.period)
        self.project_held[key] = self.project_held.get(key, 0) + delta
