"""SqlUsageStore: the usage records' queries (lists, sums, days, buckets, monthly pages)."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, RowMapping, Select, and_, func, or_, select

from keyplane.storage import tables as t
from keyplane.storage.store import SqlStore
from keyplane.usage.records import DailyUsage, Outcome, UsageBucket, UsageRecord

DAY_S = 86400


class SqlUsageStore(SqlStore):
    def query(
        self,
        org_id: str,
        *,
        project_id: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 1000,
    ) -> Sequence[UsageRecord]:
        u = t.usage_records
        query = _usage_where(select(u), org_id, project_id, since, until)
        query = query.order_by(u.c.created_at.desc(), u.c.request_id.desc()).limit(limit)
        rows = self._read(lambda c: c.execute(query).mappings().all())
        return [_usage_record(r) for r in reversed(rows)]

    def summary(
        self, org_id: str, *, project_id: str | None = None, since: int | None = None,
        until: int | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        u = t.usage_records
        query = _usage_where(
            select(func.count(), func.coalesce(func.sum(u.c.cost_micro_usd), 0)), org_id,
            project_id, since, until,
        )  # fmt: skip
        count, cost = self._read(lambda c: c.execute(query).one())
        return int(count), int(cost)

    def records(
        self, org_id: str, *, start: int, end: int, project_id: str | None = None,
        page_size: int = 1000,
    ) -> Iterator[UsageRecord]:  # fmt: skip
        u = t.usage_records
        first = _usage_where(select(u), org_id, project_id, start, end)
        first = first.order_by(u.c.created_at, u.c.request_id).limit(page_size)
        query = first
        while True:
            page = self._read(functools.partial(_mappings, query))
            for row in page:
                yield _usage_record(row)
            if len(page) < page_size:
                return
            # Keyset pagination: after the last (time, id) seen, not OFFSET (which rereads every
            # row skipped, and shifts when records of the month are written meanwhile).
            at, last = page[-1]["created_at"], page[-1]["request_id"]
            query = first.where(
                or_(u.c.created_at > at, and_(u.c.created_at == at, u.c.request_id > last))
            )

    def daily(
        self, org_id: str, *, project_id: str | None = None, since: int | None = None,
        until: int | None = None,
    ) -> Sequence[DailyUsage]:  # fmt: skip
        u = t.usage_records
        day = (u.c.created_at // DAY_S).label("day")
        query = _usage_where(
            select(
                day, u.c.model, func.count(), func.sum(u.c.input_tokens),
                func.sum(u.c.output_tokens), func.sum(u.c.cost_micro_usd), func.sum(u.c.images),
                func.sum(u.c.audio_seconds), func.sum(u.c.characters),
            ),
            org_id, project_id, since, until,
        ).group_by(day, u.c.model).order_by(day, u.c.model)  # fmt: skip
        rows = self._read(lambda c: c.execute(query).all())
        return [
            DailyUsage(int(d), m, int(n), int(i), int(o), int(c), int(im), int(s), int(ch))
            for d, m, n, i, o, c, im, s, ch in rows
        ]

    def buckets(
        self, org_id: str, *, start: int, end: int, width_s: int, endpoints: Sequence[str] = (),
        group_by: Sequence[str] = (), project_ids: Sequence[str] = (),
        key_ids: Sequence[str] = (), models: Sequence[str] = (), owner_ids: Sequence[str] = (),
    ) -> Sequence[UsageBucket]:  # fmt: skip
        u = t.usage_records
        bucket = ((u.c.created_at - start) // width_s).label("bucket")
        grouped = {
            "project_id": u.c.project_id, "model": u.c.model, "key_id": u.c.key_id,
            "owner_id": u.c.owner_id,
        }  # fmt: skip
        keys = [grouped[name] for name in group_by]
        query = select(
            bucket, *keys, func.count(), func.sum(u.c.input_tokens),
            func.sum(u.c.cached_input_tokens), func.sum(u.c.output_tokens),
            func.sum(u.c.cost_micro_usd), func.sum(u.c.images), func.sum(u.c.audio_seconds),
            func.sum(u.c.characters), func.sum(u.c.input_audio_tokens),
            func.sum(u.c.output_audio_tokens),
        ).where(u.c.org_id == org_id, u.c.created_at >= start, u.c.created_at < end)  # fmt: skip
        for column, wanted in (
            (u.c.endpoint, endpoints), (u.c.project_id, project_ids), (u.c.key_id, key_ids),
            (u.c.model, models), (u.c.owner_id, owner_ids),
        ):  # fmt: skip
            if wanted:
                query = query.where(column.in_(list(wanted)))
        query = query.group_by(bucket, *keys).order_by(bucket, *keys)
        out = []
        for row in self._read(lambda c: c.execute(query).all()):
            values = dict(zip(group_by, row[1 : 1 + len(keys)], strict=True))
            n, i, ci, o, cost, images, seconds, chars, ai, ao = (
                int(v) for v in row[1 + len(keys) :]
            )
            project, model, key, owner = (
                values.get(k) for k in ("project_id", "model", "key_id", "owner_id")
            )
            first = start + int(row[0]) * width_s
            out.append(
                UsageBucket(
                    first, project, model, key, n, i, ci, o, cost, owner, images, seconds, chars,
                    ai, ao,
                )
            )  # fmt: skip
        return out


def _usage_where(
    query: Select[Any], org_id: str, project_id: str | None, since: int | None,
    until: int | None = None,
) -> Select[Any]:  # fmt: skip
    u = t.usage_records
    query = query.where(u.c.org_id == org_id)
    if project_id is not None:
        query = query.where(u.c.project_id == project_id)
    if since is not None:
        query = query.where(u.c.created_at >= since)
    if until is not None:
        query = query.where(u.c.created_at < until)
    return query


def _mappings(query: Select[Any], conn: Connection) -> Sequence[RowMapping]:
    return conn.execute(query).mappings().all()


def _usage_record(row: RowMapping) -> UsageRecord:
    return UsageRecord(**{**row, "outcome": Outcome(row["outcome"])})
