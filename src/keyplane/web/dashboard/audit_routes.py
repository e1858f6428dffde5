"""The Audit log page (BRIEF C7/C9): the organization's audit log, newest first, 50 events a page,
optionally of one event type. Every member may read it (the Admin API's rule for audit_logs)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.responses import Response

from keyplane.audit.models import ActorType, AuditEvent, AuditFilter
from keyplane.web.dashboard.session import CurrentMember, context, render

router = APIRouter()
PAGE = 50
DETAILS_SHOWN = 300  # characters of an event's details on the page (the Admin API has them all)


def _actor(event: AuditEvent) -> str:
    actor = event.actor
    if actor.type is ActorType.SYSTEM:
        return "keyplane"
    if actor.type is ActorType.CLI:
        os_user, _, host = actor.id.rpartition("@")
        return f"keyplane CLI (user {os_user} on {host})"
    who = actor.email or actor.user_id or actor.id
    return f"{who} (API key {actor.id})" if actor.type is ActorType.API_KEY else who


def _details(event: AuditEvent) -> str:
    text = json.dumps(event.details, ensure_ascii=False, sort_keys=True) if event.details else ""
    return text if len(text) <= DETAILS_SHOWN else text[: DETAILS_SHOWN - 1] + "…"


@router.get("/audit-log")
def audit_page(
    request: Request, viewer: CurrentMember, event_type: str = "", after: str = ""
) -> Response:
    services = context(request).services
    org = viewer.org
    assert org is not None  # CurrentMember has one
    kind = event_type.strip()
    filters = AuditFilter(event_types=[kind] if kind else [])
    page = services.audit.query(org.id, filters, limit=PAGE, after=after or None)
    names = {p.id: p.name for p in services.orgs.projects(org.id, include_archived=True)}
    rows = [(e, _actor(e), _details(e)) for e in page.events]
    older = page.events[-1].id if page.has_more and page.events else None
    return render(
        request, "audit_log.html", viewer=viewer, rows=rows, names=names, event_type=kind,
        older=older,
    )  # fmt: skip
