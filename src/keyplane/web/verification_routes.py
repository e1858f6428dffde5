"""Admin API: organization verification ("Start verification", BRIEF C1). An Owner starts it;
an operator decides with ``keyplane orgs verify``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal, Protocol, cast

from pydantic import BaseModel, Field

from keyplane.accounts.verification import OrgVerification, OrgVerificationService
from keyplane.web.auth import Ctx
from keyplane.web.authz import Allowed, Audit, admin_router
from keyplane.web.schemas import Request

router = admin_router()


class VerificationServices(Protocol):
    @property
    def verification(self) -> OrgVerificationService: ...


class Verification(BaseModel):
    object: Literal["organization.verification"] = "organization.verification"
    status: Literal["unverified", "pending", "verified", "rejected"]
    required: bool = Field(description="Whether API keys can only be created once verified.")
    legal_name: str
    website: str
    requested_at: int | None
    decided_at: int | None
    note: str

    @classmethod
    def of(cls, v: OrgVerification, required: bool) -> Verification:
        return cls(
            status=v.status.value, required=required, legal_name=v.legal_name, website=v.website,
            requested_at=v.requested_at, decided_at=v.decided_at, note=v.note,
        )  # fmt: skip


class VerificationStart(Request):
    legal_name: Annotated[str, Field(min_length=2, max_length=200)]
    website: Annotated[str, Field(max_length=300)] = ""


def _service(ctx: Ctx) -> OrgVerificationService:
    return cast(VerificationServices, ctx.services).verification


@router.get("/verification", tags=["organization"], name="verification.retrieve")
async def get_verification(ctx: Ctx, principal: Allowed) -> Verification:
    service = _service(ctx)
    status = await asyncio.to_thread(service.status, principal.org_id)
    return Verification.of(status, service.required)


@router.post("/verification", tags=["organization"], name="verification.start")
async def start_verification(
    ctx: Ctx, principal: Allowed, audit: Audit, body: VerificationStart
) -> Verification:
    """Starts verification (Owners only); an operator approves or rejects it."""
    service = _service(ctx)

    def start() -> OrgVerification:
        with audit.atomic():
            record = service.start(
                principal.org_id,
                principal.user_id or "",
                legal_name=body.legal_name,
                website=body.website,
            )
            audit(
                "organization.verification_started",
                target_id=principal.org_id,
                details={"data": body.model_dump()},
            )
        return record

    return Verification.of(await asyncio.to_thread(start), service.required)
