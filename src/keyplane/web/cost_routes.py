"""Admin API for costs, in OpenAI's shape: ``GET /v1/organization/costs``, dollars billed per day
(every endpoint), grouped by project and by line item (the model). The figures are the usage
records' own, so they add up to what was billed, to the micro-dollar."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from keyplane.errors import InvalidRequest
from keyplane.usage.pricing import MICRO
from keyplane.usage.records import UsageBucket
from keyplane.web.auth import Ctx
from keyplane.web.authz import Allowed, admin_router
from keyplane.web.usage_buckets import (
    WIDTH_S,
    BucketPage,
    EndTime,
    Ids,
    PageCursor,
    Time,
    bounded,
    bucket_page,
    json_page,
    listed,
    window,
)

router = admin_router()

MAX_COST_BUCKETS = 180
CostGroup = Literal["project_id", "line_item"]


class Amount(BaseModel):
    value: float  # dollars (OpenAI's unit here); exact micro-dollars in the usage records
    currency: Literal["usd"] = "usd"


class CostResult(BaseModel):
    object: Literal["organization.costs.result"] = "organization.costs.result"
    amount: Amount
    line_item: str | None = None  # the model
    project_id: str | None = None


@router.get("/costs", tags=["usage"], name="costs.list", response_model=BucketPage[CostResult])
async def costs(
    ctx: Ctx,
    request: Request,
    principal: Allowed,
    start_time: Time,
    end_time: EndTime = None,
    bucket_width: Literal["1d"] = "1d",
    limit: Annotated[int | None, Query(ge=1, le=180)] = None,
    page: PageCursor = None,
    group_by: Annotated[list[CostGroup], Query(alias="group_by[]")] = [],  # noqa: B006
    project_ids: Annotated[Ids, Query(alias="project_ids[]")] = [],  # noqa: B006
) -> Response:
    """Dollars billed per day (every endpoint), by project and by line item (the model)."""
    begin, stop, more = window(
        start_time, end_time, "1d", limit, page, ctx.services.clock.now(), MAX_COST_BUCKETS
    )
    groups = list(dict.fromkeys(listed(request, "group_by", group_by)))
    if any(g not in ("project_id", "line_item") for g in groups):
        raise InvalidRequest("Costs group by project_id and line_item only.", param="group_by")
    stored = ["model" if g == "line_item" else g for g in groups]
    rows = await asyncio.to_thread(
        ctx.services.usage_store.buckets, principal.org_id, start=begin, end=stop,
        width_s=WIDTH_S["1d"], group_by=stored,
        project_ids=listed(request, "project_ids", project_ids),
    )  # fmt: skip
    bounded(rows)

    def make(r: UsageBucket) -> CostResult:
        return CostResult(
            amount=Amount(value=r.cost_micro_usd / MICRO), line_item=r.model,
            project_id=r.project_id,
        )  # fmt: skip

    w = WIDTH_S["1d"]
    return await json_page(lambda: bucket_page(list(rows), begin, stop, w, more, CostResult, make))
