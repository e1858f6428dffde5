"""Managing rate limits: a project's limits per model and a key's limits, which only ever lower the
organization's tier limits (BRIEF C6)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keyplane.clock import Clock
from keyplane.errors import InvalidRequest, NotFound
from keyplane.limits.ports import RateLimitStore
from keyplane.limits.ratelimit import (
    API_NAMES,
    LimitOutOfRange,
    ModelLimits,
    effective,
    raised_fields,
    storable,
)
from keyplane.limits.tiers import DEFAULT_ROW, Tier, base_model


@dataclass(frozen=True, slots=True)
class ProjectRateLimit:
    """One row of a project's rate-limit table, as OpenAI's ``project.rate_limit`` object."""

    model: str
    limits: ModelLimits  # effective: the tier's limits lowered by the project's override

    @property
    def id(self) -> str:
        return "rl-" + self.model


class RateLimitService:
    def __init__(
        self,
        store: RateLimitStore,
        clock: Clock,
        *,
        tier_of: Callable[[str], Tier],
        priced: Callable[[str], bool],
    ) -> None:
        self._store = store
        self._clock = clock
        self._tier_of = tier_of
        self._priced = priced  # whether keyplane can serve (bill) a model

    def project_limits(self, org_id: str, project_id: str) -> list[ProjectRateLimit]:
        """Every model the organization's tier lists, with the project's effective limits."""
        tier = self._tier_of(org_id)
        overrides = self._store.project_limits(project_id)
        models = sorted((set(tier.limits) | set(overrides)) - {DEFAULT_ROW})
        return [
            ProjectRateLimit(m, effective(tier.limits_for(m), overrides.get(m))) for m in models
        ]

    def set_project_limit(
        self, org_id: str, project_id: str, rate_limit_id: str, limits: ModelLimits
    ) -> ProjectRateLimit:
        """Lowers a project's limits for one model (``rl-<model>``). Raises InvalidRequest when a
        value is above the organization's limit: a project can never raise it; NotFound for a model
        neither the tier lists nor keyplane serves (a typo would otherwise limit nothing)."""
        model = rate_limit_id.removeprefix("rl-")
        if not rate_limit_id.startswith("rl-") or not model or base_model(model) != model:
            raise InvalidRequest(
                f"'{rate_limit_id}' is not a rate limit id (rl-<model>).", param="rate_limit_id"
            )
        try:
            storable(limits)
        except LimitOutOfRange as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        tier = self._tier_of(org_id)
        if model not in tier.limits and not self._priced(model):
            raise NotFound(
                f"No rate limit '{rate_limit_id}': keyplane serves no model '{model}'.",
                param="rate_limit_id",
            )
        org_limits = tier.limits_for(model)
        too_high = [API_NAMES[name] for name in raised_fields(org_limits, limits)]
        if too_high:
            raise InvalidRequest(
                f"A project's limits can only be lower than the organization's: {', '.join(too_high)} "
                f"is above the {model} limit of your usage tier.",
                param=too_high[0],
            )
        current = self._store.project_limits(project_id).get(model)
        merged = _merge(current, limits)
        self._store.save_project_limits(org_id, project_id, model, merged, int(self._clock.now()))
        return ProjectRateLimit(model, effective(org_limits, merged))

    def key_limits(self, key_id: str) -> ModelLimits | None:
        return self._store.key_limits(key_id)

    def set_key_limits(self, org_id: str, key_id: str, limits: ModelLimits | None) -> None:
        """Lowers one key's limits for every model (None removes them). A value above a model's
        organization limit has no effect for that model."""
        self._store.save_key_limits(org_id, key_id, limits, int(self._clock.now()))


def _merge(current: ModelLimits | None, change: ModelLimits) -> ModelLimits:
    """The change's values win; dimensions it leaves out keep their current override."""
    if current is None:
        return change
    fields = ("rpm", "tpm", "rpd", "images_per_min", "audio_mb_per_min")
    return ModelLimits(
        **{
            f: getattr(change, f) if getattr(change, f) is not None else getattr(current, f)
            for f in fields
        }
    )
