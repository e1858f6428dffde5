"""Everything keyplane keeps sealed at rest, sealed again with the current encryption key
(``keyplane reseal``): the last step of rotating it (sealing.py), after which the previous keys
can be dropped from the settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.fernet import InvalidToken
from sqlalchemy import Column, Table, select, update

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


SEALED_COLUMNS = (
    SealedColumn("email bodies (text)", email_outbox, "body_text", sealing.OUTBOX, SEALED),
    SealedColumn("email bodies (HTML)", email_outbox, "body_html", sealing.OUTBOX, SEALED),
    SealedColumn("webhook signing secrets", webhook_endpoints, "secret", sealing.WEBHOOKS),
    SealedColumn("two-factor secrets", user_second_factors, "sealed_secret", sealing.TOTP),
)


@dataclass(frozen=True, slots=True)
class Resealed:
    what: str
    resealed: int
    unreadable: int  # sealed with a key that is not among those given: left as they are


class SqlResealer(SqlStore):
    def reseal(self, masters: Sequence[bytes]) -> list[Resealed]:
        """Seals every sealed value again with the first of ``masters``, reading it with any of
        them; a page of rows a transaction, each row written only if it did not change since it
        was read (a value sealed meanwhile is the current key's already)."""
        return [self._reseal(column, masters) for column in SEALED_COLUMNS]

    def _reseal(self, sealed: SealedColumn, masters: Sequence[bytes]) -> Resealed:
        fernet = sealing.sealer(masters, sealed.label)
        (key,) = sealed.table.primary_key.columns
        value: Column[str] = sealed.table.c[sealed.column]
        resealed = unreadable = 0
        after: str | None = None
        while True:
            query = select(key, value).where(value.is_not(None)).order_by(key).limit(PAGE)
            if after is not None:
                query = query.where(key > after)
            rows = self._read(lambda c: c.execute(query).all())  # noqa: B023 (called at once)
            if not rows:
                return Resealed(sealed.what, resealed, unreadable)
            after = rows[-1][0]
            with self._write() as conn:
                for row_id, stored in rows:
                    if not stored.startswith(sealed.prefix):
                        continue
                    try:
                        token = fernet.rotate(stored[len(sealed.prefix) :].encode("ascii"))
                    except (InvalidToken, UnicodeError):
                        unreadable += 1
                        continue
                    resealed += conn.execute(
                        update(sealed.table)
                        .where(key == row_id, value == stored)
                        .values({sealed.column: sealed.prefix + token.decode("ascii")})
                    ).rowcount
