"""The Admin API app factory: one FastAPI app under ``/v1/organization``, one router per domain.

The app takes its services from the composition root (it builds none) and owns no background work;
the gateway that shares its process owns the lifespan (see ``keyplane.app.KeyplaneApp``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyplane import __version__
from keyplane.keys.models import ApiKey
from keyplane.web import (
    audit_routes,
    billing_settings_routes,
    cost_routes,
    credit_routes,
    docs_page,
    errors,
    leak_reports,
    limits_routes,
    org_routes,
    payment_routes,
    project_key_routes,
    project_routes,
    project_user_routes,
    service_account_routes,
    spend_routes,
    stripe_webhook,
    tool_usage_routes,
    usage_api_routes,
    verification_routes,
    webhook_routes,
)
from keyplane.web.auth import AdminContext, AdminServices, Authenticator

DESCRIPTION = (
    "Manage a keyplane organization with an admin key (`sk-kp-admin-…`). Shapes follow OpenAI's "
    "Administration API where OpenAI has one. Money is integer micro-dollars (`*_micro_usd`), "
    "except `threshold_amount` of spend limits and alerts, which is in cents as in OpenAI's API. "
    'Every error is `{"error": {"message", "type", "param", "code"}}`.'
)


class AdminApi(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """The generated document, minus FastAPI's 422: invalid input answers 400 in the envelope."""
        if self.openapi_schema is None:
            schema = get_openapi(
                title=self.title,
                version=self.version,
                description=self.description,
                routes=self.routes,
            )
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            self.openapi_schema = schema
        return self.openapi_schema


# The bodies others send, whose size keyplane does not choose.
LARGER_BODIES = {
    leak_reports.PATH: leak_reports.MAX_BODY_BYTES,
    stripe_webhook.PATH: stripe_webhook.MAX_BODY_BYTES,
}


class BodySizeLimit:
    """Refuses request bodies over ``MAX_BODY_BYTES`` in the envelope (over ``LARGER_BODIES``'
    limit for a secret scanning report, up to a thousand matches, or a Stripe event): at once when the declared
    Content-Length says so, else as the bytes arrive (raised inside the route, so the error
    handlers answer it). FastAPI's own limit answers a declared size in plain text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = LARGER_BODIES.get(scope["path"], errors.MAX_BODY_BYTES)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await errors.respond(errors.too_large(limit))(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, detail=str(limit))
            return message

        await self.app(scope, limited, send)


def create_admin_app(
    services: AdminServices,
    *,
    auth: Authenticator,
    on_money_change: Callable[[], Awaitable[object]],
    leak_reporters: leak_reports.ReporterKeys | None = None,
    on_key_used: Callable[[ApiKey, str | None], None] = lambda key, client_ip: None,
) -> FastAPI:
    """Builds the Admin API over ``services`` (a ``bootstrap.Container``).

    ``auth`` is the gateway's key authenticator, so both share one key cache and its revocation
    feed; ``on_money_change`` is the gateway's money refresh, awaited after every money change;
    ``leak_reporters`` are the keys that sign secret scanning reports (none: no reports taken)."""
    app = AdminApi(
        title="keyplane Admin API",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url=None,  # docs_page: Swagger UI served from keyplane itself, under a strict CSP
        redoc_url=None,
    )
    app.state.admin = AdminContext(services, auth, on_money_change, on_key_used)
    app.state.leak_reporters = leak_reporters or leak_reports.ReporterKeys({}, "")
    errors.install(app)
    docs_page.install(app)
    app.add_middleware(BodySizeLimit)
    app.include_router(credit_routes.router)
    app.include_router(spend_routes.router)
    app.include_router(billing_settings_routes.router)
    app.include_router(payment_routes.router)
    app.include_router(org_routes.router)
    app.include_router(project_routes.router)
    app.include_router(project_key_routes.router)
    app.include_router(service_account_routes.router)
    app.include_router(project_user_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(limits_routes.router)
    app.include_router(verification_routes.router)
    app.include_router(usage_api_routes.router)
    app.include_router(tool_usage_routes.router)
    app.include_router(cost_routes.router)
    app.include_router(leak_reports.router)
    app.include_router(stripe_webhook.router)
    app.include_router(webhook_routes.router)
    return app
