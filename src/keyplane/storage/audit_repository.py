"""SqlAuditLog: the append-only audit log in SQL, paged newest first by insertion order."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, RowMapping, Select, insert, or_, select

from keyplane.audit.models import Actor, ActorType, AuditEvent, AuditFilter, AuditPage
from keyplane.errors import InvalidRequest
from keyplane.storage.org_tables import audit_events as a
from keyplane.storage.store import SqlStore


def _event(row: RowMapping) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        org_id=row["org_id"],
        type=row["type"],
        effective_at=row["effective_at"],
        actor=Actor(
            type=ActorType(row["actor_type"]),
            id=row["actor_id"],
            user_id=row["actor_user_id"],
            email=row["actor_email"],
            ip_address=row["ip_address"],
            user_agent=row["user_agent"],
        ),
        project_id=row["project_id"],
        target_id=row["target_id"],
        details=json.loads(row["details"]),
    )


def _filtered(query: Select[Any], f: AuditFilter) -> Select[Any]:
    if f.effective_at_gt is not None:
        query = query.where(a.c.effective_at > f.effective_at_gt)
    if f.effective_at_gte is not None:
        query = query.where(a.c.effective_at >= f.effective_at_gte)
    if f.effective_at_lt is not None:
        query = query.where(a.c.effective_at < f.effective_at_lt)
    if f.effective_at_lte is not None:
        query = query.where(a.c.effective_at <= f.effective_at_lte)
    if f.event_types:
        query = query.where(a.c.type.in_(list(f.event_types)))
    if f.actor_ids:
        ids = list(f.actor_ids)
        query = query.where(or_(a.c.actor_id.in_(ids), a.c.actor_user_id.in_(ids)))
    if f.actor_emails:
        query = query.where(a.c.actor_email.in_([e.lower() for e in f.actor_emails]))
    if f.project_ids:
        query = query.where(a.c.project_id.in_(list(f.project_ids)))
    if f.resource_ids:
        query = query.where(a.c.target_id.in_(list(f.resource_ids)))
    return query


def insert_event(conn: Connection, event: AuditEvent) -> None:
    """Appends ``event`` in the caller's transaction (``SqlAuditLog.record``'s, or the change's it
    tells of: a line of the billing history)."""
    actor = event.actor
    conn.execute(
        insert(a).values(
            id=event.id,
            org_id=event.org_id,
            type=event.type,
            effective_at=event.effective_at,
            actor_type=actor.type.value,
            actor_id=actor.id,
            actor_user_id=actor.user_id,
            actor_email=None if actor.email is None else actor.email.lower(),
            ip_address=actor.ip_address,
            user_agent=actor.user_agent,
            project_id=event.project_id,
            target_id=event.target_id,
            details=json.dumps(event.details, sort_keys=True),
        )
    )


class SqlAuditLog(SqlStore):
    def record(self, event: AuditEvent) -> None:
        with self._write() as conn:
            insert_event(conn, event)

    def query(
        self,
        org_id: str,
        filters: AuditFilter,
        limit: int,
        after: str | None = None,
        before: str | None = None,
    ) -> AuditPage:
        def read(conn: Connection) -> AuditPage:
            query = _filtered(select(a).where(a.c.org_id == org_id), filters)
            if after is not None:
                query = query.where(a.c.seq < _seq(conn, org_id, after, "after"))
            if before is not None:
                query = query.where(a.c.seq > _seq(conn, org_id, before, "before"))
            # ``before`` pages towards newer events: take the ones nearest the cursor, then show
            # them newest first like every page.
            towards_newer = before is not None and after is None
            order = a.c.seq.asc() if towards_newer else a.c.seq.desc()
            rows = list(conn.execute(query.order_by(order).limit(limit + 1)).mappings())
            has_more = len(rows) > limit
            events = [_event(r) for r in rows[:limit]]
            if towards_newer:
                events.reverse()
            return AuditPage(events, has_more)

        return self._read(read)


def _seq(conn: Connection, org_id: str, event_id: str, param: str) -> int:
    seq = conn.execute(select(a.c.seq).where(a.c.org_id == org_id, a.c.id == event_id)).scalar()
    if seq is None:
        raise InvalidRequest(f"No object '{event_id}' to page from.", param=param)
    return int(seq)
