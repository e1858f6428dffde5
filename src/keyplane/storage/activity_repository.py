"""SQL implementation of the ActivityStore port (keys/anomalies.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from keyplane.storage.activity_tables import key_networks as kn
from keyplane.storage.activity_tables import key_spend_hours as ks
from keyplane.storage.store import SqlStore


class SqlActivityStore(SqlStore):
    def add_networks(
        self, seen: Sequence[tuple[str, str, str]], at: int
    ) -> list[tuple[str, str, str]]:
        news = []
        for org_id, key_id, network in seen:
            try:
                with self._write() as conn:
                    known = (
                        conn.execute(select(kn.c.network).where(kn.c.key_id == key_id))
                        .scalars()
                        .all()
                    )
                    if network in known:
                        continue
                    conn.execute(
                        insert(kn).values(
                            key_id=key_id, network=network, org_id=org_id, first_seen=at
                        )
                    )
            except IntegrityError:
                continue  # another process recorded it first: its news, not ours
            if known:
                news.append((org_id, key_id, network))
        return news

    def add_spend(self, spent: Mapping[tuple[str, str, int], int]) -> None:
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        rows = [
            {"key_id": key, "hour": hour, "org_id": org, "spend_micro": amount}
            for (org, key, hour), amount in spent.items()
        ]
        stmt = dialect.insert(ks)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ks.c.key_id, ks.c.hour],
            set_={"spend_micro": ks.c.spend_micro + stmt.excluded.spend_micro},
        )
        with self._write() as conn:
            conn.execute(stmt, rows)

    def spend_history(self, key_id: str, since_hour: int) -> Mapping[int, int]:
        rows = self._read(
            lambda c: c.execute(
                select(ks.c.hour, ks.c.spend_micro).where(
                    ks.c.key_id == key_id, ks.c.hour >= since_hour
                )
            ).all()
        )
        return {r.hour: r.spend_micro for r in rows}

    def first_hour(self, key_id: str) -> int | None:
        found: int | None = self._read(
            lambda c: c.execute(select(func.min(ks.c.hour)).where(ks.c.key_id == key_id)).scalar()
        )
        return found

    def forget_spend_before(self, hour: int) -> None:
        with self._write() as conn:
            conn.execute(delete(ks).where(ks.c.hour < hour))
