"""The Usage page (BRIEF C7/C9): this month's spend, a bar per day, usage per day and model, and
the latest requests, for the whole organization or one project. Every member may see it (the
Admin API's rule: usage is read by Owners and Readers alike)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.billing.periods import period_end, period_of, period_start
from keyplane.usage.records import DailyUsage, units
from keyplane.web.dashboard.session import CurrentMember, context, render

router = APIRouter()
DAY_S = 86400
RECENT = 25  # requests listed


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


@router.get("/usage")
def usage_page(request: Request, viewer: CurrentMember, project: str = "") -> Response:
    services = context(request).services
    org = viewer.org
    assert org is not None  # CurrentMember has one
    now = services.clock.now()
    period = period_of(now)
    start = period_start(period)
    projects = services.orgs.projects(org.id, include_archived=True)
    chosen = next((p for p in projects if p.id == project), None)
    if project and chosen is None:  # not this organization's: not the whole organization's either
        raise HTTPException(404)
    project_id = chosen.id if chosen else None
    store = services.usage_store
    rows = list(store.daily(org.id, project_id=project_id, since=start))
    count, cost = store.summary(org.id, project_id=project_id, since=start)
    recent = list(reversed(store.query(org.id, project_id=project_id, since=start, limit=RECENT)))
    names = {p.id: p.name for p in projects}
    return render(
        request, "usage.html", viewer=viewer, projects=projects, chosen=chosen, rows=rows,
        count=count, cost=cost, recent=recent, names=names, units=units,
        bars=_bars(rows, start, min(int(now) + 1, period_end(period))),
        month=dt.datetime.fromtimestamp(start, dt.UTC).strftime("%B %Y"),
    )  # fmt: skip
