"""The one ASGI app keyplane serves: the Admin API under /v1/organization, the gateway elsewhere.

The gateway stays a pure ASGI app (no framework middleware on the hot path); only Admin API
requests go through FastAPI.
"""

from __future__ import annotations

from keyplane.gateway.asgi import ASGIApp, Receive, Scope, Send

ADMIN_PREFIXES = ("/v1/organization", "/openapi.json", "/docs")


class KeyplaneApp:
    def __init__(self, gateway: ASGIApp, admin: ASGIApp) -> None:
        self.gateway = gateway
        self.admin = admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(ADMIN_PREFIXES):
            await self.admin(scope, receive, send)
        else:  # the gateway also owns the lifespan (its background loops)
            await self.gateway(scope, receive, send)
