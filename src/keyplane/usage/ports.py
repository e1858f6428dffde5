"""What metering needs from storage."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from keyplane.usage.records import DailyUsage, UsageBucket, UsageRecord


class UsageStore(Protocol):
    def query(
        self,
        org_id: str,
        *,
        project_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 1000,
    ) -> Sequence[UsageRecord]:
        """Returns the newest ``limit`` records (from ``since``, before ``until``), oldest first."""
        ...

    def summary(
        self, org_id: str, *, project_id: str | None = None, since: int | None = None,
        until: int | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        """(how many records, their total cost in micro-dollars), with the same filters."""
        ...

    def daily(
        self, org_id: str, *, project_id: str | None = None, since: int | None = None,
        until: int | None = None,
    ) -> Sequence[DailyUsage]:  # fmt: skip
        """Usage added up per UTC day and model, with the same filters; oldest day first."""
        ...

    def records(
        self, org_id: str, *, start: int, end: int, project_id: str | None = None,
        page_size: int = 1000,
    ) -> Iterator[UsageRecord]:  # fmt: skip
        """Every record from ``start`` to ``end`` (seconds, end excluded), ordered by time then
        request id, read ``page_size`` at a time as they are taken (each page one short read
        after the last one's time and id: a month of a million records is never all in memory).

        Raises StoreUnavailable when the database cannot be reached."""
        ...

    def buckets(
        self, org_id: str, *, start: int, end: int, width_s: int, endpoints: Sequence[str] = (),
        group_by: Sequence[str] = (), project_ids: Sequence[str] = (),
        key_ids: Sequence[str] = (), models: Sequence[str] = (), owner_ids: Sequence[str] = (),
    ) -> Sequence[UsageBucket]:  # fmt: skip
        """Usage from ``start`` to ``end`` (seconds, end excluded) added up in buckets of
        ``width_s`` seconds (the first starting at ``start``) and by the ``group_by`` fields
        (``project_id``, ``model``, ``key_id``, ``owner_id``); each filter keeps records matching any of its
        values. Only buckets with usage, oldest first."""
        ...
