"""The schema. Times are Unix seconds (integers) so SQLite and PostgreSQL agree exactly."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("name", String(200), nullable=False, default=""),
    Column("password_hash", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("email_verified_at", BigInteger),
)

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

org_members = Table(
    "org_members",
    metadata,
    Column("org_id", String(40), ForeignKey("organizations.id"), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    UniqueConstraint("org_id", "name", name="uq_projects_org_id_name"),
)

service_accounts = Table(
    "service_accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("project_id", String(40), ForeignKey("projects.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),  # key_<12-char public id>
    Column("kind", String(10), nullable=False),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("project_id", String(40), ForeignKey("projects.id")),
    Column("owner_type", String(20), nullable=False),
    Column("owner_id", String(40), nullable=False),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False),  # HMAC-SHA-256(pepper, secret), hex
    Column("redacted_value", String(40), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("created_by", String(40)),
    Column("expires_at", BigInteger),
    Column("revoked_at", BigInteger),
    Column("last_used_at", BigInteger),
    Column("last_used_ip", String(64)),
    Column("scopes", Text),  # JSON list; NULL: all permissions
    Column("allowed_models", Text),  # JSON list; NULL: no key-level restriction
    Column("allowed_cidrs", Text),  # JSON list; NULL: no key-level restriction
    Column("rotated_from", String(40)),
    # The id of the pepper secret_hash was made with (keys/format.py: never the pepper); NULL:
    # stored before keyplane recorded it.
    Column("pepper_id", String(16)),
    Index("ix_api_keys_org_project", "org_id", "project_id"),
)

# Append-only change feed: every gateway polls it to drop changed keys from its cache.
key_events = Table(
    "key_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("key_id", String(40), nullable=False),
    Column("at", BigInteger, nullable=False),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(40), primary_key=True),  # the unique id makes metering idempotent
    Column("created_at", BigInteger, nullable=False),
    Column("org_id", String(40), nullable=False),
    Column("project_id", String(40)),
    Column("key_id", String(40), nullable=False),
    Column("owner_type", String(20), nullable=False),
    Column("owner_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("cached_input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("client_ip", String(64)),
    Column("cost_micro_usd", BigInteger, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("period", String(7), nullable=False, server_default=""),  # UTC month of admission
    Column("images", Integer, nullable=False, server_default="0"),  # images generated
    Column("audio_seconds", Integer, nullable=False, server_default="0"),  # audio transcribed
    Column("characters", BigInteger, nullable=False, server_default="0"),  # text spoken
    # Of the input and output tokens, those the upstream reported as audio (a chat audio model's).
    Column("input_audio_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_audio_tokens", BigInteger, nullable=False, server_default="0"),
    Index("ix_usage_records_org_time", "org_id", "created_at"),
    Index("ix_usage_records_project_time", "project_id", "created_at"),
)

from keyplane.storage import activity_tables as _activity_tables  # noqa: E402,F401
from keyplane.storage import auth_tables as _auth_tables  # noqa: E402,F401
from keyplane.storage import billing_tables as _billing_tables  # noqa: E402,F401
from keyplane.storage import limits_tables as _limits_tables  # noqa: E402,F401
from keyplane.storage import notify_tables as _notify_tables  # noqa: E402,F401
from keyplane.storage import org_tables as _org_tables  # noqa: E402,F401
from keyplane.storage import payment_tables as _payment_tables  # noqa: E402,F401
from keyplane.storage import response_tables as _response_tables  # noqa: E402,F401
from keyplane.storage import webhook_tables as _webhook_tables  # noqa: E402,F401
