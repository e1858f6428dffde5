"""The one ASGI app keyplane serves:

- ``/v1/organization…``, ``/openapi.json``, ``/docs``: the Admin API (FastAPI);
- ``/v1/…``, ``/healthz``, ``/readyz``: the gateway, a pure ASGI app (no framework middleware on
  the hot path), which also owns the lifespan (its background loops);
- everything else: the dashboard (server-rendered pages), when there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyplane.gateway.asgi import ASGIApp, Receive, Scope, Send
from keyplane.keys import network

ADMIN_PREFIXES = ("/v1/organization", "/openapi.json", "/docs")
GATEWAY_PREFIXES = ("/v1/", "/healthz", "/readyz")


class Lazy:
    """An ASGI app built by ``factory`` on its first request."""

    def __init__(self, factory: Callable[[], ASGIApp]) -> None:
        self._factory = factory
        self._app: ASGIApp | None = None

    @property
    def app(self) -> ASGIApp:
        if self._app is None:
            self._app = self._factory()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def behind_proxies(app: ASGIApp, trusted_proxies: Sequence[str]) -> ASGIApp:
    """``app`` seeing the caller's address behind ``trusted_proxies`` (``ForwardedClient``), or
    ``app`` itself when there are none."""
    return ForwardedClient(app, trusted_proxies) if trusted_proxies else app


class ForwardedClient:
    """Behind trusted proxies, sets ``scope["client"]`` to the caller's address from
    ``X-Forwarded-For`` (walked right to left through ``trusted_proxies`` only), for the Admin API
    and the dashboard, which read ``request.client`` (admin keys' IP allowlists, the audit log,
    the sign-in throttle per network). The gateway works the address out itself, cached."""

    def __init__(self, app: ASGIApp, trusted_proxies: Sequence[str]) -> None:
        self.app = app
        self._trusted = network.parse_networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        forwarded = network.forwarded_for(scope["headers"]) if self._trusted else None
        if forwarded is not None:
            peer = scope.get("client")
            addr = network.client_address(peer[0] if peer else None, forwarded, self._trusted)
            scope = {**scope, "client": None if addr is None else (str(addr), 0)}
        await self.app(scope, receive, send)


class KeyplaneApp:
    def __init__(self, gateway: ASGIApp, admin: ASGIApp, dashboard: ASGIApp | None = None) -> None:
        self.gateway = gateway
        self.admin = admin
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.gateway(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(ADMIN_PREFIXES):
            await self.admin(scope, receive, send)
        elif path.startswith(GATEWAY_PREFIXES) or self.dashboard is None:
            await self.gateway(scope, receive, send)
        else:
            await self.dashboard(scope, receive, send)
