"""Admin API for the usage of OpenAI's hosted tools, in OpenAI's shapes: ``GET /v1/organization/
usage/vector_stores`` (bytes stored) and ``…/usage/code_interpreter_sessions`` (sessions run).

keyplane forwards neither: ``/v1/vector_stores`` is answered "not served" by the gateway, and a
Responses API request naming a hosted tool (``file_search``, ``code_interpreter``…) is refused
before it is forwarded (gateway/responses.py). So no request through keyplane has such usage, and
every bucket of these pages is empty, truthfully. They are served, with the parameters and checks
of the other usage endpoints, so that a client pulling every usage endpoint gets pages it reads
instead of a 404."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from keyplane.errors import InvalidRequest
from keyplane.web.auth import Ctx
from keyplane.web.authz import admin_router
from keyplane.web.usage_buckets import (
    MAX_BUCKETS,
    WIDTH_S,
    BucketPage,
    EndTime,
    Ids,
    PageCursor,
    Time,
    Width,
    bucket_page,
    json_page,
    listed,
    window,
)

router = admin_router()
R = TypeVar("R", bound=BaseModel)


class VectorStoresResult(BaseModel):
    object: Literal["organization.usage.vector_stores.result"] = (
        "organization.usage.vector_stores.result"
    )
    usage_bytes: int
    project_id: str | None = None


class CodeInterpreterSessionsResult(BaseModel):
    object: Literal["organization.usage.code_interpreter_sessions.result"] = (
        "organization.usage.code_interpreter_sessions.result"
    )
    num_sessions: int
    project_id: str | None = None


class ToolUsageQuery:
    """The query OpenAI's hosted-tool usage endpoints take: the usage endpoints' window and
    pages, grouped by project only, filtered by project."""

    def __init__(
        self,
        request: Request,
        start_time: Time,
        end_time: EndTime = None,
        bucket_width: Width = "1d",
        limit: Annotated[int | None, Query(ge=1, le=1440)] = None,
        page: PageCursor = None,
        group_by: Annotated[list[Literal["project_id"]], Query(alias="group_by[]")] = [],  # noqa: B006
        project_ids: Annotated[Ids, Query(alias="project_ids[]")] = [],  # noqa: B006
    ) -> None:
        # (``group_by`` as OpenAI's SDK sends it, without ``[]``, is not checked by its type.)
        unknown = [g for g in listed(request, "group_by", group_by) if g != "project_id"]
        if unknown:
            raise InvalidRequest(
                f"Cannot group by {unknown[0]!r}: this usage groups by project_id only.",
                param="group_by",
            )
        self.start, self.end, self.width, self.limit, self.page = (
            start_time,
            end_time,
            bucket_width,
            limit,
            page,
        )


ToolUsage = Annotated[ToolUsageQuery, Depends()]


async def _empty_page(ctx: Ctx, q: ToolUsageQuery, result: type[R]) -> Response:
    """The page of buckets ``q`` asks for, checked as any usage query, each with no results."""
    now = ctx.services.clock.now()
    begin, stop, more = window(q.start, q.end, q.width, q.limit, q.page, now, MAX_BUCKETS[q.width])
    w = WIDTH_S[q.width]
    return await json_page(lambda: bucket_page((), begin, stop, w, more, result, make=None))


@router.get(
    "/usage/vector_stores", tags=["usage"], name="usage.vector_stores",
    response_model=BucketPage[VectorStoresResult],
)  # fmt: skip
async def vector_stores_usage(ctx: Ctx, q: ToolUsage) -> Response:
    """Bytes of vector stores per time bucket: none, as keyplane forwards no vector stores."""
    return await _empty_page(ctx, q, VectorStoresResult)


@router.get(
    "/usage/code_interpreter_sessions", tags=["usage"], name="usage.code_interpreter_sessions",
    response_model=BucketPage[CodeInterpreterSessionsResult],
)  # fmt: skip
async def code_interpreter_sessions_usage(ctx: Ctx, q: ToolUsage) -> Response:
    """Code interpreter sessions per time bucket: none, as keyplane forwards no hosted tools."""
    return await _empty_page(ctx, q, CodeInterpreterSessionsResult)
