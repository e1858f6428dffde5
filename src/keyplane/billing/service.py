"""Money administration: grants, balance, budgets, alerts, billing settings (not the hot path).

Every change is written to the database and announced on the money change feed, which each
gateway applies within its poll interval (immediately in the process that made the change, when
it calls the guard's refresh).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from keyplane.billing.address import normalize_address
from keyplane.billing.ports import BillingSettings, Claim, ClaimLost, Done, MoneyStore, SpendAlert
from keyplane.billing.wallet import BillingMode, Lot
from keyplane.clock import Clock
from keyplane.emails import normalize_email
from keyplane.errors import Conflict, InvalidRequest, NotFound, StoreUnavailable
from keyplane.ids import new_id
from keyplane.limits.tiers import TierTable
from keyplane.text import refuse_control_characters
from keyplane.usage.pricing import format_usd

log = logging.getLogger("keyplane.billing")
T = TypeVar("T")
DAY = 86400
MAX_GRANT = 1_000_000 * 1_000_000  # $1M: a typo guard, not a business rule
WELCOME_NOTE = "Welcome credit"
# Stores a new lot (lot, note, source account, the claim its write completes) in one transaction
# with whatever else goes with it; ``MoneyStore.add_lot`` by default.
LotWriter = Callable[[Lot, str, str, Done | None], None]


@dataclass(frozen=True, slots=True)
class RechargeBounds:
    """Auto-recharge bounds (BRIEF C5): threshold $5-$95, target $10-$100, target > threshold."""

    threshold_min: int = 5_000_000
    threshold_max: int = 95_000_000
    target_min: int = 10_000_000
    target_max: int = 100_000_000


@dataclass(frozen=True, slots=True)
class LowBalanceBounds:
    """The low-balance alert's threshold: from $1 (under it the email comes when requests are
    about to be refused anyway) to $100,000 (a typo guard), whole cents as every amount typed."""

    minimum: int = 1_000_000
    maximum: int = 100_000 * 1_000_000


ARMING_PREFIX = "lba_"  # a low-balance alert's arming (billing/low_balance.py)


@dataclass(frozen=True, slots=True)
class CreditBalance:
    available: int
    held: int
    spent: int
    lots: Sequence[tuple[Lot, str]]


class BillingService:
    def __init__(self, store: MoneyStore, clock: Clock, *, tiers: TierTable) -> None:
        self._store = store
        self._clock = clock
        self.tiers = tiers
        self.default_usage_limit = tiers.lowest.monthly_usage_limit_micro_usd
        self.recharge_bounds = RechargeBounds()
        self.low_balance_bounds = LowBalanceBounds()

    def _now(self) -> int:
        return int(self._clock.now())

    def open_account(self, org_id: str, *, tier: str | None, welcome_credit: int) -> Lot | None:
        """Sets up a new organization's billing: its usage tier and an optional welcome grant
        (expiring after 90 days, as OpenAI's free trial credit did), which it returns."""
        self.update_settings(org_id, tier=tier)
        if not welcome_credit:
            return None
        return self.grant(org_id, welcome_credit, expires_in_s=90 * DAY, note=WELCOME_NOTE)

    # -- credits --------------------------------------------------------------------------------
    def grant(
        self, org_id: str, amount: int, *, expires_in_s: int | None = 365 * DAY, note: str = "",
        kind: str = "grant", idempotency_key: str | None = None,
        on_created: Callable[[Lot], None] | None = None, write: LotWriter | None = None,
    ) -> Lot:  # fmt: skip
        """Adds a credit lot (a grant, or a purchase paid through a provider); ``on_created`` runs
        once it is stored, not when an Idempotency-Key replays it (the audit log's entry).
        ``write`` stores the lot in place of ``MoneyStore.add_lot``, with what else belongs in
        its transaction (a purchase's line of the billing history)."""
        if not 0 < amount <= MAX_GRANT:
            what = "A credit purchase" if kind == "purchase" else "A grant"
            raise InvalidRequest(
                f"{what} is a positive amount up to ${format_usd(MAX_GRANT)}.", param="amount"
            )
        if expires_in_s is not None and expires_in_s <= 0:
            raise InvalidRequest("A grant's expiry must be in the future.", param="expires_in")
        if len(note) > 500:
            raise InvalidRequest("A note has at most 500 characters.", param="note")
        refuse_control_characters(note, "A note", "note")
        params = {"amount": amount, "expires_in_s": expires_in_s, "note": note, "kind": kind}

        def run(claim: Claim | None) -> Lot:
            now = self._now()
            lot = Lot(
                new_id("cg_"),
                kind,
                amount,
                amount,
                now,
                None if expires_in_s is None else now + expires_in_s,
            )
            source = "purchases" if kind == "purchase" else "grants"
            done = None if claim is None else claim.done(_lot_json(lot))
            if write is None:
                self._store.add_lot(org_id, lot, note, source, done)
            else:
                write(lot, note, source, done)
            self._rearm_low_balance(org_id)
            if on_created is not None:
                on_created(lot)
            return lot

        return self.idempotent(f"grant:{org_id}", idempotency_key, params, run, _lot_from_json)

    def record_purchase(
        self, org_id: str, amount: int, *, idempotency_key: str | None = None,
        write: LotWriter | None = None, on_created: Callable[[Lot], None] | None = None,
    ) -> Lot:  # fmt: skip
        """Adds the credit a successful payment bought: a non-refundable lot expiring one year
        later (stored by ``write`` when given, ``on_created`` run once, as ``grant`` says). The
        payment provider calls this when a payment settles; the caller then checks tier
        promotion."""
        return self.grant(
            org_id, amount, expires_in_s=365 * DAY, note="Credit purchase", kind="purchase",
            idempotency_key=idempotency_key, write=write, on_created=on_created,
        )  # fmt: skip

    def revoke_grant(self, org_id: str, lot_id: str) -> int:
        """Revokes a grant; returns the amount that was still unspent. Purchases are non-refundable."""
        lot = next((lot for lot, _ in self._store.lots(org_id) if lot.id == lot_id), None)
        if lot is None:
            raise NotFound(f"No credit grant '{lot_id}'.")
        if lot.kind != "grant":
            raise InvalidRequest("Purchased credits are non-refundable and cannot be revoked.")
        returned = self._store.revoke_lot(org_id, lot_id, self._now())
        if returned < 0:
            raise InvalidRequest(f"Credit grant '{lot_id}' is already revoked.")
        return returned

    def _rearm_low_balance(self, org_id: str) -> None:
        """Credit was added: the low-balance alert is armed again if the balance is back at or
        above its threshold, so that the next fall under it is emailed, even if it comes before
        the spend watcher next looks (the two arm alike: a compare-and-set on a disarmed alert).
        The lot is stored already: a database failing now only leaves the arming to the watcher."""
        try:
            threshold = self.settings(org_id).low_balance_alert
            if threshold is not None and self.credit_left(org_id) >= threshold:
                self._store.arm_low_balance(org_id, new_id(ARMING_PREFIX))
        except StoreUnavailable:
            log.warning("credit added; the low-balance alert is armed again at the next check")

    def credit_left(self, org_id: str) -> int:
        """What the live lots still hold as settled (requests in flight not subtracted): the
        balance the low-balance alert and auto-recharge compare with their thresholds."""
        now = self._clock.now()
        return sum(lot.remaining for lot, _ in self._store.lots(org_id) if lot.counts(now))

    def balance(self, org_id: str) -> CreditBalance:
        now = self._clock.now()
        lots = self._store.lots(org_id)
        held, spent = self._store.totals(org_id)
        live = sum(lot.remaining for lot, _ in lots if lot.counts(now))
        return CreditBalance(available=live - held, held=held, spent=spent, lots=lots)

    # -- settings -------------------------------------------------------------------------------
    def settings(self, org_id: str) -> BillingSettings:
        return self._store.settings(org_id) or BillingSettings(
            org_id, BillingMode.PREPAID, None, None
        )

    def usage_limit_for(self, tier_id: str | None) -> int:
        """The monthly usage limit of a tier (the lowest when None or no longer in the table)."""
        try:
            tier = self.tiers.get(tier_id) if tier_id else self.tiers.lowest
        except KeyError:
            tier = self.tiers.lowest
        return tier.monthly_usage_limit_micro_usd

    def effective_usage_limit(self, settings: BillingSettings) -> int:
        if settings.usage_limit is not None:
            return settings.usage_limit
        return self.usage_limit_for(settings.tier)

    def billing_emails(
        self, org_id: str, owner_emails: Callable[[str], Sequence[str]]
    ) -> list[str]:
        """Where the organization's billing emails go (spend alerts without recipients of their
        own, auto-recharge failures, tier changes): its billing email when one is set, as
        OpenAI's billing preferences do, else its Owners (``owner_emails``)."""
        email = self.settings(org_id).billing_email
        return [email] if email else list(owner_emails(org_id))

    def update_settings(self, org_id: str, **changes: Any) -> BillingSettings:
        """Changes mode, usage_limit, budget, the auto-recharge rule, the billing email ("" or
        None: none), the billing address (validated) or the low-balance alert (None: off); a new
        alert threshold is armed at once (below it already, the next settlement emails)."""
        current = self.settings(org_id)
        unknown = set(changes) - {f for f in BillingSettings.__slots__ if f != "org_id"}
        if unknown:
            raise InvalidRequest(f"Unknown billing settings: {sorted(unknown)}")
        if "billing_email" in changes:
            email = changes["billing_email"]
            changes["billing_email"] = (
                normalize_email(email, param="billing_email") if email else None
            )
        if changes.get("billing_address") is not None:
            changes["billing_address"] = normalize_address(changes["billing_address"])
        updated = dataclasses.replace(current, **changes)
        if not isinstance(updated.mode, BillingMode):
            updated = dataclasses.replace(updated, mode=BillingMode(updated.mode))
        for name in ("usage_limit", "budget"):
            value = getattr(updated, name)
            if value is not None and value < 0:
                raise InvalidRequest(f"{name} cannot be negative.", param=name)
        if updated.auto_recharge:
            self._check_recharge(updated.recharge_threshold, updated.recharge_target)
        if changes.get("low_balance_alert") is not None:
            self._check_low_balance(changes["low_balance_alert"])
        if updated.tier is not None and updated.tier not in {t.id for t in self.tiers.tiers}:
            raise InvalidRequest(f"There is no usage tier '{updated.tier}'.", param="tier")
        self._store.save_settings(updated, self._now())
        alert = updated.low_balance_alert
        if alert is not None and alert != current.low_balance_alert:
            self._store.arm_low_balance(org_id, new_id(ARMING_PREFIX), replace=True)
        threshold, target = updated.recharge_threshold, updated.recharge_target
        # Turned on (or changed) under the threshold already: no settlement may come to trigger
        # it (with no credit, every request is refused before it spends anything).
        if (
            updated.auto_recharge
            and threshold is not None
            and target is not None
            and self.balance(org_id).available < threshold
        ):
            self.request_recharge(org_id, target)
        return updated

    def request_recharge(self, org_id: str, target: int, *, due_at: int | None = None) -> bool:
        """Enqueues an auto-recharge up to ``target`` (due at ``due_at``, or at once), unless one
        is pending already; the gateways' background work pays it (billing/recharge.py)."""
        return self._store.enqueue_recharge(new_id("rj_"), org_id, target, self._now(), due_at)

    def _check_recharge(self, threshold: int | None, target: int | None) -> None:
        b = self.recharge_bounds
        if threshold is None or not b.threshold_min <= threshold <= b.threshold_max:
            raise InvalidRequest(
                f"Enter a recharge threshold between ${format_usd(b.threshold_min)} and "
                f"${format_usd(b.threshold_max)}.",
                param="recharge_threshold",
            )
        if target is None or not b.target_min <= target <= b.target_max:
            raise InvalidRequest(
                f"Enter a recharge target between ${format_usd(b.target_min)} and "
                f"${format_usd(b.target_max)}.",
                param="recharge_target",
            )
        if target <= threshold:
            raise InvalidRequest(
                "The recharge target must be above the threshold.", param="recharge_target"
            )

    def _check_low_balance(self, threshold: object) -> None:
        b = self.low_balance_bounds
        if (
            not isinstance(threshold, int)
            or not b.minimum <= threshold <= b.maximum
            or threshold % 10_000
        ):
            raise InvalidRequest(
                f"Enter a low-balance alert amount between ${format_usd(b.minimum)} and "
                f"${format_usd(b.maximum)}, in whole cents.",
                param="low_balance_alert",
            )

    def project_budget(self, project_id: str) -> int | None:
        return self._store.project_budget(project_id)

    def set_project_budget(self, org_id: str, project_id: str, amount: int | None) -> None:
        if amount is not None and amount < 0:
            raise InvalidRequest("A budget cannot be negative.", param="threshold_amount")
        self._store.save_project_budget(org_id, project_id, amount, self._now())

    # -- alerts ---------------------------------------------------------------------------------
    def alerts(self, org_id: str) -> Sequence[SpendAlert]:
        return self._store.alerts(org_id)

    def add_alert(
        self,
        org_id: str,
        threshold: int,
        *,
        project_id: str | None = None,
        recipients: Sequence[str] | None = None,
    ) -> SpendAlert:
        if threshold <= 0:
            raise InvalidRequest(
                "A notification threshold is a positive amount.", param="threshold_amount"
            )
        recipients = [normalize_email(a, param="recipients") for a in recipients or ()]
        same = (project_id, threshold, tuple(sorted(set(recipients))))
        for known in self._store.alerts(org_id):
            if (
                known.project_id,
                known.threshold,
                tuple(sorted(set(known.recipients or ()))),
            ) == same:
                raise Conflict(
                    f"A notification threshold of ${format_usd(threshold)} exists already: "
                    "each is emailed once a month.",
                    param="threshold_amount",
                )
        alert = SpendAlert(
            new_id("sa_"),
            org_id,
            project_id,
            threshold,
            tuple(recipients) if recipients else None,
            self._now(),
        )
        self._store.add_alert(alert)
        return alert

    def delete_alert(self, org_id: str, alert_id: str) -> None:
        if not self._store.delete_alert(org_id, alert_id):
            raise NotFound(f"No spend alert '{alert_id}'.")

    # -- idempotency ----------------------------------------------------------------------------
    def idempotent(
        self, scope: str, key: str | None, params: dict[str, Any],
        run: Callable[[Claim | None], T], load: Callable[[str], T],
    ) -> T:  # fmt: skip
        """Runs ``run`` once per (scope, key): a replay returns the first result; the same key with
        other parameters raises Conflict. ``run`` completes the claim it is given with its last
        write (``Claim.done``), so a crash between the claim and that write leaves a claim that
        a retry takes over after ``STALE_CLAIM_S``, never a key stuck in progress or a result
        stored twice."""
        if key is None:
            return run(None)
        if not 0 < len(key) <= 255:
            raise InvalidRequest("An Idempotency-Key has 1 to 255 characters.")
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        claim = Claim(scope, key, digest, self._now())
        stored = self._store.claim_idempotency(claim)
        if stored is not None:
            return load(stored)
        try:
            return run(claim)
        except ClaimLost:  # a run of a claim we took over finished first: its result stands
            stored = self._store.claim_idempotency(claim)
            if stored is None:  # cannot happen: the claim was completed, not released
                raise
            return load(stored)
        except BaseException:
            self._store.release_idempotency(claim)
            raise


def _lot_json(lot: Lot) -> str:
    return json.dumps([lot.id, lot.kind, lot.amount, lot.remaining, lot.created_at, lot.expires_at])


def _lot_from_json(text: str) -> Lot:
    lot_id, kind, amount, remaining, created_at, expires_at = json.loads(text)
    return Lot(lot_id, kind, amount, remaining, created_at, expires_at)
