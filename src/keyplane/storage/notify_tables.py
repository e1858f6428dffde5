"""The email outbox table, registered on the shared schema metadata."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from keyplane.storage.tables import metadata

email_outbox = Table(
    "email_outbox",
    metadata,
    Column("id", String(40), primary_key=True),
    # Unique: the constraint, not a read-then-write, makes enqueue once-only across processes.
    Column("dedupe_key", String(200), nullable=False, unique=True),
    Column("recipients", Text, nullable=False),  # JSON list of addresses
    Column("subject", Text, nullable=False),
    Column("body_text", Text, nullable=False),
    Column("body_html", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("lease_until", BigInteger),  # a dispatcher holds the message until then
    Column("sent_at", BigInteger),
    Column("last_error", Text),
    Index("ix_email_outbox_due", "sent_at", "next_attempt_at"),
)
