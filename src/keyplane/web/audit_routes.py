"""Admin API for the audit log: ``GET /v1/organization/audit_logs`` with OpenAI's filters and shape.

Each event names its actor (a dashboard session or an API key, with the user behind it, the IP
address and the user agent; keyplane itself; or the ``keyplane`` command, with the OS user who ran
it and the machine it ran on) and carries what changed under a key named after its type, as
OpenAI's does: ``{"type": "project.updated", "project.updated": {"id", "changes_requested",
"before", "after"}}``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from keyplane.audit.models import ActorType, AuditEvent, AuditFilter
from keyplane.web.authz import Allowed, Services, admin_router
from keyplane.web.params import Limit
from keyplane.web.schemas import ListPage

router = admin_router()

Cursor = Annotated[str | None, Query(max_length=100)]
Time = Annotated[int | None, Query(ge=0, le=2**53)]
Ids = Annotated[list[str], Query(max_length=100)]


class AuditUser(BaseModel):
    id: str | None
    email: str | None


class AuditSession(BaseModel):
    id: str
    user: AuditUser
    ip_address: str | None
    user_agent: str | None


class AuditApiKey(BaseModel):
    id: str
    type: Literal["user"] = "user"
    user: AuditUser
    ip_address: str | None
    user_agent: str | None


class SessionActor(BaseModel):
    type: Literal["session"] = "session"
    session: AuditSession


class ApiKeyActor(BaseModel):
    type: Literal["api_key"] = "api_key"
    api_key: AuditApiKey


class SystemActor(BaseModel):
    """keyplane itself: automatic changes such as a usage-tier promotion; ``system.id`` names
    which of its parts acted ("keyplane", "auto-recharge", "payment provider", "anomaly
    detection", "secret scanning report")."""

    type: Literal["system"] = "system"
    system: dict[str, str] = Field(default_factory=lambda: {"id": "keyplane"})


class AuditCli(BaseModel):
    id: str  # os_user@host, what the actor_ids[] filter takes
    os_user: str
    host: str


class CliActor(BaseModel):
    """The ``keyplane`` command, run on the server by an operator: no keyplane user signs in to
    it, so it names the OS user who ran it and the machine (a keyplane extension)."""

    type: Literal["cli"] = "cli"
    cli: AuditCli


class AuditProject(BaseModel):
    id: str
    name: str | None


class AuditLogEvent(BaseModel):
    """One event; what changed is under the key named by ``type`` (an object)."""

    model_config = ConfigDict(extra="allow")

    object: Literal["organization.audit_log"] = "organization.audit_log"
    id: str
    type: str
    effective_at: int
    project: AuditProject | None
    actor: SessionActor | ApiKeyActor | SystemActor | CliActor


def _event(event: AuditEvent, project_names: dict[str, str]) -> AuditLogEvent:
    a = event.actor
    user = AuditUser(id=a.user_id, email=a.email)
    actor: SessionActor | ApiKeyActor | SystemActor | CliActor
    if a.type is ActorType.SYSTEM:
        actor = SystemActor(system={"id": a.id})
    elif a.type is ActorType.CLI:
        os_user, _, host = a.id.rpartition("@")  # (a host name has no "@", a user name may)
        actor = CliActor(cli=AuditCli(id=a.id, os_user=os_user, host=host))
    elif a.type is ActorType.SESSION:
        actor = SessionActor(
            session=AuditSession(
                id=a.id, user=user, ip_address=a.ip_address, user_agent=a.user_agent
            )
        )
    else:
        actor = ApiKeyActor(
            api_key=AuditApiKey(
                id=a.id, user=user, ip_address=a.ip_address, user_agent=a.user_agent
            )
        )
    project = None
    if event.project_id is not None:
        project = AuditProject(id=event.project_id, name=project_names.get(event.project_id))
    payload: dict[str, Any] = {"id": event.target_id, **event.details}
    if "after" in event.details:
        payload["changes_requested"] = event.details["after"]  # OpenAI's name for the new values
    fields: dict[str, Any] = {event.type: payload}
    return AuditLogEvent(
        id=event.id, type=event.type, effective_at=event.effective_at, project=project,
        actor=actor, **fields,
    )  # fmt: skip


@router.get("/audit_logs", tags=["audit logs"], name="audit_logs.list")
async def list_audit_logs(
    svc: Services,
    principal: Allowed,
    limit: Limit = 20,
    after: Cursor = None,
    before: Cursor = None,
    gt: Annotated[Time, Query(alias="effective_at[gt]")] = None,
    gte: Annotated[Time, Query(alias="effective_at[gte]")] = None,
    lt: Annotated[Time, Query(alias="effective_at[lt]")] = None,
    lte: Annotated[Time, Query(alias="effective_at[lte]")] = None,
    event_types: Annotated[Ids, Query(alias="event_types[]")] = [],  # noqa: B006
    actor_ids: Annotated[Ids, Query(alias="actor_ids[]")] = [],  # noqa: B006
    actor_emails: Annotated[Ids, Query(alias="actor_emails[]")] = [],  # noqa: B006
    project_ids: Annotated[Ids, Query(alias="project_ids[]")] = [],  # noqa: B006
    resource_ids: Annotated[Ids, Query(alias="resource_ids[]")] = [],  # noqa: B006
) -> ListPage[AuditLogEvent]:
    """The organization's audit log, newest first. ``after`` pages to older events, ``before``
    to newer ones; each ``…[]`` filter keeps events matching any of its values."""
    filters = AuditFilter(
        effective_at_gt=gt, effective_at_gte=gte, effective_at_lt=lt, effective_at_lte=lte,
        event_types=event_types, actor_ids=actor_ids, actor_emails=actor_emails,
        project_ids=project_ids, resource_ids=resource_ids,
    )  # fmt: skip

    def read() -> ListPage[AuditLogEvent]:
        found = svc.audit.query(principal.org_id, filters, limit=limit, after=after, before=before)
        names = {p.id: p.name for p in svc.orgs.projects(principal.org_id, include_archived=True)}
        events = [_event(e, names) for e in found.events]
        return ListPage[AuditLogEvent](
            data=events,
            first_id=events[0].id if events else None,
            last_id=events[-1].id if events else None,
            has_more=found.has_more,
        )

    return await asyncio.to_thread(read)
