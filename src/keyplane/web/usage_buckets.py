"""The pages of time buckets that the Admin API's usage and costs endpoints answer, in OpenAI's
shape: the window a query asks for, the page it gets, and the bounds on both.

Buckets start at ``start_time`` and are ``bucket_width`` wide; a page holds ``limit`` buckets
(empty ones included, as OpenAI's), and ``next_page`` is where the next page starts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Annotated, Generic, Literal, TypeVar

from fastapi import Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from keyplane.errors import InvalidRequest
from keyplane.usage.records import UsageBucket

Width = Literal["1m", "1h", "1d"]
WIDTH_S = {"1m": 60, "1h": 3600, "1d": 86400}
DEFAULT_BUCKETS = {"1m": 60, "1h": 24, "1d": 7}  # OpenAI's defaults
MAX_BUCKETS = {"1m": 1440, "1h": 168, "1d": 31}
MAX_RESULTS = 20_000  # results a page may hold (a bounded answer, built off the event loop)
Time = Annotated[int, Query(ge=0, le=2**40, description="Unix seconds.")]
EndTime = Annotated[int | None, Query(ge=0, le=2**40)]
PageCursor = Annotated[str | None, Query(max_length=20)]
Ids = Annotated[list[str], Query(max_length=100)]
R = TypeVar("R")


class Bucket(BaseModel, Generic[R]):
    object: Literal["bucket"] = "bucket"
    start_time: int
    end_time: int
    results: list[R]


class BucketPage(BaseModel, Generic[R]):
    object: Literal["page"] = "page"
    data: list[Bucket[R]]
    has_more: bool
    next_page: str | None


def window(
    start: int, end: int | None, width: Width, limit: int | None, page: str | None, now: float,
    most: int,
) -> tuple[int, int, bool]:  # fmt: skip
    """(the page's first second, its end, whether more pages follow); ``most`` buckets a page."""
    w = WIDTH_S[width]
    last = int(now) + 1 if end is None else end
    if last <= start:
        raise InvalidRequest("end_time must be after start_time.", param="end_time")
    begin = start
    if page is not None:
        if not (page.isascii() and page.isdigit()) or int(page) < start or (int(page) - start) % w:
            raise InvalidRequest("page is not a page of this query: use next_page.", param="page")
        begin = int(page)
    count = limit or DEFAULT_BUCKETS[width]
    if count > most:
        raise InvalidRequest(f"limit is at most {most} buckets of {width}.", param="limit")
    stop = min(last, begin + count * w)
    return begin, stop, stop < last


def bucket_page(
    rows: Sequence[UsageBucket], begin: int, stop: int, w: int, more: bool,
    result: type[R], make: object,
) -> BucketPage[R]:  # fmt: skip
    by_start: dict[int, list[R]] = {}
    for row in rows:
        by_start.setdefault(row.start, []).append(make(row))  # type: ignore[operator]
    data = [
        Bucket[result](start_time=t, end_time=min(t + w, stop), results=by_start.get(t, []))  # type: ignore[valid-type]
        for t in range(begin, stop, w)
    ]
    return BucketPage[result](data=data, has_more=more, next_page=str(stop) if more else None)  # type: ignore[valid-type]


def listed(request: Request, name: str, given: Sequence[str]) -> list[str]:
    """A list parameter as OpenAI's SDKs and docs send it (``name``) and as PHP-style clients do
    (``name[]``), together."""
    return [*given, *request.query_params.getlist(name)]


def bounded(rows: Sequence[UsageBucket]) -> None:
    if len(rows) > MAX_RESULTS:
        raise InvalidRequest(
            f"This page would hold {len(rows):,} results, more than {MAX_RESULTS:,}: group by "
            "fewer fields, use wider buckets or a smaller limit.", param="limit",
        )  # fmt: skip


async def json_page(page: Callable[[], BaseModel]) -> Response:
    """The page built and serialized on a worker thread: a large one must not stall the loop that
    serves /v1."""
    body = await asyncio.to_thread(lambda: page().model_dump_json())
    return Response(body, media_type="application/json")
