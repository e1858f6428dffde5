"""SQL implementation of the WebhookStore port. Endpoint secrets are stored sealed (Fernet, a key
derived from the operator's encryption key): keyplane must read them back to sign."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from keyplane.ids import new_id
from keyplane.notify.webhooks import Delivery, DeliveryReport, WebhookEndpoint
from keyplane.sealing import Sealer
from keyplane.storage.store import SqlStore
from keyplane.storage.webhook_tables import webhook_deliveries as wd
from keyplane.storage.webhook_tables import webhook_endpoints as we


def _endpoint(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        row.id, row.org_id, row.url, tuple(json.loads(row.events)), row.description, row.created_at
    )


class SqlWebhookStore(SqlStore):
    def __init__(self, engine: Engine, *, sealer: Sealer) -> None:
        super().__init__(engine)
        self._sealer = sealer

    def add_endpoint(self, endpoint: WebhookEndpoint, secret: str) -> None:
        with self._write() as conn:
            conn.execute(
                insert(we).values(
                    id=endpoint.id, org_id=endpoint.org_id, url=endpoint.url,
                    events=json.dumps(list(endpoint.events)), description=endpoint.description,
                    secret=self._sealer.seal(secret),
                    created_at=endpoint.created_at,
                )
            )  # fmt: skip

    def endpoints(self, org_id: str) -> Sequence[WebhookEndpoint]:
        rows = self._read(
            lambda c: c.execute(
                select(we).where(we.c.org_id == org_id).order_by(we.c.created_at, we.c.id)
            ).all()
        )
        return [_endpoint(r) for r in rows]

    def delete_endpoint(self, org_id: str, endpoint_id: str) -> bool:
        with self._write() as conn:
            done = conn.execute(delete(we).where(we.c.org_id == org_id, we.c.id == endpoint_id))
            conn.execute(
                delete(wd).where(wd.c.endpoint_id == endpoint_id, wd.c.delivered_at.is_(None))
            )
        return done.rowcount == 1

    def enqueue(self, org_id: str, dedupe_key: str, event_type: str, body: str, at: int) -> int:
        subscribed = [
            e.id for e in self.endpoints(org_id) if event_type in e.events
        ]  # (few per organization)
        queued = 0
        for endpoint_id in subscribed:
            try:
                with self._write() as conn:
                    conn.execute(
                        insert(wd).values(
                            id=new_id("whd_"), endpoint_id=endpoint_id, org_id=org_id,
                            dedupe_key=dedupe_key[:200], event_type=event_type, body=body,
                            created_at=at, attempts=0, next_attempt_at=at,
                        )
                    )  # fmt: skip
                queued += 1
            except IntegrityError:
                pass  # queued already (another process, or a replay): once per endpoint
        return queued

    def claim_due(self, now: int, limit: int, lease_s: int) -> Sequence[Delivery]:
        due = and_(
            wd.c.next_attempt_at.is_not(None),
            wd.c.next_attempt_at <= now,
            or_(wd.c.lease_until.is_(None), wd.c.lease_until <= now),
        )
        query = (
            select(wd, we.c.url, we.c.secret)
            .join(we, we.c.id == wd.c.endpoint_id)
            .where(due)
            .order_by(wd.c.next_attempt_at)
            .limit(limit)
        )
        claimed = self._claim(query, wd, due, lease_until=now + lease_s)
        return [self._delivery(row) for row in claimed]

    def recent_deliveries(
        self, org_id: str, per_endpoint: int
    ) -> Mapping[str, Sequence[DeliveryReport]]:
        shown = (wd.c.id, wd.c.endpoint_id, wd.c.event_type, wd.c.created_at, wd.c.attempts,
                 wd.c.delivered_at, wd.c.next_attempt_at, wd.c.last_error)  # fmt: skip

        def read(conn: Connection) -> dict[str, list[DeliveryReport]]:
            ids = conn.execute(select(we.c.id).where(we.c.org_id == org_id)).scalars().all()
            found: dict[str, list[DeliveryReport]] = {}
            for endpoint_id in ids:  # (at most MAX_ENDPOINTS, each the start of an index range)
                rows = conn.execute(
                    select(*shown)
                    .where(wd.c.endpoint_id == endpoint_id, wd.c.org_id == org_id)
                    .order_by(wd.c.created_at.desc(), wd.c.id.desc())
                    .limit(per_endpoint)
                ).all()
                if rows:
                    found[endpoint_id] = [DeliveryReport(*row) for row in rows]
            return found

        return self._read(read)

    def _delivery(self, row: Any) -> Delivery:
        secret = self._sealer.open(row.secret)
        return Delivery(
            row.id, row.endpoint_id, row.url, secret, row.event_type, row.body, row.attempts
        )

    def delivered(self, delivery_id: str, at: int, status: int) -> None:
        with self._write() as conn:
            conn.execute(
                update(wd)
                .where(wd.c.id == delivery_id)
                .values(
                    delivered_at=at, next_attempt_at=None, lease_until=None,
                    attempts=wd.c.attempts + 1, last_error=None,
                )
            )  # fmt: skip

    def failed(self, delivery_id: str, at: int, error: str, retry_at: int | None) -> None:
        with self._write() as conn:
            conn.execute(
                update(wd)
                .where(wd.c.id == delivery_id)
                .values(
                    attempts=wd.c.attempts + 1, next_attempt_at=retry_at, lease_until=None,
                    last_error=error[:500],
                )
            )  # fmt: skip
