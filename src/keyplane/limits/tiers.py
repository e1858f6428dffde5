"""Usage tiers: who qualifies for which, progress to the next, and each tier's default rate limits.

Pure rules over a data table (``tiers.toml``); the caller supplies what was paid, when the first
payment succeeded and the time, so promotion is testable to the second.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from keyplane.limits.ratelimit import ModelLimits, limits_from
from keyplane.usage.pricing import parse_dollars

DAY_S = 86_400
DEFAULT_ROW = "*"
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-\d{4}-\d{2}-\d{2}$")
_LIMIT_FIELDS = frozenset({"rpm", "tpm", "rpd", "images_per_min", "audio_mb_per_min"})
_TIER_FIELDS = frozenset({"id", "name", "paid", "days", "monthly_usage_limit", "limits"})


def base_model(model: str) -> str:
    """Returns the model a dated snapshot belongs to (gpt-4o-mini-2024-07-18 → gpt-4o-mini)."""
    m = _SNAPSHOT.match(model)
    return m.group("base") if m else model


@dataclass(frozen=True, slots=True)
class Tier:
    id: str  # stable, stored with the organization: "free", "tier-1", …
    name: str
    rank: int  # 0 for the lowest tier
    paid_micro_usd: int  # total successful payments needed
    days: int  # days since the first successful payment needed
    monthly_usage_limit_micro_usd: int
    limits: Mapping[str, ModelLimits] = field(compare=False, repr=False)

    def qualifies(self, paid_micro_usd: int, first_payment_at: float | None, now: float) -> bool:
        """Both criteria must hold; the days one is met exactly ``days x 86 400`` s after the
        first payment."""
        if paid_micro_usd < self.paid_micro_usd:
            return False
        if self.days == 0:
            return True
        return first_payment_at is not None and now - first_payment_at >= self.days * DAY_S

    def limits_for(self, model: str) -> ModelLimits:
        """Returns the organization's default limits for ``model``: its own row, its base model's
        row for a dated snapshot, else the ``"*"`` row."""
        row = self.limits.get(model)
        if row is None:
            row = self.limits.get(base_model(model))
        return row if row is not None else self.limits[DEFAULT_ROW]


@dataclass(frozen=True, slots=True)
class PaidCriterion:
    needed_micro_usd: int
    paid_micro_usd: int  # net of what refunds and disputes took back
    reversed_micro_usd: int = 0  # what they took back (the difference from what was bought)

    @property
    def met(self) -> bool:
        return self.paid_micro_usd >= self.needed_micro_usd

    @property
    def remaining_micro_usd(self) -> int:
        return max(0, self.needed_micro_usd - self.paid_micro_usd)


@dataclass(frozen=True, slots=True)
class DaysCriterion:
    needed: int
    passed: int  # whole days since the first successful payment (0 before it)
    met: bool
    met_at: float | None  # when it is (or was) met; None until a first payment (if needed > 0)


@dataclass(frozen=True, slots=True)
class TierProgress:
    """The current tier and how far each criterion of the next one is; ``next`` is None (and so
    are the criteria) at the top tier."""

    current: Tier
    next: Tier | None
    paid: PaidCriterion | None
    days: DaysCriterion | None

    @property
    def eligible(self) -> bool:
        """Whether every criterion of the next tier is met (the next promotion check moves up)."""
        return self.paid is not None and self.days is not None and self.paid.met and self.days.met


class TierTable:
    def __init__(self, tiers: Iterable[Tier]) -> None:
        self._tiers = tuple(sorted(tiers, key=lambda t: t.rank))
        if not self._tiers:
            raise ValueError("the tier table is empty")
        self._by_id = {t.id: t for t in self._tiers}

    @classmethod
    def load(cls, extra_files: Iterable[Path] = ()) -> TierTable:
        """The shipped table plus operator files, merged by tier id (see ``tiers.toml``)."""
        texts = [
            ("tiers.toml", resources.files("keyplane.limits").joinpath("tiers.toml").read_text())
        ]
        texts += [(str(p), p.read_text()) for p in extra_files]
        merged: dict[str, dict[str, Any]] = {}
        for where, text in texts:
            for i, entry in enumerate(tomllib.loads(text).get("tier", [])):
                _merge_entry(merged, entry, f"{where}[{i}]")
        return cls(_build(merged))

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return self._tiers

    @property
    def lowest(self) -> Tier:
        return self._tiers[0]

    def get(self, tier_id: str) -> Tier:
        """Returns the tier with this id; raises KeyError for an unknown one."""
        return self._by_id[tier_id]

    def next_after(self, tier: Tier) -> Tier | None:
        rank = self._by_id[tier.id].rank
        return self._tiers[rank + 1] if rank + 1 < len(self._tiers) else None

    def tier_for(
        self,
        paid_micro_usd: int,
        first_payment_at: float | None,
        now: float,
        current: Tier | None = None,
    ) -> Tier:
        """Returns the highest tier whose criteria are met, or ``current`` if that is higher:
        organizations are promoted automatically and never demoted."""
        qualified = self.lowest
        for tier in self._tiers:
            if tier.qualifies(paid_micro_usd, first_payment_at, now):
                qualified = tier
        if current is not None and self._by_id[current.id].rank > qualified.rank:
            return self._by_id[current.id]
        return qualified

    def progress(
        self, tier: Tier, paid_micro_usd: int, first_payment_at: float | None, now: float,
        *, reversed_micro_usd: int = 0,
    ) -> TierProgress:  # fmt: skip
        """Returns how far an organization in ``tier`` is from each criterion of the next one
        (``paid_micro_usd`` net of refunds and disputes, which took ``reversed_micro_usd``)."""
        current = self._by_id[tier.id]
        nxt = self.next_after(current)
        if nxt is None:
            return TierProgress(current, None, None, None)
        passed = 0 if first_payment_at is None else max(0, int((now - first_payment_at) // DAY_S))
        met_at = None if first_payment_at is None else first_payment_at + nxt.days * DAY_S
        days_met = nxt.days == 0 or (met_at is not None and now >= met_at)
        return TierProgress(
            current,
            nxt,
            PaidCriterion(nxt.paid_micro_usd, paid_micro_usd, reversed_micro_usd),
            DaysCriterion(nxt.days, passed, days_met, met_at),
        )


def _merge_entry(merged: dict[str, dict[str, Any]], entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a tier must be a table")
    tier_id = entry.get("id")
    if not isinstance(tier_id, str) or not tier_id:
        raise ValueError(f"{where}: every tier needs an id")
    unknown = set(entry) - _TIER_FIELDS
    if unknown:
        raise ValueError(f"{where}: {tier_id} has unknown fields {sorted(unknown)}")
    spot = merged.setdefault(tier_id, {"where": where, "limits": {}})
    rows = entry.get("limits", {})
    if not isinstance(rows, dict):
        raise ValueError(f"{where}: {tier_id}.limits must be a table")
    for model, row in rows.items():
        spot["limits"][model] = _parse_limits(row, f"{where}: {tier_id}.limits.{model}")
    if "name" in entry:
        if not isinstance(entry["name"], str) or not entry["name"]:
            raise ValueError(f"{where}: {tier_id}.name must be a non-empty string")
        spot["name"] = entry["name"]
    for name in ("paid", "monthly_usage_limit"):
        if name in entry:
            spot[name] = parse_dollars(entry[name], f"{where}: {tier_id}.{name}")
    if "days" in entry:
        days = entry["days"]
        if type(days) is not int or days < 0:
            raise ValueError(f"{where}: {tier_id}.days must be a whole number of days >= 0")
        spot["days"] = days


def _parse_limits(row: Any, where: str) -> ModelLimits:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a limits row must be a table like {{ rpm = 500 }}")
    unknown = set(row) - _LIMIT_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
    try:
        return limits_from(row)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _build(merged: Mapping[str, Mapping[str, Any]]) -> list[Tier]:
    drafts: list[tuple[int, int, str, Mapping[str, Any]]] = []
    for tier_id, spot in merged.items():
        missing = {"name", "paid", "days", "monthly_usage_limit"} - set(spot)
        if missing:
            raise ValueError(f"{spot['where']}: {tier_id} is missing {sorted(missing)}")
        if DEFAULT_ROW not in spot["limits"]:
            raise ValueError(f'{spot["where"]}: {tier_id} needs a "{DEFAULT_ROW}" limits row')
        drafts.append((spot["paid"], spot["days"], tier_id, spot))
    drafts.sort(key=lambda d: (d[0], d[1]))
    tiers: list[Tier] = []
    for rank, (paid, days, tier_id, spot) in enumerate(drafts):
        if tiers and (days < tiers[-1].days or (paid, days) == (tiers[-1].paid_micro_usd, days)):
            raise ValueError(
                f"{tier_id} must ask for more than {tiers[-1].id} on one criterion and no less "
                "on the other, so that meeting a tier means meeting every tier below it"
            )
        tiers.append(
            Tier(
                id=tier_id,
                name=spot["name"],
                rank=rank,
                paid_micro_usd=paid,
                days=days,
                monthly_usage_limit_micro_usd=spot["monthly_usage_limit"],
                limits=MappingProxyType(dict(spot["limits"])),
            )
        )
    return tiers
