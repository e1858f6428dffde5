"""The one ASGI app keyplane serves:

- ``/v1/organization…``, ``/openapi.json``, ``/docs``: the Admin API (FastAPI), and with it
  ``/v1/secret_scanning/reports`` (leaked keys reported by a secret scanning service) and
  ``/stripe/webhook`` (Stripe's signed events, with the stripe payment provider);
- ``/v1/…``, ``/healthz``, ``/readyz``, ``/metrics``: the gateway, a pure ASGI app (no framework middleware on
  the hot path), which also owns the lifespan (its background loops);
- everything else: the dashboard (server-rendered pages), when there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyplane.gateway.asgi import ASGIApp, Receive, Scope, Send
from keyplane.keys import network

ADMIN_PREFIXES = (
    "/v1/organization", "/v1/secret_scanning", "/stripe/", "/openapi.json", "/docs",
)  # fmt: skip
GATEWAY_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics")


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
