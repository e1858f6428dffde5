"""Admin API for rate limits and usage tiers, in OpenAI's shapes where OpenAI has one:
``/v1/organization/projects/{id}/rate_limits`` (``project.rate_limit`` objects, ``rl-<model>``
ids; a project's limits can only be lowered) and ``/v1/organization/usage_tier`` (keyplane's: the
current tier and the progress toward the next, as the dashboard's "Increasing your limits" panel).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Literal, Protocol, cast

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from keyplane.accounts.service import AccountService
from keyplane.billing.promotion import TierPromoter
from keyplane.errors import NotFound, StoreUnavailable
from keyplane.limits.ratelimit import MAX_LIMIT, MAX_TOKEN_LIMIT, ModelLimits
from keyplane.limits.service import ProjectRateLimit, RateLimitService
from keyplane.web.auth import Admin, Ctx
from keyplane.web.authz import Audit, admin_router
from keyplane.web.schemas import ListPage, page

router = admin_router()
Limit = Annotated[int, Query(ge=1, le=100, description="Objects per page.")]
After = Annotated[
    str | None, Query(max_length=210, description="The last id of the previous page.")
]
Before = Annotated[
    str | None,
    Query(max_length=210, description="The first id of a page: the page before it is answered."),
]


class LimitServices(Protocol):
    @property
    def accounts(self) -> AccountService: ...

    @property
    def rate_limit_service(self) -> RateLimitService: ...

    @property
    def promoter(self) -> TierPromoter: ...


class RateLimit(BaseModel):
    """OpenAI's ``ProjectRateLimit``. Its requests and tokens per minute are integers on every
    model, the others "only present for relevant models": a model keyplane does not limit by
    requests or tokens a minute (an image or audio model's tokens) shows 0 there, not null."""

    object: Literal["project.rate_limit"] = "project.rate_limit"
    id: str
    model: str
    max_requests_per_1_minute: int
    max_tokens_per_1_minute: int
    max_requests_per_1_day: int | None
    max_images_per_1_minute: int | None
    max_audio_megabytes_per_1_minute: int | None

    @classmethod
    def of(cls, row: ProjectRateLimit) -> RateLimit:
        lim = row.limits
        return cls(
            id=row.id, model=row.model, max_requests_per_1_minute=lim.rpm or 0,
            max_tokens_per_1_minute=lim.tpm or 0,
            max_requests_per_1_day=lim.rpd, max_images_per_1_minute=lim.images_per_min,
            max_audio_megabytes_per_1_minute=lim.audio_mb_per_min,
        )  # fmt: skip


class RateLimitUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_requests_per_1_minute: int | None = Field(default=None, ge=1, le=MAX_LIMIT, strict=True)
    max_tokens_per_1_minute: int | None = Field(default=None, ge=1, le=MAX_TOKEN_LIMIT, strict=True)
    max_requests_per_1_day: int | None = Field(default=None, ge=1, le=MAX_LIMIT, strict=True)
    max_images_per_1_minute: int | None = Field(default=None, ge=1, le=MAX_LIMIT, strict=True)
    max_audio_megabytes_per_1_minute: int | None = Field(
        default=None, ge=1, le=MAX_LIMIT, strict=True
    )


class TierCriteria(BaseModel):
    tier: str
    name: str
    paid_needed_micro_usd: int
    paid_micro_usd: int = Field(
        description="Paid for credit so far, net of refunds and of disputes open or lost: what "
        "counts toward the tier."
    )
    paid_reversed_micro_usd: int = Field(
        description="What refunds and disputes took back of the credit purchases (not counted "
        "in paid_micro_usd). A tier reached stays: tiers never move down."
    )
    paid_met: bool
    days_needed: int
    days_passed: int
    days_met: bool
    days_met_at: int | None


class UsageTier(BaseModel):
    object: Literal["organization.usage_tier"] = "organization.usage_tier"
    tier: str
    name: str
    monthly_usage_limit_micro_usd: int
    next: TierCriteria | None


def _services(ctx: Ctx) -> LimitServices:
    return cast(LimitServices, ctx.services)


def _require_project(s: LimitServices, org_id: str, project_id: str) -> None:
    if not any(p.id == project_id for p in s.accounts.projects(org_id)):
        raise NotFound(f"No project '{project_id}' in this organization.", param="project_id")


@router.get(
    "/projects/{project_id}/rate_limits", tags=["rate limits"], name="project_rate_limits.list"
)
async def list_rate_limits(
    ctx: Ctx, caller: Admin, project_id: str, limit: Limit = 100, after: After = None,
    before: Before = None,
) -> ListPage[RateLimit]:  # fmt: skip
    """The project's effective per-model limits (the usage tier's, lowered by the project's), in
    pages: ``after`` the last id of one for the next, ``before`` the first id of one for the
    previous."""
    s = _services(ctx)

    def read() -> list[RateLimit]:
        _require_project(s, caller.org_id, project_id)
        return [
            RateLimit.of(r) for r in s.rate_limit_service.project_limits(caller.org_id, project_id)
        ]

    rows = await asyncio.to_thread(read)
    return page(rows, lambda r: r.id, limit=limit, after=after, before=before)


@router.post(
    "/projects/{project_id}/rate_limits/{rate_limit_id}",
    tags=["rate limits"],
    name="project_rate_limits.update",
)
async def update_rate_limit(
    ctx: Ctx,
    caller: Admin,
    audit: Audit,
    project_id: str,
    rate_limit_id: str,
    body: RateLimitUpdate,
) -> RateLimit:
    """Lowers the project's limits for one model; a value above the organization's is refused."""
    s = _services(ctx)
    limits = ModelLimits(
        rpm=body.max_requests_per_1_minute, tpm=body.max_tokens_per_1_minute, rpd=body.max_requests_per_1_day,
        images_per_min=body.max_images_per_1_minute, audio_mb_per_min=body.max_audio_megabytes_per_1_minute,
    )  # fmt: skip

    def write() -> RateLimit:
        _require_project(s, caller.org_id, project_id)
        with audit.atomic():
            row = s.rate_limit_service.set_project_limit(
                caller.org_id, project_id, rate_limit_id, limits
            )
            audit(
                "rate_limit.updated", target_id=row.id, project_id=project_id,
                details={"after": body.model_dump(exclude_none=True)},
            )  # fmt: skip
        return RateLimit.of(row)

    row = await asyncio.to_thread(write)
    # The gateway drops its cached overrides now; if it cannot, its own poll does shortly.
    with contextlib.suppress(StoreUnavailable):
        await ctx.on_money_change()
    return row


@router.get("/usage_tier", tags=["rate limits"], name="usage_tier.retrieve")
async def get_usage_tier(ctx: Ctx, caller: Admin) -> UsageTier:
    """The current usage tier, its monthly usage limit, and how far each criterion of the next is
    ("Once the following criteria are met, you'll automatically move to the next tier")."""
    s = _services(ctx)

    def read() -> UsageTier:
        s.promoter.check(caller.org_id)
        p = s.promoter.progress(caller.org_id)
        criteria = None
        if p.next is not None and p.paid is not None and p.days is not None:
            criteria = TierCriteria(
                tier=p.next.id, name=p.next.name, paid_needed_micro_usd=p.next.paid_micro_usd,
                paid_micro_usd=p.paid.paid_micro_usd,
                paid_reversed_micro_usd=p.paid.reversed_micro_usd, paid_met=p.paid.met,
                days_needed=p.next.days,
                days_passed=p.days.passed, days_met=p.days.met,
                days_met_at=None if p.days.met_at is None else int(p.days.met_at),
            )  # fmt: skip
        return UsageTier(
            tier=p.current.id, name=p.current.name,
            monthly_usage_limit_micro_usd=p.current.monthly_usage_limit_micro_usd, next=criteria,
        )  # fmt: skip

    return await asyncio.to_thread(read)
