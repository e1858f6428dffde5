"""Rate-limit overrides: per project and model, and per key (all models). They can only lower the
organization's tier limits; NULL means "not lowered" on that dimension."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Integer, String, Table, Text

from keyplane.storage.tables import metadata


def _dimensions() -> list[Column[int]]:
    return [
        Column("rpm", Integer),
        Column("tpm", BigInteger),
        Column("rpd", Integer),
        Column("images_per_min", Integer),
        Column("audio_mb_per_min", Integer),
    ]


project_rate_limits = Table(
    "project_rate_limits",
    metadata,
    Column("project_id", String(40), ForeignKey("projects.id"), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("org_id", String(40), nullable=False),
    *_dimensions(),
    Column("updated_at", BigInteger, nullable=False),
)

key_rate_limits = Table(
    "key_rate_limits",
    metadata,
    Column("key_id", String(40), ForeignKey("api_keys.id"), primary_key=True),
    Column("org_id", String(40), nullable=False),
    *_dimensions(),
    Column("updated_at", BigInteger, nullable=False),
)

# Allowed models and IP allowlists of an organization or a project (keys carry their own).
access_policies = Table(
    "access_policies",
    metadata,
    Column("scope_type", String(10), primary_key=True),  # org | project
    Column("scope_id", String(40), primary_key=True),
    Column("org_id", String(40), nullable=False),
    Column("allowed_models", Text),  # JSON list; NULL: no restriction
    Column("allowed_cidrs", Text),  # JSON list; NULL: no restriction
    Column("updated_at", BigInteger, nullable=False),
)
