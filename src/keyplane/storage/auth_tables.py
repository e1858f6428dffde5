"""Tables for sign-in: single-use tokens, web sessions, failed sign-ins, two-factor settings and
recovery codes. Every token, session id and recovery code is stored as a SHA-256 hex digest."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from keyplane.storage.tables import metadata

auth_tokens = Table(
    "auth_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("purpose", String(20), nullable=False),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger),
    Index("ix_auth_tokens_user_purpose", "user_id", "purpose", "created_at"),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("second_factor_pending", Boolean, nullable=False),
    Column("client_ip", String(64)),
    Column("user_agent", String(300), nullable=False),
    Index("ix_web_sessions_user", "user_id"),
    Index("ix_web_sessions_expires", "expires_at"),
)

# One row per failed (or in-flight) sign-in per subject: an account's email hash or an address.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subject", String(64), nullable=False),
    Column("at", BigInteger, nullable=False),
    Index("ix_login_failures_subject_at", "subject", "at"),
    Index("ix_login_failures_at", "at"),
)

user_second_factors = Table(
    "user_second_factors",
    metadata,
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True),
    Column("sealed_secret", Text, nullable=False),  # Fernet, key outside the database
    Column("last_step", BigInteger),
    Column("enabled_at", BigInteger, nullable=False),
)

recovery_codes = Table(
    "recovery_codes",
    metadata,
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False),
    Column("code_hash", String(64), nullable=False),
    Column("used_at", BigInteger),
    PrimaryKeyConstraint("user_id", "code_hash"),
)
