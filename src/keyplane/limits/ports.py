"""What rate limiting needs from storage: the overrides that lower an organization's limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from keyplane.limits.ratelimit import ModelLimits


class RateLimitStore(Protocol):
    def project_limits(self, project_id: str) -> Mapping[str, ModelLimits]:
        """Returns the project's overrides by model. Raises StoreUnavailable."""
        ...

    def key_limits(self, key_id: str) -> ModelLimits | None:
        """Returns the key's override (for every model), if any. Raises StoreUnavailable."""
        ...

    def save_project_limits(
        self, org_id: str, project_id: str, model: str, limits: ModelLimits, at: int
    ) -> None:
        """Stores a project's override for one model and announces it on the change feed."""
        ...

    def save_key_limits(
        self, org_id: str, key_id: str, limits: ModelLimits | None, at: int
    ) -> None:
        """Stores (or with None removes) a key's override and announces it on the change feed."""
        ...
