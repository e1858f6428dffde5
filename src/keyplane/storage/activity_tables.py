"""Each key's activity, for anomaly alerts (keys/anomalies.py): the networks it was used from, and
its spend per hour over the last week."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, String, Table

from keyplane.storage.tables import metadata

key_networks = Table(
    "key_networks",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("network", String(64), primary_key=True),  # a /24 or a /48
    Column("org_id", String(40), nullable=False),
    Column("first_seen", BigInteger, nullable=False),
)

key_spend_hours = Table(
    "key_spend_hours",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("hour", Integer, primary_key=True),  # Unix time // 3600
    Column("org_id", String(40), nullable=False),
    Column("spend_micro", BigInteger, nullable=False),
)
