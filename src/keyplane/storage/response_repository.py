"""SQL implementation of the ResponseStore port (usage/stored.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from keyplane.storage.response_tables import stored_responses as sr
from keyplane.storage.store import SqlStore
from keyplane.usage.stored import StoredResponse


class SqlResponseStore(SqlStore):
    def add_responses(self, rows: Sequence[StoredResponse]) -> None:
        if not rows:
            return
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(sr)
        stmt = stmt.on_conflict_do_update(  # never the owner: only what was not known yet
            index_elements=[sr.c.id],
            set_={
                "context_tokens": func.coalesce(sr.c.context_tokens, stmt.excluded.context_tokens)
            },
        )
        with self._write() as conn:
            conn.execute(stmt, [asdict(r) for r in rows])

    def stored_response(self, response_id: str) -> StoredResponse | None:
        row = self._read(lambda c: c.execute(select(sr).where(sr.c.id == response_id)).first())
        return None if row is None else StoredResponse(**row._mapping)

    def forget_response(self, response_id: str) -> None:
        with self._write() as conn:
            conn.execute(delete(sr).where(sr.c.id == response_id))

    def forget_responses_before(self, at: int, limit: int) -> int:
        # Read first (nearly always nothing: no write lock taken), then delete those rows.
        oldest = select(sr.c.id).where(sr.c.created_at < at).order_by(sr.c.created_at).limit(limit)
        ids = self._read(lambda c: list(c.execute(oldest).scalars()))
        if ids:
            with self._write() as conn:
                conn.execute(delete(sr).where(sr.c.id.in_(ids)))
        return len(ids)
