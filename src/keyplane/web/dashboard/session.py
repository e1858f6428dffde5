"""Who is using the dashboard: the session cookie, the signed-in user and their organizations,
and the dependencies every dashboard route uses to require them.

For other pages::

    from keyplane.web.dashboard.session import CurrentMember

    @router.get("/keys")
    def keys_page(request: Request, viewer: CurrentMember) -> Response:
        org = viewer.org            # the organization the viewer is acting in
        role = viewer.role          # their OrgRole in it (viewer.role_in(org_id) for any other)
        ...
        return render(request, "keys.html", keys=...)

``CurrentMember`` redirects to the log-in page, the "verify your email" page or the profile page
until the user is signed in, verified and in an organization; ``CurrentUser`` only needs a
signed-in user. Every POST is checked for its CSRF token before the route runs (``csrf_guard``);
forms include ``<input type="hidden" name="csrf_token" value="{{ csrf_token }}">``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, cast
from urllib.parse import quote, urlsplit

from fastapi import Depends, Form, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from keyplane.accounts.auth_ports import Membership, WebSession
from keyplane.accounts.auth_services import AuthServices
from keyplane.accounts.models import Organization, OrgRole, User
from keyplane.accounts.orgs import OrgService
from keyplane.accounts.service import AccountService
from keyplane.audit.service import AuditService
from keyplane.billing.payments import PaymentService
from keyplane.billing.ports import MoneyStore
from keyplane.billing.promotion import TierPromoter
from keyplane.billing.service import BillingService
from keyplane.clock import Clock
from keyplane.config import Settings
from keyplane.errors import KeyplaneError
from keyplane.keys.service import KeyService
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Webhooks
from keyplane.usage.ports import UsageStore
from keyplane.web.dashboard import csrf

SESSION_COOKIE = "kp_session"
ORG_COOKIE = "kp_org"  # the organization chosen in the header (an id, not a secret)


class DashboardServices(Protocol):
    """What the dashboard uses from the composition root (``bootstrap.Container`` is one)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def orgs(self) -> OrgService: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def audit(self) -> AuditService: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def usage_store(self) -> UsageStore: ...

    @property
    def keys(self) -> KeyService: ...

    @property
    def billing(self) -> BillingService: ...

    @property
    def promoter(self) -> TierPromoter: ...

    @property
    def money_store(self) -> MoneyStore: ...

    @property
    def accounts(self) -> AccountService: ...

    @property
    def payments(self) -> PaymentService: ...

    @property
    def webhooks(self) -> Webhooks: ...


@dataclass(frozen=True, slots=True)
class NavItem:
    label: str
    href: str


NAV: tuple[NavItem, ...] = (
    NavItem("API keys", "/api-keys"),
    NavItem("Projects", "/projects"),
    NavItem("Members", "/members"),
    NavItem("Admin keys", "/admin-keys"),  # (every member may read them: admin_api_keys.list)
    NavItem("Billing", "/billing"),
    NavItem("Limits", "/limits"),
    NavItem("Usage", "/usage"),
    NavItem("Audit log", "/audit-log"),
    NavItem("Webhooks", "/webhooks"),  # (every member may read them: POLICY's webhooks.list)
)


@dataclass(frozen=True, slots=True)
class DashboardContext:
    services: DashboardServices
    auth: AuthServices
    templates: Jinja2Templates
    csrf_key: bytes
    public_host: str = ""  # host[:port] of the public URL, also accepted as a form's Origin
    nav: tuple[NavItem, ...] = NAV


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in user of a request, with their organizations."""

    user: User
    session: WebSession
    memberships: Sequence[Membership]

    @property
    def verified(self) -> bool:
        return self.user.email_verified_at is not None

    @property
    def org(self) -> Organization | None:
        """The organization the dashboard acts in: the one chosen in the header's switcher (its
        membership comes first, see ``optional_viewer``), else the user's first."""
        return self.memberships[0].org if self.memberships else None

    @property
    def role(self) -> OrgRole | None:
        return self.memberships[0].role if self.memberships else None

    def role_in(self, org_id: str) -> OrgRole | None:
        for membership in self.memberships:
            if membership.org.id == org_id:
                return membership.role
        return None

    @property
    def session_ref(self) -> str:
        """A stable, non-secret name for the session (audit log ``actor_id``); never the id."""
        return "sess_" + self.session.id_hash[:20]


class Redirect(Exception):
    """Answered with 303 See Other to ``location`` (a path on this site)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def context(request: Request) -> DashboardContext:
    return cast(DashboardContext, request.app.state.dashboard)


def is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def client_ip(request: Request) -> str | None:
    # The socket peer, or the caller behind trusted proxies (keyplane.app.ForwardedClient).
    return request.client.host if request.client else None


def session_cookie(request: Request) -> str:
    return request.cookies.get(csrf.cookie_name(SESSION_COOKIE, is_secure(request)), "")


def set_session_cookie(request: Request, response: Response, session_id: str) -> None:
    """HttpOnly (no script reads it), SameSite=Lax (not sent on other sites' POSTs), Secure on
    HTTPS; no Max-Age, so it ends with the browser session (the server ends it earlier)."""
    secure = is_secure(request)
    response.set_cookie(
        csrf.cookie_name(SESSION_COOKIE, secure),
        session_id,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    secure = is_secure(request)
    response.delete_cookie(
        csrf.cookie_name(SESSION_COOKIE, secure),
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
    )


def csrf_binding(request: Request) -> str | None:
    """The value a form's token is bound to: the session cookie, else the anonymous cookie."""
    session_id = session_cookie(request)
    if session_id:
        return session_id
    anon: str | None = request.scope.get("state", {}).get("csrf_anon")
    return anon or request.cookies.get(csrf.cookie_name(csrf.ANON_COOKIE, is_secure(request)))


def csrf_token(request: Request) -> str:
    binding = csrf_binding(request)
    return csrf.token_for(context(request).csrf_key, binding) if binding else ""


async def csrf_guard(request: Request) -> None:
    """Runs before every route: a POST (or any unsafe method) needs a valid token."""
    if request.method in csrf.SAFE_METHODS:
        return
    if not csrf.same_origin(request, context(request).public_host):
        raise csrf.CsrfRejected()
    form = await request.form()
    token = form.get(csrf.FIELD)
    if not isinstance(token, str) or not csrf.is_valid(
        context(request).csrf_key, csrf_binding(request), token
    ):
        raise csrf.CsrfRejected()


def optional_viewer(request: Request) -> Viewer | None:
    cached = request.scope.get("state", {}).get("viewer")
    if cached is not None:
        return cast(Viewer, cached)
    auth = context(request).auth
    session = auth.login.session(session_cookie(request))
    if session is None:
        return None
    user = auth.signup.user(session.user_id)
    if user is None:
        return None
    memberships = list(auth.signup.memberships(user.id))
    chosen = request.cookies.get(ORG_COOKIE)
    # (only an organization the user is a member of can be chosen: the cookie grants nothing)
    memberships.sort(key=lambda m: m.org.id != chosen)
    viewer = Viewer(user, session, memberships)
    request.state.viewer = viewer
    return viewer


def form_error(exc: Exception) -> str:
    """What a form's page says of a value refused: a domain error's message, or a parser's."""
    return exc.message if isinstance(exc, KeyplaneError) else str(exc)


def same_org(viewer: Viewer, form_org_id: str) -> None:
    """Refuses a form made for another organization than the one the dashboard now acts in (the
    organization was switched in another tab since the page was shown): it would change the
    wrong one."""
    org = viewer.org
    if org is None or form_org_id != org.id:
        raise HTTPException(
            409, "This page was shown for another organization (switched in another tab since): "
            "nothing was changed. Reload it and try again.",
        )  # fmt: skip


def signed_in(request: Request) -> Viewer:
    viewer = optional_viewer(request)
    if viewer is None:
        raise Redirect(login_url(request))
    return viewer


def active_member(request: Request) -> Viewer:
    viewer = signed_in(request)
    if not viewer.verified:
        raise Redirect("/verify/pending")
    if not viewer.user.name or viewer.org is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        here = target if request.method in csrf.SAFE_METHODS else "/"
        raise Redirect("/profile" if here == "/" else f"/profile?next={quote(here, safe='')}")
    return viewer


CurrentUser = Annotated[Viewer, Depends(signed_in)]
CurrentMember = Annotated[Viewer, Depends(active_member)]
MaybeViewer = Annotated[Viewer | None, Depends(optional_viewer)]
Field = Annotated[str, Form()]  # a form's text field


def login_url(request: Request) -> str:
    """The log-in page, then back here: to this page, or for a form sent once the session had
    ended, to the page the form was on (its Referer, same site only; a form's own address
    answers POST only)."""
    if request.method in csrf.SAFE_METHODS:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:
        referer = urlsplit(request.headers.get("referer", ""))
        ours = referer.netloc.lower() in (request.headers.get("host", "").lower(), "")
        path = referer.path + (f"?{referer.query}" if referer.query else "")
        target = safe_next(path) if ours and referer.path != request.url.path else "/"
    return "/login" if target == "/" else f"/login?next={quote(target, safe='')}"


def safe_next(value: str | None) -> str:
    """Only a path on this site: never ``//host`` or ``https://host`` (open redirects)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 0x20 for c in value):
        return "/"
    return value


def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    viewer: Viewer | None = None,
    **values: Any,
) -> Response:
    ctx = context(request)
    token = csrf_token(request)
    return ctx.templates.TemplateResponse(
        request,
        template,
        {
            "viewer": viewer
            if viewer is not None
            else request.scope.get("state", {}).get("viewer"),
            "csrf_token": token,
            "nav": ctx.nav,
            **values,
        },
        status_code=status,
    )
