"""Webhook endpoints and their deliveries (an outbox: one row per event and endpoint)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from keyplane.storage.tables import metadata

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("events", Text, nullable=False),  # JSON list of event types
    Column("description", String(200), nullable=False),
    Column("secret", Text, nullable=False),  # sealed (Fernet): keyplane signs with it
    Column("created_at", BigInteger, nullable=False),
    Index("ix_webhook_endpoints_org_id", "org_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("endpoint_id", String(40), nullable=False),
    Column("org_id", String(40), nullable=False),
    Column("dedupe_key", String(200), nullable=False),
    Column("event_type", String(60), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger),  # NULL: delivered or given up
    Column("lease_until", BigInteger),  # a dispatcher holds it until then
    Column("delivered_at", BigInteger),
    Column("last_error", String(500)),
    UniqueConstraint("endpoint_id", "dedupe_key"),
    Index("ix_webhook_deliveries_due", "next_attempt_at"),
    # an endpoint's newest deliveries (the dashboard's Webhooks page), however many it had
    Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
)
