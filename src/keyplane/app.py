"""The one ASGI app keyplane serves:

- ``/v1/organization…``, ``/openapi.json``, ``/docs``: the Admin API (FastAPI), and with it
  ``/v1/secret_scanning/reports`` (leaked keys reported by a secret scanning service) and
  ``/stripe/webhook`` (Stripe's signed events, with the stripe payment provider);
- ``/v1/…``, ``/healthz``, ``/readyz``, ``/metrics``: the gateway, a pure ASGI app (no framework middleware on
  the hot path), which also owns the lifespan (its background loops);
- everything else: the dashboard (server-rendered pages), when there is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from keyplane.gateway.asgi import ASGIApp, Receive, Scope, Send
from keyplane.keys import network

ADMIN_PREFIXES = (
    "/v1/organization", "/v1/secret_scanning", "/stripe/", "/openapi.json", "/docs",
)  # fmt: skip
GATEWAY_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics")


class Lazy:
    """An ASGI app built by ``factory`` on its first request, on a worker thread: building the
    Admin API or the dashboard (importing FastAPI and the templates, building the routes) took
    ~0.3 s on a quiet machine and over 1 s under load, and on the event loop every gateway request
    waited for it. Concurrent first requests share one build; a failed build is tried again by the
    next request.

    (The thread shares the GIL with the loop, so a busy gateway still slows down a little while it
    builds, in slices of ``sys.getswitchinterval()``, rather than stopping for the whole build.)"""

    def __init__(self, factory: Callable[[], ASGIApp]) -> None:
        self._factory = factory
        self._app: ASGIApp | None = None
        self._building: asyncio.Future[ASGIApp] | None = None

    @property
    def app(self) -> ASGIApp:
        """The app, built here and now if no request has built it yet."""
        if self._app is None:
            self._app = self._factory()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is None:
            app = await self._build()
        await app(scope, receive, send)

    async def _build(self) -> ASGIApp:
        building = self._building
        if building is None:
            building = asyncio.ensure_future(asyncio.to_thread(self._factory))
            self._building = building
        try:
            # (shielded: a first caller that goes away does not cancel the others' build)
            app = await asyncio.shield(building)
        except Exception:
            if self._building is building:
                self._building = None
            raise
        if self._app is None:
            self._app = app
        return self._app


def behind_proxies(app: ASGIApp, trusted_proxies: Sequence[str]) -> ASGIApp:
    """``app`` seeing the caller's address behind ``trusted_proxies`` (``ForwardedClient``), or
    ``app`` itself when there are none."""
    return ForwardedClient(app, trusted_proxies) if trusted_proxies else app


class ForwardedClient:
    """Behind trusted proxies, sets ``scope["client"]`` to the caller's address from
    ``X-Forwarded-For`` (walked right to left through ``trusted_proxies`` only), for the Admin API
    and the dashboard, which read ``request.client`` (admin keys' IP allowlists, the audit log,
    the sign-in throttle per network), and ``scope["scheme"]`` from ``X-Forwarded-Proto`` when
    the direct peer is a trusted proxy. The gateway works the address out itself, cached."""

    def __init__(self, app: ASGIApp, trusted_proxies: Sequence[str]) -> None:
        self.app = app
        self._trusted = network.parse_networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._trusted:
            peer = scope.get("client")
            peer_host = peer[0] if peer else None
            forwarded = network.forwarded_for(scope["headers"])
            if forwarded is not None:
                addr = network.client_address(peer_host, forwarded, self._trusted)
                scope = {**scope, "client": None if addr is None else (str(addr), 0)}
            proto = _forwarded_proto(scope["headers"])
            if proto is not None and network.allowed_nonempty(
                network.parse_address(peer_host), self._trusted
            ):
                scope = {**scope, "scheme": proto}
        await self.app(scope, receive, send)


def _forwarded_proto(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """``X-Forwarded-Proto`` as the nearest proxy set it (the last value): "https" behind a proxy
    that ends TLS, so that the dashboard's cookies are Secure and HSTS is sent."""
    values = [v for name, v in headers if name == b"x-forwarded-proto"]
    if not values:
        return None
    last = values[-1].split(b",")[-1].strip().lower()
    return last.decode() if last in (b"http", b"https") else None


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
