"""Rate limits on the request path: one atomic decision across organization, project and key.

Failure policy (STYLE 7): rate limits may fail open. If the overrides cannot be read (database
down), the organization's tier limits still apply and the failure is counted; the in-process
limiter itself cannot fail.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from keyplane import reads
from keyplane.clock import Clock
from keyplane.errors import StoreUnavailable
from keyplane.keys.models import ApiKey
from keyplane.limits.ports import RateLimitStore
from keyplane.limits.ratelimit import (
    Cost,
    Decision,
    LimitScope,
    ModelLimits,
    RateLimiter,
    Ticket,
    effective,
    scope_id,
)
from keyplane.limits.tiers import TierTable, base_model

log = logging.getLogger("keyplane.ratelimits")
_MAX_CACHED = 100_000


class RateGuard:
    def __init__(
        self, limiter: RateLimiter, tiers: TierTable, store: RateLimitStore, clock: Clock
    ) -> None:
        self._limiter = limiter
        self._tiers = tiers
        self._store = store
        self._clock = clock
        self._projects: dict[str, Mapping[str, ModelLimits]] = {}
        self._keys: dict[str, ModelLimits | None] = {}
        # Bumped by every ``forget``: a read begun before a change is neither cached nor shared
        # with callers after it (the change would be lost until the next one).
        self._epoch = 0
        self._project_reads: reads.SharedReads[tuple[str, int], Mapping[str, ModelLimits]] = (
            reads.SharedReads()
        )
        self._key_reads: reads.SharedReads[tuple[str, int], ModelLimits | None] = (
            reads.SharedReads()
        )
        # (key, tier, model) → scopes: built once, dropped on any override change.
        self._scopes: dict[tuple[str, str | None, str], list[LimitScope]] = {}
        self.failed_open = 0

    def cached_scopes(
        self, key: ApiKey, tier_id: str | None, model: str
    ) -> list[LimitScope] | None:
        """``scopes`` when they are known already (no await on the request path)."""
        return self._scopes.get((key.id, tier_id, model))

    async def scopes(self, key: ApiKey, tier_id: str | None, model: str) -> list[LimitScope]:
        """The scopes a request of ``key`` for ``model`` counts against (built once per key, tier
        and model; dropped on any override change)."""
        cached = (key.id, tier_id, model)
        scopes = self._scopes.get(cached)
        if scopes is None:
            epoch = self._epoch
            scopes, complete = await self._scopes_for(key, tier_id, model)
            # (not when overrides could not be read, or changed meanwhile: read again next time)
            if complete and epoch == self._epoch:
                if len(self._scopes) >= _MAX_CACHED:
                    self._scopes.clear()
                self._scopes[cached] = scopes
        return scopes

    def admit(
        self, scopes: list[LimitScope], tokens: int, now: float, images: int = 0, audio_mb: int = 0
    ) -> Decision:
        return self._limiter.admit(
            scopes, Cost(tokens=tokens, images=images, audio_mb=audio_mb), now
        )

    async def _scopes_for(
        self, key: ApiKey, tier_id: str | None, model: str
    ) -> tuple[list[LimitScope], bool]:
        """The scopes a request counts against: the organization's tier limits, then the
        project's and the key's overrides (each only lowering the limits above it)."""
        try:
            tier = self._tiers.get(tier_id) if tier_id else self._tiers.lowest
        except KeyError:
            tier = self._tiers.lowest
        base = base_model(model)
        org_limits = tier.limits_for(model)
        scopes = [LimitScope(scope_id("org", key.org_id, base), org_limits)]
        project: ModelLimits | None = None
        try:
            if key.project_id:
                overrides = await self._project(key.project_id)
                project = overrides.get(base) or overrides.get(model)
                if project is not None:
                    limits = effective(org_limits, project)
                    scopes.append(LimitScope(scope_id("project", key.project_id, base), limits))
            own = await self._key(key.id)
            if own is not None:
                scopes.append(
                    LimitScope(scope_id("key", key.id, base), effective(org_limits, project, own))
                )
        except StoreUnavailable:
            self.failed_open += 1
            log.warning("rate-limit overrides unavailable; applying the organization's limits only")
            return scopes, False
        return scopes, True

    def settle(self, ticket: Ticket | None, tokens: int, now: float) -> None:
        if ticket is not None:
            self._limiter.settle(ticket, tokens, now)

    def forget(self, ref: str | None) -> None:
        """Drops cached overrides of a project or key that changed (from the change feed)."""
        self._epoch += 1
        self._scopes.clear()
        if ref is None:
            self._projects.clear()
            self._keys.clear()
        else:
            self._projects.pop(ref, None)
            self._keys.pop(ref, None)

    async def _project(self, project_id: str) -> Mapping[str, ModelLimits]:
        cached = self._projects.get(project_id)
        if cached is None:
            epoch = self._epoch
            cached = await self._project_reads.read(
                (project_id, epoch), self._store.project_limits, project_id
            )
            if epoch == self._epoch:
                self._projects[project_id] = cached
        return cached

    async def _key(self, key_id: str) -> ModelLimits | None:
        if key_id in self._keys:
            return self._keys[key_id]
        epoch = self._epoch
        own = await self._key_reads.read((key_id, epoch), self._store.key_limits, key_id)
        if epoch == self._epoch:
            self._keys[key_id] = own
        return own
