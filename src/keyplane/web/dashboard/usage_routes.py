"""The Usage page (BRIEF C7/C9): a month's spend (this month's, or an earlier one's), a bar per
day, usage per day and model, and the latest requests, for the whole organization or one project;
and its records as CSV. Every member may see and export it (the Admin API's rule: usage is read by
Owners and Readers alike)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response, StreamingResponse

from keyplane.accounts.models import Project
from keyplane.billing.periods import period_end, period_of, period_start
from keyplane.errors import InvalidRequest
from keyplane.usage.export import csv_chunks
from keyplane.usage.records import DailyUsage, units
from keyplane.web.dashboard.session import CurrentMember, Viewer, context, render

router = APIRouter()
DAY_S = 86400
RECENT = 25  # requests listed
MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


@dataclass(frozen=True, slots=True)
class Bar:
    label: str  # "Dec 6"
    cost: int  # micro-dollars
    height: float  # 0..100, of the tallest


def _bars(rows: list[DailyUsage], start: int, end: int) -> list[Bar]:
    """One bar per day of the month so far (days without usage at 0)."""
    per_day: dict[int, int] = {}
    for row in rows:
        per_day[row.day] = per_day.get(row.day, 0) + row.cost_micro_usd
    first, last = start // DAY_S, (end - 1) // DAY_S
    tallest = max(per_day.values(), default=0) or 1
    bars = []
    for day in range(first, last + 1):
        when = dt.datetime.fromtimestamp(day * DAY_S, dt.UTC)
        cost = per_day.get(day, 0)
        bars.append(Bar(f"{when:%b} {when.day}", cost, round(100 * cost / tallest, 1)))
    return bars


@dataclass(frozen=True, slots=True)
class Scope:
    """What the page (or its export) shows: a month of the organization, or of one project."""

    period: str  # "2026-12"
    start: int
    end: int  # the first second of the next month
    current: bool  # this month (so far)
    first: str  # the earliest month shown: the organization's creation month
    projects: list[Project]
    chosen: Project | None


def _scope(request: Request, viewer: Viewer, project: str, month: str) -> Scope:
    """A malformed month is refused (400); a month before the organization was created or after
    this one is not found (404), as a project not of the organization."""
    services = context(request).services
    org = viewer.org
    assert org is not None  # CurrentMember has one
    now = period_of(services.clock.now())
    first = period_of(org.created_at)
    if month and not MONTH.fullmatch(month):
        raise InvalidRequest("Choose a month as YYYY-MM, for example 2026-12.", param="month")
    period = month or now
    if not first <= period <= now:
        raise HTTPException(404)
    projects = list(services.orgs.projects(org.id, include_archived=True))
    chosen = next((p for p in projects if p.id == project), None)
    if project and chosen is None:  # not this organization's: not the whole organization's either
        raise HTTPException(404)
    return Scope(
        period, period_start(period), period_end(period), period == now, first, projects, chosen
    )


def _link(path: str, period: str, chosen: Project | None) -> str:
    query = {"month": period, **({"project": chosen.id} if chosen else {})}
    return f"{path}?{urlencode(query)}"


def _month_name(period: str) -> str:
    return dt.datetime.fromtimestamp(period_start(period), dt.UTC).strftime("%B %Y")


def _shift(period: str, months: int) -> str:
    year, month = divmod(int(period[:4]) * 12 + int(period[5:]) - 1 + months, 12)
    return f"{year:04d}-{month + 1:02d}"


@router.get("/usage")
def usage_page(
    request: Request, viewer: CurrentMember, project: str = "", month: str = ""
) -> Response:
    scope = _scope(request, viewer, project, month)
    services = context(request).services
    org = viewer.org
    assert org is not None
    project_id = scope.chosen.id if scope.chosen else None
    store = services.usage_store
    since, until = scope.start, scope.end
    rows = list(store.daily(org.id, project_id=project_id, since=since, until=until))
    count, cost = store.summary(org.id, project_id=project_id, since=since, until=until)
    latest = store.query(org.id, project_id=project_id, since=since, until=until, limit=RECENT)
    recent = list(reversed(latest))
    names = {p.id: p.name for p in scope.projects}
    earlier, later = _shift(scope.period, -1), _shift(scope.period, 1)
    end = min(int(services.clock.now()) + 1, scope.end) if scope.current else scope.end
    return render(
        request, "usage.html", viewer=viewer, projects=scope.projects, chosen=scope.chosen,
        rows=rows, count=count, cost=cost, recent=recent, names=names, units=units,
        bars=_bars(rows, scope.start, end), month=_month_name(scope.period),
        period=scope.period, current=scope.current,
        previous=_link("/usage", earlier, scope.chosen) if earlier >= scope.first else None,
        previous_name=_month_name(earlier),
        next=None if scope.current else _link("/usage", later, scope.chosen),
        next_name=_month_name(later),
        export=_link("/usage/export", scope.period, scope.chosen),
    )  # fmt: skip


@router.get("/usage/export")
def usage_export(
    request: Request, viewer: CurrentMember, project: str = "", month: str = ""
) -> Response:
    """The month's usage records as CSV, one row per request, streamed as they are read."""
    scope = _scope(request, viewer, project, month)
    services = context(request).services
    org = viewer.org
    assert org is not None
    project_id = scope.chosen.id if scope.chosen else None
    names = {p.id: p.name for p in scope.projects}
    keys = {k.id: k for k in services.keys.list(org.id)}  # revoked ones too: they were used
    records = services.usage_store.records(
        org.id, start=scope.start, end=scope.end, project_id=project_id
    )
    name = f"keyplane-usage-{scope.period}{f'-{project_id}' if project_id else ''}.csv"
    return StreamingResponse(
        (chunk.encode() for chunk in csv_chunks(records, names, keys)),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )
