"""Audit records as plain data.

An event is written once and never changed. ``details`` says what changed: ``{"data": {...}}`` for
something created or removed, ``{"before": {...}, "after": {...}}`` for a change. It never holds
a secret; ``AuditService.record`` masks anything shaped like a key before it is stored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class ActorType(enum.StrEnum):
    SESSION = "session"  # a user signed in to the dashboard
    API_KEY = "api_key"  # an admin key on the Admin API
    SYSTEM = "system"  # keyplane itself (automatic tier promotion, the sweeper)
    CLI = "cli"  # the `keyplane` command, run on the server by an OS user (``id``: user@host)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: a dashboard session or an API key (``id``), acting for ``user_id``; or
    the ``keyplane`` command, which no keyplane user signs in to (``id`` names the OS user and
    the machine it ran on)."""

    type: ActorType
    id: str
    user_id: str | None = None
    email: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: str
    org_id: str
    type: str  # "<object>.<verb>", e.g. "api_key.created", OpenAI's names where it has them
    effective_at: int
    actor: Actor
    project_id: str | None
    target_id: str | None  # the object that changed
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """OpenAI's audit-log filters; an empty sequence does not filter. Times are Unix seconds."""

    effective_at_gt: int | None = None
    effective_at_gte: int | None = None
    effective_at_lt: int | None = None
    effective_at_lte: int | None = None
    event_types: Sequence[str] = ()
    actor_ids: Sequence[str] = ()  # an actor's key or session id, or the user it acts for
    actor_emails: Sequence[str] = ()
    project_ids: Sequence[str] = ()
    resource_ids: Sequence[str] = ()  # the objects that changed (an event's target)


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: Sequence[AuditEvent]  # newest first
    has_more: bool
