"""What the money slice needs from storage."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Protocol

from keyplane.billing.address import BillingAddress
from keyplane.billing.wallet import BillingMode, Hold, Lot, OrgMoney, Outcome


@dataclass(frozen=True, slots=True)
class BillingSettings:
    org_id: str
    mode: BillingMode
    usage_limit: int | None  # None: the usage tier's monthly usage limit
    budget: int | None
    auto_recharge: bool = False
    recharge_threshold: int | None = None
    recharge_target: int | None = None
    tier: str | None = None  # None: the lowest tier
    billing_email: str | None = None  # None: billing emails go to the Owners
    billing_address: BillingAddress | None = None
    low_balance_alert: int | None = None  # email when the credit balance falls below; None: off


@dataclass(frozen=True, slots=True)
class PaidSoFar:
    """What an organization paid for credit, as usage tiers count it (BRIEF C6)."""

    bought: int  # every credit purchase (micro-dollars)
    # What refunds and disputes of them took back, net: refunds less the ones that failed,
    # disputes open or lost (a won one gave it back).
    reversed: int
    first_at: int | None  # when the first purchase was made (None: none)

    @property
    def net(self) -> int:
        """The amount paid that tiers read: money refunded or withheld by a dispute was not kept.
        (Promotion never moves down, so a reversal lowers only what the next tier needs.)"""
        return max(self.bought - self.reversed, 0)


@dataclass(frozen=True, slots=True)
class Claim:
    """An Idempotency-Key claimed for one run of a money-moving call. The run's last write stores
    the response with the key in the same transaction (``done``), so a key is complete exactly
    when its effect is stored: a crash leaves both or neither. ``claimed_at`` tells this run's
    claim from a later one that took a stale claim over."""

    scope: str
    key: str
    request_hash: str
    claimed_at: int

    def done(self, response: str) -> Done:
        return Done(self, response)


@dataclass(frozen=True, slots=True)
class Done:
    """A claim completed with ``response``: the write it goes with stores it."""

    claim: Claim
    response: str


class ClaimLost(Exception):
    """Raised by a write completing a claim that is no longer this run's: another run took the
    stale claim over and completed it. The write is rolled back; the stored response stands."""


# A claim this old with no response is a run that died (a crash between the claim and its write):
# another request with the same key and parameters takes it over. A run still going that late is
# safe too: of the two, only the first write to complete the claim is stored.
STALE_CLAIM_S = 60


@dataclass(frozen=True, slots=True)
class SpendAlert:
    id: str
    org_id: str
    project_id: str | None
    threshold: int
    recipients: tuple[str, ...] | None
    created_at: int


@dataclass(frozen=True, slots=True)
class MoneyEvent:
    seq: int
    org_id: str
    kind: str  # lot_added | lot_revoked | settings
    ref: str | None


class MoneyStore(Protocol):
    def load(
        self, org_id: str, period: str, usage_limit_for: Callable[[str | None], int]
    ) -> OrgMoney:
        """Returns the organization's money state: settings, live lots with what remains in them,
        open holds, and settled spend in ``period``. Raises StoreUnavailable."""
        ...

    def orgs_with_open_holds(self) -> Sequence[str]: ...

    def beat(self, gateway_id: str, started_at: int, at: int, timeout_s: int) -> int:
        """Notes that the gateway ``gateway_id`` (started at ``started_at``) is alive at ``at``,
        forgets gateways silent for more than ``timeout_s``, and returns when the oldest live
        gateway started: an open hold placed before that was placed by a dead one."""
        ...

    def leave(self, gateway_id: str) -> None:
        """Forgets a gateway that stopped cleanly."""
        ...

    def restore_holds(self, journaled: Sequence[Hold]) -> list[Hold]:
        """Stores holds read back from a dead gateway's journal as open holds, skipping those
        already stored; returns the ones stored now."""
        ...

    def resolve(
        self,
        outcomes: Sequence[Outcome],
        at: int,
        new_holds: Sequence[Hold] = (),
        never_stored: AbstractSet[str] = frozenset(),
    ) -> int:
        """In one transaction: stores ``new_holds`` as open holds (skipping stored ones), then for
        each outcome whose hold is still open (or not stored yet: settled before its hold reached
        the database) closes the hold and writes the ledger entries and the usage record. Outcomes
        whose hold was already resolved are skipped entirely (a hold resolves at most once).
        ``never_stored``: request ids the caller knows are in neither the holds nor the usage
        records (holds journaled since its last flush, never handed to a store): not looked up.
        Returns how many outcomes were applied."""
        ...

    def resolve_stepwise(
        self,
        outcomes: Sequence[Outcome],
        at: int,
        new_holds: Sequence[Hold] = (),
        never_stored: AbstractSet[str] = frozenset(),
    ) -> Generator[None, None, int] | None:
        """``resolve`` for an event loop to run a slice at a time between other work (each
        ``next()`` writes a few dozen rows; the generator returns the count), or None when this
        store cannot do that now (a remote database, or the write lock taken): then ``resolve``
        on a thread. Raises StoreUnavailable from ``next()``; closing it at any point before the end
        rolls back (and frees the write lock)."""
        ...

    def checkpoint(self) -> None:
        """Housekeeping after stepwise writes (SQLite: copies the WAL into the database)."""
        ...

    def data_version(self) -> tuple[int, int] | None:
        """A value that changes when anything but this store's stepwise batches commits to the
        database (so the gateway can skip reading its change feeds when it has not), or None
        when the store cannot tell (read them every time)."""
        ...

    def add_lot(
        self, org_id: str, lot: Lot, note: str, source: str, done: Done | None = None
    ) -> None:
        """Stores a lot and its funding entries (+amount on the lot, -amount on ``source``), and
        completes ``done``'s claim in the same transaction (ClaimLost: nothing stored)."""
        ...

    def revoke_lot(self, org_id: str, lot_id: str, at: int) -> int:
        """Revokes a grant lot: a new entry moves what remains back; returns that amount."""
        ...

    def lots(self, org_id: str) -> Sequence[tuple[Lot, str]]:
        """Returns every lot of the organization with its note, remaining computed from entries."""
        ...

    def totals(self, org_id: str) -> tuple[int, int]:
        """Returns (open holds, all-time settled spend) as stored."""
        ...

    def payments(self, org_id: str) -> PaidSoFar:
        """Returns what the organization's credit purchases paid, what their refunds and disputes
        took back, and when the first purchase was made."""
        ...

    def organizations_with_payments(self) -> Sequence[str]: ...

    def settings(self, org_id: str) -> BillingSettings | None: ...

    def save_settings(self, settings: BillingSettings, at: int) -> None: ...

    def project_budget(self, project_id: str) -> int | None: ...

    def save_project_budget(
        self, org_id: str, project_id: str, amount: int | None, at: int
    ) -> None: ...

    def alerts(self, org_id: str) -> Sequence[SpendAlert]: ...

    def add_alert(self, alert: SpendAlert) -> None: ...

    def delete_alert(self, org_id: str, alert_id: str) -> bool: ...

    def month_spend(self, org_id: str, period: str) -> tuple[int, dict[str, int]]:
        """Returns settled spend in the month for the organization and per project."""
        ...

    def events_since(self, seq: int | None) -> tuple[int, Sequence[MoneyEvent]]:
        """The latest event's sequence number and the events after ``seq`` (none for None:
        where the feed is now)."""
        ...

    def claim_idempotency(self, claim: Claim) -> str | None:
        """Claims (scope, key) for a new run and returns None, or returns the stored response
        of the run that completed it. The claim is a unique row, so of two concurrent first
        uses exactly one runs. A claim older than ``STALE_CLAIM_S`` with no response is taken
        over (by one request only).

        Raises IdempotencyKeyReused when the key was used with other parameters or its first
        request has not finished."""
        ...

    def release_idempotency(self, claim: Claim) -> None:
        """Forgets this run's claim when its request failed, so the client may retry with the
        same key (never a claim another run took over or completed)."""
        ...

    def low_balance_arming(self, org_id: str) -> str | None:
        """Returns the low-balance alert's arming: an id while a fall of the balance under the
        threshold is to be emailed (the email's dedupe key), None once it was (or when off)."""
        ...

    def arm_low_balance(self, org_id: str, arming: str, *, replace: bool = False) -> bool:
        """Arms the low-balance alert with ``arming``: with ``replace`` whatever it was (a new
        threshold), else only when disarmed (the balance is back at or above it). Returns whether
        it changed. Raises StoreUnavailable."""
        ...

    def disarm_low_balance(self, org_id: str, arming: str) -> bool:
        """Disarms the alert if it is still armed with ``arming``: of the callers that emailed for
        one arming, exactly one gets True. Raises StoreUnavailable."""
        ...

    def enqueue_recharge(
        self, job_id: str, org_id: str, target: int, at: int, due_at: int | None = None
    ) -> bool:
        """Enqueues a recharge (due at ``due_at``, or at once) unless one is already pending;
        returns whether it was enqueued."""
        ...
