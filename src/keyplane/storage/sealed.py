"""Everything keyplane keeps sealed at rest: sealed again with the current encryption key
(``keyplane reseal``), the last step of rotating it (sealing.py), after which the previous keys
can be dropped from the settings; counted by the key that opens it (``keyplane secrets status``);
and checked before a gateway serves (what it will need to open: a value no configured key opens
stops it with a message naming the key to configure)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import InvalidToken
from sqlalchemy import Column, ColumnElement, Table, select, update

from keyplane import sealing
from keyplane.storage.auth_tables import user_second_factors
from keyplane.storage.notify_repository import SEALED
from keyplane.storage.notify_tables import email_outbox
from keyplane.storage.store import SqlStore
from keyplane.storage.webhook_tables import webhook_endpoints

PAGE = 500  # rows read, and written in one transaction, at a time


@dataclass(frozen=True, slots=True)
class SealedColumn:
    what: str  # for people: "email bodies"
    table: Table
    column: str
    label: str  # the purpose its key is derived for (sealing.py)
    prefix: str = ""  # what marks a sealed value (the rest of the column's values are not)
    # The rows keyplane will still open (an email not sent yet); None: all of them.
    needed: ColumnElement[bool] | None = None


SEALED_COLUMNS = (
    SealedColumn("email bodies (text)", email_outbox, "body_text", sealing.OUTBOX, SEALED,
                 email_outbox.c.sent_at.is_(None)),
    SealedColumn("email bodies (HTML)", email_outbox, "body_html", sealing.OUTBOX, SEALED,
                 email_outbox.c.sent_at.is_(None)),
    SealedColumn("webhook signing secrets", webhook_endpoints, "secret", sealing.WEBHOOKS),
    SealedColumn("two-factor secrets", user_second_factors, "sealed_secret", sealing.TOTP),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Resealed:
    what: str
    resealed: int
    unreadable: int  # sealed with a key that is not among those given: left as they are


@dataclass(frozen=True, slots=True)
class SealedCount:
    what: str
    by_key: dict[str | None, int]  # key id → values it opens; None: values none of them opens


@dataclass(frozen=True, slots=True)
class Unopened:
    what: str
    count: int
    key_ids: tuple[str, ...]  # the keys they record (none for values sealed before ids were)


class SqlResealer(SqlStore):
    def reseal(self, masters: Sequence[bytes]) -> list[Resealed]:
        """Seals every sealed value again with the first of ``masters``, reading it with any of
        them; a page of rows a transaction, each row written only if it did not change since it
        was read (a value sealed meanwhile is the current key's already)."""
        return [self._reseal(column, masters) for column in SEALED_COLUMNS]

    def count(self, masters: Sequence[bytes]) -> list[SealedCount]:
        """Every sealed value, counted by the key of ``masters`` that opens it."""
        counts = []
        for sealed in SEALED_COLUMNS:
            opener = sealing.Sealer(masters, sealed.label)
            by_key: dict[str | None, int] = {}
            for rows in self._pages(sealed):
                for _, stored in rows:
                    if stored.startswith(sealed.prefix):
                        kid = opener.opens(stored[len(sealed.prefix) :])
                        by_key[kid] = by_key.get(kid, 0) + 1
            counts.append(SealedCount(sealed.what, by_key))
        return counts

    def unopened(self, masters: Sequence[bytes]) -> list[Unopened]:
        """The values keyplane will still need to open (webhook and two-factor secrets, emails
        not sent yet) that none of ``masters`` opens, by column (the empty ones left out)."""
        found = []
        for sealed in SEALED_COLUMNS:
            opener = sealing.Sealer(masters, sealed.label)
            count, kids = 0, set()
            for rows in self._pages(sealed, needed_only=True):
                for _, stored in rows:
                    value = stored[len(sealed.prefix) :]
                    if stored.startswith(sealed.prefix) and opener.opens(value) is None:
                        count += 1
                        kid = sealing.recorded_key_id(value)
                        if kid is not None:
                            kids.add(kid)
            if count:
                found.append(Unopened(sealed.what, count, tuple(sorted(kids))))
        return found

    def _pages(self, sealed: SealedColumn, *, needed_only: bool = False) -> Iterator[list[Any]]:
        """The column's (row id, value) pairs, a page of PAGE rows at a time (each read apart)."""
        (key,) = sealed.table.primary_key.columns
        value: Column[str] = sealed.table.c[sealed.column]
        after: str | None = None
        while True:
            query = select(key, value).where(value.is_not(None)).order_by(key).limit(PAGE)
            if needed_only and sealed.needed is not None:
                query = query.where(sealed.needed)
            if after is not None:
                query = query.where(key > after)
            rows = self._read(lambda c: c.execute(query).all())  # noqa: B023 (called at once)
            if not rows:
                return
            after = rows[-1][0]
            yield list(rows)

    def _reseal(self, sealed: SealedColumn, masters: Sequence[bytes]) -> Resealed:
        opener = sealing.Sealer(masters, sealed.label)
        (key,) = sealed.table.primary_key.columns
        value: Column[str] = sealed.table.c[sealed.column]
        resealed = unreadable = 0
        for rows in self._pages(sealed):
            with self._write() as conn:
                for row_id, stored in rows:
                    if not stored.startswith(sealed.prefix):
                        continue
                    try:
                        again = opener.reseal(stored[len(sealed.prefix) :])
                    except (InvalidToken, UnicodeError):
                        unreadable += 1
                        continue
                    if again is None:  # (sealed with the current key already)
                        continue
                    resealed += conn.execute(
                        update(sealed.table)
                        .where(key == row_id, value == stored)
                        .values({sealed.column: sealed.prefix + again})
                    ).rowcount
        return Resealed(sealed.what, resealed, unreadable)
