"""What metering needs from storage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from keyplane.usage.records import DailyUsage, UsageRecord


class UsageStore(Protocol):
    def query(
        self,
        org_id: str,
        *,
        project_id: str | None = None,
        since: int | None = None,
        limit: int = 1000,
    ) -> Sequence[UsageRecord]:
        """Returns the newest ``limit`` records (from ``since``), oldest first."""
        ...

    def summary(
        self, org_id: str, *, project_id: str | None = None, since: int | None = None
    ) -> tuple[int, int]:
        """(how many records, their total cost in micro-dollars), with the same filters."""
        ...

    def daily(
        self, org_id: str, *, project_id: str | None = None, since: int | None = None
    ) -> Sequence[DailyUsage]:
        """Usage added up per UTC day and model, with the same filters; oldest day first."""
        ...
