"""SqlKeyStore: API keys and the key change feed every gateway polls."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, RowMapping, func, insert, select, update

from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.storage import tables as t
from keyplane.storage.store import SqlStore, append_to_feed, fields_of

_JSON_FIELDS = ("scopes", "allowed_models", "allowed_cidrs")


# Ids many keys share: one string each in memory, not one per key (the gateway caches up to a
# million keys; these were a third of each entry's ~1 KB, bench/keys.py).
_SHARED_FIELDS = ("org_id", "project_id", "owner_type", "owner_id", "created_by", "pepper_id")


def _key(row: RowMapping) -> ApiKey:
    values = dict(row)
    values["kind"] = KeyKind(values["kind"])
    for name in _SHARED_FIELDS:
        if isinstance(values.get(name), str):
            values[name] = sys.intern(values[name])
    for name in _JSON_FIELDS:
        if values[name] is not None:
            values[name] = tuple(json.loads(values[name]))
    return ApiKey(**values)


def _key_row(key: ApiKey) -> dict[str, Any]:
    values = fields_of(key)
    values["kind"] = key.kind.value
    for name in _JSON_FIELDS:
        if values[name] is not None:
            values[name] = json.dumps(list(values[name]))
    return values


class SqlKeyStore(SqlStore):
    def get(self, key_id: str) -> ApiKey | None:
        row = self._read(
            lambda c: (
                c.execute(select(t.api_keys).where(t.api_keys.c.id == key_id)).mappings().first()
            )
        )
        return None if row is None else _key(row)

    def add(self, key: ApiKey) -> None:
        with self._write() as conn:
            conn.execute(insert(t.api_keys).values(**_key_row(key)))
            append_to_feed(conn, t.key_events, key_id=key.id, at=key.created_at)

    def list(self, org_id: str, project_id: str | None = None) -> Sequence[ApiKey]:
        query = select(t.api_keys).where(t.api_keys.c.org_id == org_id)
        if project_id is not None:
            query = query.where(t.api_keys.c.project_id == project_id)
        query = query.order_by(t.api_keys.c.created_at.desc(), t.api_keys.c.id)
        return [_key(r) for r in self._read(lambda c: c.execute(query).mappings().all())]

    def revoke(self, key_id: str, at: int) -> bool:
        with self._write() as conn:
            done = conn.execute(
                update(t.api_keys)
                .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=at)
            ).rowcount
            if done:
                append_to_feed(conn, t.key_events, key_id=key_id, at=at)
        return bool(done)

    def update(self, key: ApiKey, at: int) -> None:
        """Stores a key's changed settings (expiry, permissions, allowlists) and announces it."""
        values = _key_row(key)
        with self._write() as conn:
            conn.execute(update(t.api_keys).where(t.api_keys.c.id == key.id).values(**values))
            append_to_feed(conn, t.key_events, key_id=key.id, at=at)

    def changes_since(self, seq: int | None) -> tuple[int, Sequence[str]]:
        def read(c: Connection) -> tuple[int, Sequence[str]]:
            if seq is not None:
                rows = c.execute(
                    select(t.key_events.c.seq, t.key_events.c.key_id)
                    .where(t.key_events.c.seq > seq)
                    .order_by(t.key_events.c.seq)
                ).all()
                if rows:
                    return rows[-1][0], [r[1] for r in rows]
            latest = c.execute(select(func.max(t.key_events.c.seq))).scalar() or 0
            return (latest if seq is None else min(seq, latest)), []

        return self._read(read)

    def record_use(self, uses: Mapping[str, tuple[int, str | None]]) -> None:
        if not uses:
            return
        with self._write() as conn:
            for key_id, (at, ip) in uses.items():
                conn.execute(
                    update(t.api_keys)
                    .where(t.api_keys.c.id == key_id)
                    .values(last_used_at=at, last_used_ip=ip)
                )

    def rehash(self, rehashes: Mapping[str, tuple[str, str]], pepper_id: str) -> None:
        if not rehashes:
            return
        with self._write() as conn:
            for key_id, (old, new) in rehashes.items():
                conn.execute(
                    update(t.api_keys)
                    .where(t.api_keys.c.id == key_id, t.api_keys.c.secret_hash == old)
                    .values(secret_hash=new, pepper_id=pepper_id)
                )

    def pepper_counts(self, now: int) -> dict[str | None, int]:
        """Working keys (neither revoked nor expired) by the id of the pepper that hashed them
        (None: stored before keyplane recorded it)."""
        k = t.api_keys.c
        query = (
            select(k.pepper_id, func.count())
            .where(k.revoked_at.is_(None), (k.expires_at.is_(None)) | (k.expires_at > now))
            .group_by(k.pepper_id)
        )
        return {pid: n for pid, n in self._read(lambda c: c.execute(query).all())}
