"""SqlOutbox: the email outbox on SQLite or PostgreSQL. Each method is one short transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Engine, RowMapping, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from keyplane.ids import new_id
from keyplane.notify.models import OutboundEmail
from keyplane.sealing import Sealer
from keyplane.storage.notify_tables import email_outbox as o
from keyplane.storage.store import SqlStore

MAX_DEDUPE_KEY = 200
MAX_ERROR = 2000
SEALED = "sealed:v1:"


class SqlOutbox(SqlStore):
    """Email bodies are stored sealed (Fernet, with a key derived from the operator's encryption
    key) when a key is given: verification, reset and invitation links are secrets until used,
    and no secret may sit in the database in the clear (BRIEF C12)."""

    def __init__(self, engine: Engine, *, sealer: Sealer | None = None) -> None:
        super().__init__(engine)
        self._sealer = sealer

    def _seal(self, text: str) -> str:
        if self._sealer is None:
            return text
        return SEALED + self._sealer.seal(text)

    def _open(self, stored: str) -> str:
        if not stored.startswith(SEALED):
            return stored
        if self._sealer is None:
            raise ValueError("this email body is sealed and no encryption key was given")
        return self._sealer.open(stored[len(SEALED) :])

    def _email(self, row: RowMapping) -> OutboundEmail:
        return _email(row, self._open)

    def enqueue(
        self,
        dedupe_key: str,
        to: Sequence[str],
        subject: str,
        body_text: str,
        body_html: str | None = None,
        *,
        now: float,
    ) -> bool:
        if isinstance(to, str) or not to:
            raise ValueError("an email needs at least one recipient (a list of addresses)")
        if not dedupe_key or len(dedupe_key) > MAX_DEDUPE_KEY:
            raise ValueError(f"a dedupe key has 1 to {MAX_DEDUPE_KEY} characters")
        at = int(now)
        row = {
            "id": new_id("eml_"),
            "dedupe_key": dedupe_key,
            "recipients": json.dumps(list(to)),
            "subject": subject,
            "body_text": self._seal(body_text),
            "body_html": None if body_html is None else self._seal(body_html),
            "created_at": at,
            "attempts": 0,
            "next_attempt_at": at,
        }
        try:
            with self._write() as conn:
                conn.execute(insert(o).values(**row))
        except IntegrityError:
            # Another process enqueued this key first (the unique constraint decided). Anything
            # else that violates a constraint is a bug and must not pass as a duplicate.
            if self._exists(dedupe_key):
                return False
            raise
        return True

    def claim_due(self, now: float, limit: int, lease_s: int) -> list[OutboundEmail]:
        at = int(now)
        free = or_(o.c.lease_until.is_(None), o.c.lease_until < at)
        with self._write() as conn:
            candidates = conn.execute(
                select(o.c.id)
                .where(o.c.sent_at.is_(None), o.c.next_attempt_at <= at, free)
                .order_by(o.c.next_attempt_at, o.c.id)
                .limit(limit)
            ).scalars()
            claimed: list[str] = []
            for email_id in list(candidates):
                # Conditional UPDATE: on PostgreSQL a concurrent claimer blocks on the row lock
                # and then re-checks the WHERE against the committed lease, so only one hits.
                # SQLite serializes writers (BEGIN IMMEDIATE) to the same effect.
                hit = conn.execute(
                    update(o)
                    .where(o.c.id == email_id, o.c.sent_at.is_(None), free)
                    .values(lease_until=at + lease_s)
                ).rowcount
                if hit:
                    claimed.append(email_id)
            if not claimed:
                return []
            rows = conn.execute(select(o).where(o.c.id.in_(claimed))).mappings().all()
        by_id = {r["id"]: self._email(r) for r in rows}
        return [by_id[i] for i in claimed]

    def mark_sent(self, email_id: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                update(o)
                .where(o.c.id == email_id, o.c.sent_at.is_(None))
                .values(sent_at=int(now), lease_until=None, last_error=None)
            )

    def mark_failed(self, email_id: str, now: float, error: str, retry_at: float) -> None:
        with self._write() as conn:
            conn.execute(
                update(o)
                .where(o.c.id == email_id, o.c.sent_at.is_(None))
                .values(
                    attempts=o.c.attempts + 1,
                    next_attempt_at=max(int(retry_at), int(now)),
                    lease_until=None,
                    last_error=error[:MAX_ERROR],
                )
            )

    def _exists(self, dedupe_key: str) -> bool:
        def read(c: Connection) -> bool:
            return c.execute(select(o.c.id).where(o.c.dedupe_key == dedupe_key)).first() is not None

        return self._read(read)


def _email(row: RowMapping, open_: Callable[[str], str]) -> OutboundEmail:
    html = row["body_html"]
    return OutboundEmail(
        id=row["id"],
        dedupe_key=row["dedupe_key"],
        to=tuple(json.loads(row["recipients"])),
        subject=row["subject"],
        body_text=open_(row["body_text"]),
        body_html=None if html is None else open_(html),
        created_at=row["created_at"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        sent_at=row["sent_at"],
        last_error=row["last_error"],
    )
