"""The Audit log page (BRIEF C7/C9): the organization's audit log, newest first, 50 events a page,
optionally of one event type. Every member may read it (the Admin API's rule for audit_logs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from keyplane.audit.models import ActorType, AuditEvent, AuditFilter
from keyplane.usage.pricing import MICRO_PER_CENT, format_usd
from keyplane.web.dashboard.session import CurrentMember, context, render

router = APIRouter()
PAGE = 50
DETAILS_SHOWN = 300  # characters of an event's details on the page (the Admin API has them all)


def _actor(event: AuditEvent) -> str:
    actor = event.actor
    if actor.type is ActorType.SYSTEM:
        return "keyplane" if actor.id == "keyplane" else f"keyplane ({actor.id})"
    if actor.type is ActorType.CLI:
        os_user, _, host = actor.id.rpartition("@")
        return f"keyplane CLI (user {os_user} on {host})"
    who = actor.email or actor.user_id or actor.id
    return f"{who} (API key {actor.id})" if actor.type is ActorType.API_KEY else who


def _value(path: str, value: Any) -> str:
    """A detail as people read it: money in dollars (the Admin API's units: ``…_micro_usd`` in
    micro-dollars, ``threshold_amount`` in cents), lists joined, none as "none"."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "none"}[value]
    if isinstance(value, int) and path.endswith("micro_usd"):
        return "$" + format_usd(value)
    if isinstance(value, int) and path.endswith("threshold_amount"):
        return "$" + format_usd(value * MICRO_PER_CENT)
    if isinstance(value, list):
        return ", ".join(_value(path, v) for v in value) if value else "none"
    return str(value)


def _flat(details: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in details.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


def _details(event: AuditEvent) -> list[str]:
    """An event's details as lines: "field: before → after" for a change, "field: value" else
    (cut at ``DETAILS_SHOWN`` characters in all; the Admin API has them all)."""
    details = event.details or {}
    if set(details) == {"before", "after"}:
        before, after = _flat(details["before"]), _flat(details["after"])
        lines = [
            f"{k}: {_value(k, before.get(k))} → {_value(k, after.get(k))}"
            for k in sorted(before.keys() | after.keys())
        ]
    else:
        data = details.get("data") if set(details) == {"data"} else details
        flat = _flat(data) if isinstance(data, Mapping) else {"data": data}
        lines = [f"{k}: {_value(k, v)}" for k, v in sorted(flat.items())]
    shown, used = [], 0
    for line in lines:
        if used + len(line) > DETAILS_SHOWN:
            shown.append(line[: max(DETAILS_SHOWN - used, 20)] + "…")
            break
        shown.append(line)
        used += len(line)
    return shown


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
