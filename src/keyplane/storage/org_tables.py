"""Invitations, project members and the audit log, registered on the shared schema metadata."""

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
)

from keyplane.storage.tables import metadata

invites = Table(
    "invites",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organizations.id"), nullable=False),
    Column("email", String(254), nullable=False),
    Column("role", String(20), nullable=False),
    # SHA-256 of the emailed token; the token itself is never stored.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("accepted_at", BigInteger),
    Column("created_by", String(40)),
    Index("ix_invites_org_email", "org_id", "email"),
)

# The projects an invitation makes its invitee a member of on acceptance (OpenAI's ``projects``).
invite_projects = Table(
    "invite_projects",
    metadata,
    Column("invite_id", String(40), ForeignKey("invites.id"), primary_key=True),
    Column("project_id", String(40), ForeignKey("projects.id"), primary_key=True),
    Column("role", String(20), nullable=False),  # owner | member
    Column("position", Integer, nullable=False),  # the order the inviter listed them in
)

project_members = Table(
    "project_members",
    metadata,
    Column("project_id", String(40), ForeignKey("projects.id"), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True),
    Column("role", String(20), nullable=False),  # owner | member
    Column("created_at", BigInteger, nullable=False),
)

# Append-only. ``seq`` orders events (effective_at has one-second resolution) and drives paging.
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(60), nullable=False, unique=True),
    Column("org_id", String(40), nullable=False),
    Column("type", String(60), nullable=False),
    Column("effective_at", BigInteger, nullable=False),
    Column("actor_type", String(20), nullable=False),
    Column("actor_id", String(60), nullable=False),
    Column("actor_user_id", String(40)),
    Column("actor_email", String(254)),
    Column("ip_address", String(64)),
    Column("user_agent", String(500)),
    Column("project_id", String(40)),
    Column("target_id", String(60)),
    Column("details", Text, nullable=False),  # JSON object
    Index("ix_audit_events_org_seq", "org_id", "seq"),
)

org_verifications = Table(
    "org_verifications",
    metadata,
    Column("org_id", String(40), ForeignKey("organizations.id"), primary_key=True),
    Column("status", String(12), nullable=False),
    Column("legal_name", String(200), nullable=False),
    Column("website", String(300), nullable=False),
    Column("requested_at", BigInteger),
    Column("requested_by", String(40)),
    Column("decided_at", BigInteger),
    Column("note", String(500), nullable=False),
)
