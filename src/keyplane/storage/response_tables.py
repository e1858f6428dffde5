"""Responses the upstream stores, and the project each belongs to (usage/stored.py)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table

from keyplane.storage.tables import metadata

stored_responses = Table(
    "stored_responses",
    metadata,
    Column("id", String(200), primary_key=True),  # the upstream's id: its format is its own
    Column("org_id", String(40), nullable=False),
    Column("project_id", String(40), nullable=False),
    Column("upstream", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("context_tokens", BigInteger),  # its input and output tokens: what continuing it adds
    Index("ix_stored_responses_created_at", "created_at"),  # (forgotten oldest first)
)
