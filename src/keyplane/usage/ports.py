"""What metering needs from storage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from keyplane.usage.records import UsageRecord


class UsageStore(Protocol):
    def query(
        self,
        org_id: str,
        *,
        project_id: str | None = None,
        since: int | None = None,
        limit: int = 1000,
    ) -> Sequence[UsageRecord]:
        """Returns records oldest first."""
        ...
