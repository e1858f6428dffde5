"""Admin API for usage, in OpenAI's shapes (BRIEF C7): ``GET /v1/organization/usage/
completions``, ``…/usage/embeddings``, ``…/moderations``, ``…/images``, ``…/audio_transcriptions``
and ``…/audio_speeches``: requests per time bucket (usage_buckets.py), and what each endpoint is
counted in (tokens, images, seconds, characters), each grouped and filtered as OpenAI's are. The
figures are the usage records' own. Costs are cost_routes.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from keyplane.errors import InvalidRequest
from keyplane.usage.records import UsageBucket
from keyplane.web.auth import Ctx
from keyplane.web.authz import Allowed, admin_router
from keyplane.web.usage_buckets import (
    MAX_BUCKETS,
    WIDTH_S,
    BucketPage,
    EndTime,
    Ids,
    PageCursor,
    Time,
    Width,
    bounded,
    bucket_page,
    json_page,
    listed,
    window,
)

router = admin_router()

UsageGroup = Literal["project_id", "user_id", "api_key_id", "model", "batch"]


class CompletionsResult(BaseModel):
    object: Literal["organization.usage.completions.result"] = (
        "organization.usage.completions.result"
    )
    input_tokens: int
    output_tokens: int
    input_cached_tokens: int
    # Of the input and output tokens, the audio ones, as the upstream reported them (a chat model
    # that hears or speaks). OpenAI's input_audio_tokens leaves out cached audio: the upstream's
    # report of a chat completion does not tell those apart, so any are included here.
    input_audio_tokens: int
    output_audio_tokens: int
    num_model_requests: int
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None
    batch: bool | None = None


class InputResult(BaseModel):
    """Usage of an endpoint that only reads (embeddings, moderations)."""

    input_tokens: int
    num_model_requests: int
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None


class EmbeddingsResult(InputResult):
    object: Literal["organization.usage.embeddings.result"] = "organization.usage.embeddings.result"


class ModerationsResult(InputResult):
    object: Literal["organization.usage.moderations.result"] = (
        "organization.usage.moderations.result"
    )


class ImagesResult(BaseModel):
    object: Literal["organization.usage.images.result"] = "organization.usage.images.result"
    images: int
    num_model_requests: int
    # keyplane's own addition: the tokens of an image model priced by them (gpt-image-1; 0 for
    # the dall-e models, priced per image). An SDK reading OpenAI's shape ignores them.
    input_tokens: int = 0
    output_tokens: int = 0
    size: str | None = None  # (never grouped by: keyplane keeps the count, not the sizes)
    source: str | None = None  # image.generation, image.edit or image.variation, grouped by
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None


class AudioTranscriptionsResult(BaseModel):
    object: Literal["organization.usage.audio_transcriptions.result"] = (
        "organization.usage.audio_transcriptions.result"
    )
    seconds: int
    num_model_requests: int
    # keyplane's own addition: the tokens of a model priced by them (gpt-4o-transcribe, whose
    # seconds are 0: its answer reports tokens, not a duration; 0 for whisper-1). An SDK reading
    # OpenAI's shape ignores them.
    input_tokens: int = 0
    output_tokens: int = 0
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None


class AudioSpeechesResult(BaseModel):
    object: Literal["organization.usage.audio_speeches.result"] = (
        "organization.usage.audio_speeches.result"
    )
    characters: int
    num_model_requests: int
    project_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None
    model: str | None = None


USAGE_GROUPS = frozenset({"project_id", "user_id", "api_key_id", "model", "batch"})


class UsageQuery:
    """The query both usage endpoints take (OpenAI's), as one dependency."""

    def __init__(
        self,
        request: Request,
        start_time: Time,
        end_time: EndTime = None,
        bucket_width: Width = "1d",
        limit: Annotated[int | None, Query(ge=1, le=1440)] = None,
        page: PageCursor = None,
        group_by: Annotated[list[UsageGroup], Query(alias="group_by[]")] = [],  # noqa: B006
        project_ids: Annotated[Ids, Query(alias="project_ids[]")] = [],  # noqa: B006
        user_ids: Annotated[Ids, Query(alias="user_ids[]")] = [],  # noqa: B006
        api_key_ids: Annotated[Ids, Query(alias="api_key_ids[]")] = [],  # noqa: B006
        models: Annotated[Ids, Query(alias="models[]")] = [],  # noqa: B006
    ) -> None:
        self.start, self.end, self.width, self.limit, self.page = (
            start_time,
            end_time,
            bucket_width,
            limit,
            page,
        )
        self.groups = list(dict.fromkeys(listed(request, "group_by", group_by)))
        self.project_ids = listed(request, "project_ids", project_ids)
        self.user_ids = listed(request, "user_ids", user_ids)
        self.api_key_ids = listed(request, "api_key_ids", api_key_ids)
        self.models = listed(request, "models", models)


Usage = Annotated[UsageQuery, Depends()]


async def _usage(
    ctx: Ctx, org_id: str, q: UsageQuery, endpoints: Sequence[str], none: bool,
    alike: frozenset[str],
) -> tuple[list[UsageBucket], int, int, bool]:  # fmt: skip
    """``none``: the filters keep usage keyplane never has; ``alike``: groups every result of the
    endpoint shares a value of, which the results name themselves."""
    now = ctx.services.clock.now()
    begin, stop, more = window(q.start, q.end, q.width, q.limit, q.page, now, MAX_BUCKETS[q.width])
    unknown = [g for g in q.groups if g not in USAGE_GROUPS | alike]
    if unknown:
        raise InvalidRequest(f"Cannot group by {unknown[0]!r}.", param="group_by")
    stored = [
        {"api_key_id": "key_id", "user_id": "owner_id"}.get(g, g)
        for g in q.groups
        if g not in alike | {"batch"}
    ]
    rows: Sequence[UsageBucket] = []
    if not none:
        rows = await asyncio.to_thread(
            ctx.services.usage_store.buckets, org_id, start=begin, end=stop,
            width_s=WIDTH_S[q.width], endpoints=endpoints, group_by=stored,
            project_ids=q.project_ids, key_ids=q.api_key_ids, models=q.models,
            owner_ids=q.user_ids,
        )  # fmt: skip
    bounded(rows)
    return list(rows), begin, stop, more


def _grouped(r: UsageBucket) -> dict[str, Any]:
    """The fields a usage result is grouped by (None where it is not)."""
    return {"project_id": r.project_id, "api_key_id": r.key_id, "model": r.model,
            "user_id": r.owner_id}  # fmt: skip


M = TypeVar("M", bound=BaseModel)


async def _usage_page(
    ctx: Ctx, org_id: str, q: UsageQuery, endpoints: Sequence[str], result: type[M],
    make: Callable[[UsageBucket], M], none: bool = False, alike: frozenset[str] = frozenset(),
) -> Response:  # fmt: skip
    """A page of usage buckets of ``endpoints``, each result made by ``make`` (``_usage`` says
    what ``none`` and ``alike`` are)."""
    rows, begin, stop, more = await _usage(ctx, org_id, q, endpoints, none, alike)
    w = WIDTH_S[q.width]
    return await json_page(lambda: bucket_page(rows, begin, stop, w, more, result, make))


@router.get(
    "/usage/completions", tags=["usage"], name="usage.completions",
    response_model=BucketPage[CompletionsResult],
)  # fmt: skip
async def completions_usage(
    ctx: Ctx, principal: Allowed, q: Usage, batch: bool | None = None
) -> Response:
    """Tokens and requests of chat and legacy completions and the Responses API per time bucket
    (list parameters may be sent with or without ``[]``), as OpenAI counts them."""
    endpoints = ("chat.completions", "completions", "responses")
    batched = False if "batch" in q.groups else None
    return await _usage_page(
        ctx, principal.org_id, q, endpoints, CompletionsResult,
        lambda r: CompletionsResult(
            input_tokens=r.input_tokens, output_tokens=r.output_tokens,
            input_cached_tokens=r.cached_input_tokens, input_audio_tokens=r.input_audio_tokens,
            output_audio_tokens=r.output_audio_tokens, num_model_requests=r.requests,
            batch=batched, **_grouped(r),
        ),
        none=batch is True,  # (keyplane runs no batches: their usage is none)
    )  # fmt: skip


@router.get(
    "/usage/embeddings", tags=["usage"], name="usage.embeddings",
    response_model=BucketPage[EmbeddingsResult],
)  # fmt: skip
async def embeddings_usage(ctx: Ctx, principal: Allowed, q: Usage) -> Response:
    """Tokens and requests of embeddings per time bucket."""
    return await _usage_page(
        ctx, principal.org_id, q, ("embeddings",), EmbeddingsResult,
        lambda r: EmbeddingsResult(
            input_tokens=r.input_tokens, num_model_requests=r.requests, **_grouped(r)
        ),
    )  # fmt: skip


@router.get(
    "/usage/moderations", tags=["usage"], name="usage.moderations",
    response_model=BucketPage[ModerationsResult],
)  # fmt: skip
async def moderations_usage(ctx: Ctx, principal: Allowed, q: Usage) -> Response:
    """Tokens and requests of moderations per time bucket."""
    return await _usage_page(
        ctx, principal.org_id, q, ("moderations",), ModerationsResult,
        lambda r: ModerationsResult(
            input_tokens=r.input_tokens, num_model_requests=r.requests, **_grouped(r)
        ),
    )  # fmt: skip


# OpenAI's image sources, and the endpoints whose usage records they are.
IMAGE_SOURCES = {
    "image.generation": "images.generations", "image.edit": "images.edits",
    "image.variation": "images.variations",
}  # fmt: skip


@router.get(
    "/usage/images", tags=["usage"], name="usage.images", response_model=BucketPage[ImagesResult]
)
async def images_usage(
    ctx: Ctx,
    principal: Allowed,
    request: Request,
    q: Usage,
    sources: Annotated[Ids, Query(alias="sources[]")] = [],  # noqa: B006
    sizes: Annotated[Ids, Query(alias="sizes[]")] = [],  # noqa: B006
) -> Response:
    """Images generated, edited or varied, and requests, per time bucket (``source``:
    ``image.generation``, ``image.edit``, ``image.variation``). keyplane does not record the
    images' sizes: grouping or filtering by size is refused."""
    wanted = listed(request, "sources", sources)
    if any(s not in IMAGE_SOURCES for s in wanted):
        raise InvalidRequest(f"sources are among {', '.join(IMAGE_SOURCES)}.", param="sources")
    if "size" in q.groups or listed(request, "sizes", sizes):
        param = "sizes" if "size" not in q.groups else "group_by"
        raise InvalidRequest("keyplane does not record the sizes of images.", param=param)
    chosen = [s for s in IMAGE_SOURCES if not wanted or s in wanted]
    alike = frozenset({"source"})
    if "source" not in q.groups:
        return await _usage_page(
            ctx, principal.org_id, q, [IMAGE_SOURCES[s] for s in chosen], ImagesResult,
            lambda r: _image_result(r, None), alike=alike,
        )  # fmt: skip
    # By source: a query a source, as the usage store groups by the records' own fields only.
    pairs: list[tuple[UsageBucket, str]] = []
    begin, stop, more = 0, 0, False
    for name in chosen:
        found, begin, stop, more = await _usage(
            ctx, principal.org_id, q, (IMAGE_SOURCES[name],), False, alike
        )
        pairs += [(r, name) for r in found]
    pairs.sort(key=lambda pair: pair[0].start)  # (stable: a bucket's sources in OpenAI's order)
    rows = [r for r, _ in pairs]
    bounded(rows)
    source_of = {id(r): name for r, name in pairs}
    w = WIDTH_S[q.width]
    return await json_page(
        lambda: bucket_page(
            rows, begin, stop, w, more, ImagesResult, lambda r: _image_result(r, source_of[id(r)])
        )
    )


def _image_result(r: UsageBucket, source: str | None) -> ImagesResult:
    return ImagesResult(
        images=r.images, num_model_requests=r.requests, input_tokens=r.input_tokens,
        output_tokens=r.output_tokens, source=source, **_grouped(r),
    )  # fmt: skip


@router.get(
    "/usage/audio_transcriptions", tags=["usage"], name="usage.audio_transcriptions",
    response_model=BucketPage[AudioTranscriptionsResult],
)  # fmt: skip
async def audio_transcriptions_usage(ctx: Ctx, principal: Allowed, q: Usage) -> Response:
    """Seconds of audio transcribed or translated (tokens, on a model priced by them), and
    requests, per time bucket."""
    return await _usage_page(
        ctx, principal.org_id, q, ("audio.transcriptions", "audio.translations"),
        AudioTranscriptionsResult,
        lambda r: AudioTranscriptionsResult(
            seconds=r.audio_seconds, num_model_requests=r.requests, input_tokens=r.input_tokens,
            output_tokens=r.output_tokens, **_grouped(r),
        ),
    )  # fmt: skip


@router.get(
    "/usage/audio_speeches", tags=["usage"], name="usage.audio_speeches",
    response_model=BucketPage[AudioSpeechesResult],
)  # fmt: skip
async def audio_speeches_usage(ctx: Ctx, principal: Allowed, q: Usage) -> Response:
    """Characters of text spoken (text to speech), and requests, per time bucket."""
    return await _usage_page(
        ctx, principal.org_id, q, ("audio.speech",), AudioSpeechesResult,
        lambda r: AudioSpeechesResult(
            characters=r.characters, num_model_requests=r.requests, **_grouped(r)
        ),
    )  # fmt: skip
