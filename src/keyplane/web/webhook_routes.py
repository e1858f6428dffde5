"""Admin API: webhook endpoints (BRIEF C6, C7). The signing secret is answered once, at creation."""

from __future__ import annotations

import asyncio
from typing import Any, Literal, Protocol, cast, get_args

from pydantic import BaseModel, Field

from keyplane.notify.webhooks import EVENT_TYPES, WebhookEndpoint, Webhooks
from keyplane.web.auth import Admin, Ctx
from keyplane.web.authz import Audit, admin_router
from keyplane.web.schemas import Deleted, ListPage, Request, page

router = admin_router()

EventType = Literal[
    "spend_alert.triggered",
    "api_key.leaked",
    "billing.auto_recharge_failed",
    "billing.auto_recharge_disabled",
    "billing.low_balance",
    "billing.payment_refunded",
    "billing.payment_disputed",
    "organization.tier_promoted",
    "api_key.new_network",
    "api_key.spend_spike",
]
assert set(get_args(EventType)) == set(EVENT_TYPES)


class WebhookServices(Protocol):
    @property
    def webhooks(self) -> Webhooks: ...


class Webhook(BaseModel):
    object: Literal["webhook"] = "webhook"
    id: str
    url: str
    events: list[EventType]
    description: str
    created_at: int

    @classmethod
    def of(cls, e: WebhookEndpoint) -> Webhook:
        return cls(
            id=e.id, url=e.url, events=list(e.events),
            description=e.description, created_at=e.created_at,
        )  # fmt: skip


class WebhookCreated(Webhook):
    secret: str = Field(
        description="Signs each delivery (Keyplane-Signature: t=…,v1=HMAC-SHA-256 of "
        '"<t>.<body>"). Shown only now.'
    )


class WebhookCreate(Request):
    url: str = Field(max_length=2000, description="An http:// or https:// address.")
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    description: str = Field(default="", max_length=200)


def created_details(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The details of a ``webhook.created`` audit event (the dashboard's are the same)."""
    return {"data": Webhook.of(endpoint).model_dump(include={"url", "events", "description"})}


def deleted_details(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The details of a ``webhook.deleted`` audit event (the dashboard's are the same)."""
    return {"data": {"url": endpoint.url}}


def _service(ctx: Ctx) -> Webhooks:
    return cast(WebhookServices, ctx.services).webhooks


@router.get("/webhooks", tags=["webhooks"], name="webhooks.list")
async def list_webhooks(ctx: Ctx, caller: Admin) -> ListPage[Webhook]:
    found = await asyncio.to_thread(_service(ctx).endpoints, caller.org_id)
    return page([Webhook.of(e) for e in found], lambda w: w.id, limit=100, after=None)


@router.post("/webhooks", tags=["webhooks"], name="webhooks.create")
async def create_webhook(
    ctx: Ctx, caller: Admin, audit: Audit, body: WebhookCreate
) -> WebhookCreated:
    """Registers an endpoint for the chosen events; answers its signing secret, once."""

    def create() -> WebhookCreated:
        with audit.atomic():
            endpoint, secret = _service(ctx).create(
                caller.org_id, body.url, list(body.events), body.description
            )
            audit("webhook.created", target_id=endpoint.id, details=created_details(endpoint))
        return WebhookCreated(**Webhook.of(endpoint).model_dump(), secret=secret)

    return await asyncio.to_thread(create)


@router.delete("/webhooks/{webhook_id}", tags=["webhooks"], name="webhooks.delete")
async def delete_webhook(ctx: Ctx, caller: Admin, audit: Audit, webhook_id: str) -> Deleted:
    """Removes the endpoint; events not delivered to it yet are dropped."""

    def delete() -> Deleted:
        with audit.atomic():
            gone = _service(ctx).delete(caller.org_id, webhook_id)
            audit("webhook.deleted", target_id=gone.id, details=deleted_details(gone))
        return Deleted(object="webhook.deleted", id=gone.id, deleted=True)

    return await asyncio.to_thread(delete)
