"""Admin API for credits: the balance and the credit grants (every lot: grants and purchases).

Scoped, threaded and applied to the gateway as every money route is (``keyplane.web.money``).
"""

from __future__ import annotations

import asyncio

from keyplane.billing.wallet import Lot
from keyplane.errors import Conflict, NotFound
from keyplane.gateway.errors import ApiError
from keyplane.web.auth import Admin, AdminServices, Ctx
from keyplane.web.authz import Audit, admin_router
from keyplane.web.errors import AdminApiError, params_named
from keyplane.web.money import applied
from keyplane.web.params import After, IdempotencyKey, Limit
from keyplane.web.schemas import (
    CreditBalance,
    CreditGrant,
    CreditGrantCreate,
    ErrorEnvelope,
    ListPage,
    page,
)

router = admin_router()


def _grants(s: AdminServices, org_id: str) -> list[CreditGrant]:
    return [CreditGrant.of(lot, note) for lot, note in s.money_store.lots(org_id)]


def _grant(s: AdminServices, org_id: str, grant_id: str) -> CreditGrant:
    found = next((g for g in _grants(s, org_id) if g.id == grant_id), None)
    if found is None:
        raise NotFound(f"No credit grant '{grant_id}'.", param="grant_id")
    return found


@router.get("/credit_balance", tags=["credits"], name="credit_balance.retrieve")
async def get_credit_balance(ctx: Ctx, caller: Admin) -> CreditBalance:
    """Available credit (live lots minus holds), open holds, all-time settled spend, every lot."""
    b = await asyncio.to_thread(ctx.services.billing.balance, caller.org_id)
    return CreditBalance(
        available_micro_usd=b.available,
        held_micro_usd=b.held,
        spent_micro_usd=b.spent,
        lots=[CreditGrant.of(lot, note) for lot, note in b.lots],
    )


@router.get("/credit_grants", tags=["credits"], name="credit_grants.list")
async def list_credit_grants(
    ctx: Ctx, caller: Admin, limit: Limit = 20, after: After = None
) -> ListPage[CreditGrant]:
    """Every credit lot, grants and purchases, oldest first."""
    grants = await asyncio.to_thread(_grants, ctx.services, caller.org_id)
    return page(grants, lambda g: g.id, limit=limit, after=after)


@router.post(
    "/credit_grants",
    tags=["credits"],
    name="credit_grants.create",
    responses={409: {"description": "Idempotency-Key reused", "model": ErrorEnvelope}},
)
async def create_credit_grant(
    ctx: Ctx,
    caller: Admin,
    audit: Audit,
    body: CreditGrantCreate,
    idempotency_key: IdempotencyKey = None,
) -> CreditGrant:
    """Adds a credit lot. A replay with the same Idempotency-Key answers 200 with the same grant."""
    names = {"amount": "amount_micro_usd", "expires_in": "expires_in_seconds"}

    def audited(lot: Lot) -> None:  # once, not again on a replay
        data = CreditGrant.of(lot, body.note).model_dump(
            include={"amount_micro_usd", "expires_at", "note"}
        )
        audit("credit_grant.created", target_id=lot.id, details={"data": data})

    def add() -> Lot:
        # The Idempotency-Key's claim, the lot and its entry: one transaction.
        with audit.atomic():
            return ctx.services.billing.grant(
                caller.org_id,
                body.amount_micro_usd,
                expires_in_s=body.expires_in_seconds,
                note=body.note,
                idempotency_key=idempotency_key,
                on_created=audited,
            )

    try:
        with params_named(names):
            lot = await asyncio.to_thread(add)
    except Conflict as exc:  # the only conflict a grant has: a key reused with other parameters
        error = ApiError(409, exc.message, code="idempotency_key_reused", param="Idempotency-Key")
        raise AdminApiError(error) from None
    grant = CreditGrant.of(lot, body.note)
    await applied(ctx)
    return grant


@router.get("/credit_grants/{grant_id}", tags=["credits"], name="credit_grants.retrieve")
async def get_credit_grant(ctx: Ctx, caller: Admin, grant_id: str) -> CreditGrant:
    return await asyncio.to_thread(_grant, ctx.services, caller.org_id, grant_id)


@router.post("/credit_grants/{grant_id}/revoke", tags=["credits"], name="credit_grants.revoke")
async def revoke_credit_grant(ctx: Ctx, caller: Admin, audit: Audit, grant_id: str) -> CreditGrant:
    """Takes back what remains of a grant. Purchases are non-refundable (400)."""

    def revoke() -> CreditGrant:
        before = _grant(ctx.services, caller.org_id, grant_id)
        taken = {"remaining_micro_usd": before.remaining_micro_usd}
        with audit.atomic():
            ctx.services.billing.revoke_grant(caller.org_id, grant_id)
            audit("credit_grant.revoked", target_id=grant_id, details={"data": taken})
        return _grant(ctx.services, caller.org_id, grant_id)

    grant = await asyncio.to_thread(revoke)
    await applied(ctx)
    return grant
