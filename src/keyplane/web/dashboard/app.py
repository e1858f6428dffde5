"""The dashboard app factory: server-rendered pages (Jinja2), a stylesheet, no JavaScript build.

Every answer carries a strict Content-Security-Policy (no inline script or style, no framing),
``Referrer-Policy: same-origin`` (links in emails carry tokens in their query, so no other site
may see a Referer; ``no-referrer`` would also make browsers send ``Origin: null`` on our own form
posts, which the CSRF check refuses) and, for pages,
``Cache-Control: no-store`` (pages show secrets such as recovery codes once). Every visitor gets
an anonymous CSRF cookie on the first answer, so even the first form they submit is protected.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import cookie_parser
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyplane.accounts.auth_services import AuthServices
from keyplane.config import Settings
from keyplane.errors import KeyplaneError, StoreUnavailable
from keyplane.web.dashboard import (
    accounts_routes,
    admin_keys_routes,
    audit_routes,
    billing_history_routes,
    billing_methods_routes,
    billing_preferences_routes,
    billing_purchase_routes,
    billing_recharge_routes,
    billing_routes,
    csrf,
    invite_routes,
    keys_routes,
    limits_routes,
    members_routes,
    projects_routes,
    usage_routes,
    webhooks_routes,
)
from keyplane.web.dashboard.money import GLOBALS as MONEY
from keyplane.web.dashboard.session import (
    ORG_COOKIE,
    DashboardContext,
    DashboardServices,
    Redirect,
    csrf_guard,
    is_secure,
    optional_viewer,
    render,
    safe_next,
)

log = logging.getLogger("keyplane.dashboard")

MAX_BODY_BYTES = 64 * 1024  # forms are a few fields
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}
STATUS_TEXT = {
    400: "That request did not make sense.",
    404: "There is no page at this address.",
    405: "This page does not take that kind of request.",
    413: "That form is too large.",
}
TITLES = {
    400: "That did not work",
    403: "Request refused",
    404: "Page not found",
    405: "Not allowed",
    413: "Too large",
    503: "Temporarily unavailable",
}


async def _favicon() -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=301)


class DashboardGuard:
    """Pure ASGI (never buffers a response): security headers, the anonymous CSRF cookie, and a
    cap on request bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":  # a page's head is its GET's (the server drops the body)
            scope = {**scope, "method": "GET"}
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            await PlainTextResponse(STATUS_TEXT[413], status_code=413)(scope, receive, send)
            return
        secure = scope.get("scheme") == "https"
        name = csrf.cookie_name(csrf.ANON_COOKIE, secure)
        cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
        fresh = None if cookies.get(name) else csrf.new_anonymous_binding()
        if fresh is not None:
            scope.setdefault("state", {})["csrf_anon"] = fresh
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise HTTPException(413)
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    out.setdefault(key, value)
                if out.get("content-type", "").startswith("text/html"):
                    out.setdefault("cache-control", "no-store")
                if secure:
                    out.setdefault("strict-transport-security", "max-age=31536000")
                if fresh is not None:
                    cookie = f"{name}={fresh}; Path=/; HttpOnly; SameSite=Lax"
                    out.append("set-cookie", cookie + ("; Secure" if secure else ""))
            await send(message)

        await self.app(scope, limited, send_with_headers)


class OrgFromLink:
    """``GET /page?org=org_…``, as keyplane's emails link to a page, chooses that organization as
    the header's switcher does (a member's only) and redirects to ``/page`` without it: someone in
    several organizations lands on the one the email is about, and stays there as they browse.
    Signed out, the page's own redirect to the login keeps the parameter for afterwards."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if b"org=" not in query or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        chosen = [value for name, value in params if name == "org"]
        request = Request(scope)
        viewer = await run_in_threadpool(optional_viewer, request) if chosen else None
        if viewer is None:  # (or another parameter's name ends in "org")
            await self.app(scope, receive, send)
            return
        rest = urlencode([(name, value) for name, value in params if name != "org"])
        response = RedirectResponse(
            safe_next(scope["path"] + (f"?{rest}" if rest else "")), status_code=303
        )
        if viewer.role_in(chosen[-1]) is not None:
            response.set_cookie(
                ORG_COOKIE, chosen[-1], path="/", httponly=True, samesite="lax",
                secure=is_secure(request),
            )  # fmt: skip
        await response(scope, receive, send)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("keyplane.web.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["day"] = _day
    env.filters["moment"] = _moment
    env.filters["stamp"] = _stamp
    env.filters["amount"] = _amount
    env.globals.update(MONEY)  # (how every page shows money: one rule, in money.py)
    return Jinja2Templates(env=env)


def _amount(micros: int | None) -> str:
    """Whole cents as a form field holds them, to be saved again as they are: "1500.00" (never
    "1,500.00", which billing.amounts refuses); "" for none."""
    return "" if micros is None else f"{micros // 1_000_000}.{micros % 1_000_000 // 10_000:02d}"


def _moment(ts: int | None) -> str:
    """A time as the dashboard shows one: "Dec 6, 14:03:12" (UTC)."""
    if ts is None:
        return ""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return f"{when:%b} {when.day}, {when:%H:%M:%S}"


def _stamp(ts: int) -> str:
    """A date and time in full, as a receipt says it: "Dec 6, 2026, 14:03:12 UTC"."""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return f"{when:%b} {when.day}, {when.year}, {when:%H:%M:%S} UTC"


def _day(ts: int | None) -> str:
    """A date as the dashboard shows one: "Dec 6, 2026" (UTC)."""
    if ts is None:
        return ""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return f"{when:%b} {when.day}, {when.year}"


def _install_error_pages(app: FastAPI) -> None:
    def page(request: Request, status: int, message: str) -> Response:
        title = TITLES.get(status, "Something went wrong")
        return render(request, "error.html", status=status, title=title, message=message)

    async def redirect(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Redirect)
        return RedirectResponse(exc.location, status_code=303)

    async def csrf_rejected(request: Request, exc: Exception) -> Response:
        return page(
            request,
            403,
            "This form has expired or was sent from another site, so nothing was changed. "
            "Go back, reload the page and try again.",
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return page(request, exc.status_code, STATUS_TEXT.get(exc.status_code, exc.detail))

    async def invalid(request: Request, exc: Exception) -> Response:
        return page(request, 400, STATUS_TEXT[400])

    async def domain_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StoreUnavailable):
            return page(request, 503, "keyplane cannot reach its database right now; try again.")
        assert isinstance(exc, KeyplaneError)
        return page(request, 400, exc.message)

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("dashboard error", exc_info=exc)
        return PlainTextResponse("Something went wrong on our side.", status_code=500)

    handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
        Redirect: redirect,
        csrf.CsrfRejected: csrf_rejected,
        HTTPException: http_error,
        RequestValidationError: invalid,
        KeyplaneError: domain_error,
        Exception: crash,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)


def create_dashboard_app(
    services: DashboardServices, *, settings: Settings, auth: AuthServices
) -> FastAPI:
    """Builds the dashboard over ``services`` (a ``bootstrap.Container``) and the sign-in
    services; it builds none itself."""
    app = FastAPI(
        title="keyplane dashboard",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # No redirect to the path with(out) its final slash: its Location would be built from the
        # request's Host header, which anyone sets.
        redirect_slashes=False,
        # Every route of every router, present and future, checks CSRF before it runs.
        dependencies=[Depends(csrf_guard)],
    )
    csrf_key = hmac.new(
        settings.secret_bytes("encryption_key"), b"keyplane/dashboard-csrf/v1", hashlib.sha256
    ).digest()
    public_host = urlsplit(settings.public_url).netloc
    app.state.dashboard = DashboardContext(services, auth, _templates(), csrf_key, public_host)
    _install_error_pages(app)
    app.add_middleware(OrgFromLink)
    app.add_middleware(DashboardGuard)  # (outermost: its headers go on every answer)
    app.mount("/static", StaticFiles(packages=[("keyplane.web.dashboard", "static")]), "static")
    # Browsers ask for /favicon.ico on pages that name no icon (the Admin API's JSON, say).
    app.add_api_route("/favicon.ico", _favicon, methods=["GET"], include_in_schema=False)
    app.include_router(accounts_routes.router)
    app.include_router(invite_routes.router)
    app.include_router(keys_routes.router)
    app.include_router(usage_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(limits_routes.router)
    app.include_router(projects_routes.router)
    app.include_router(webhooks_routes.router)
    app.include_router(members_routes.router)
    app.include_router(admin_keys_routes.router)
    app.include_router(billing_routes.router)
    app.include_router(billing_recharge_routes.router)
    app.include_router(billing_purchase_routes.router)
    app.include_router(billing_methods_routes.router)
    app.include_router(billing_history_routes.router)
    app.include_router(billing_preferences_routes.router)
    return app
