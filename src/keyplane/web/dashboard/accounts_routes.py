"""The account pages: sign up, verify, profile, log in (with the two-factor step), log out, password
reset, and account security (TOTP and recovery codes). Each route parses a form, calls one service
method and renders a page; domain errors become the page's error message."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import segno
from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from keyplane.accounts.auth_ports import TokenPurpose
from keyplane.accounts.invitations import INVITE_PATH
from keyplane.accounts.sessions import InvalidCredentials, InvalidSecondFactor, SignInExpired
from keyplane.accounts.signup import TokenRefused
from keyplane.accounts.throttle import LoginThrottled
from keyplane.errors import InvalidRequest
from keyplane.web.dashboard.notices import account_changed, session_actor
from keyplane.web.dashboard.session import (
    ORG_COOKIE,
    CurrentMember,
    CurrentUser,
    Field,
    MaybeViewer,
    Redirect,
    clear_session_cookie,
    client_ip,
    context,
    is_secure,
    render,
    safe_next,
    session_cookie,
    set_session_cookie,
)

router = APIRouter()


def _user_agent(request: Request) -> str:
    return request.headers.get("user-agent", "")


def _signed_in_redirect(request: Request, location: str, session_id: str) -> Response:
    response = RedirectResponse(location, status_code=303)
    set_session_cookie(request, response, session_id)
    return response


def _throttled(response: Response, exc: LoginThrottled) -> Response:
    """``response`` (a page with status 429 showing ``exc``) telling when to try again."""
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


@router.get("/")
def home(request: Request, viewer: CurrentMember) -> Response:
    return render(request, "home.html", viewer=viewer)


@router.post("/organization")
def switch_organization(request: Request, viewer: CurrentUser, org_id: Field = "") -> Response:
    """The header's switcher: the dashboard acts in ``org_id`` from now on (a member's only)."""
    if viewer.role_in(org_id) is None:
        raise Redirect("/")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        ORG_COOKIE, org_id, path="/", httponly=True, samesite="lax", secure=is_secure(request)
    )
    return response


# -- sign up and verify ---------------------------------------------------------------------------
@router.get("/signup")
def signup_page(
    request: Request, viewer: MaybeViewer, email: str = "", next: str = "/"
) -> Response:
    if viewer is not None:
        raise Redirect(safe_next(next))
    return render(request, "signup.html", email=email, next=safe_next(next))


@router.post("/signup")
def signup(
    request: Request, email: Field = "", password: Field = "", next: Field = "/"
) -> Response:
    after = safe_next(next)
    try:
        context(request).auth.signup.sign_up(email, password, client_ip=client_ip(request))
    except LoginThrottled as exc:
        page = render(
            request, "signup.html", status=429, error=exc.message, email=email, next=after
        )
        return _throttled(page, exc)
    except InvalidRequest as exc:
        return render(
            request, "signup.html", status=400, error=exc.message, email=email, next=after
        )
    # The same page whether the address was new or taken: nothing to learn about who has one.
    # (From an invitation: logging in leads back to it, and accepting verifies the address.)
    login_url = "/login" if after == "/" else f"/login?next={quote(after, safe='')}"
    return render(
        request, "check_email.html", email=email.strip(), purpose="verify",
        invited=after.startswith(INVITE_PATH), login_url=login_url,
    )  # fmt: skip


@router.get("/verify")
def verify_page(request: Request, token: str = "") -> Response:
    try:
        context(request).auth.signup.check_token(TokenPurpose.VERIFY_EMAIL, token)
    except TokenRefused as exc:
        return render(request, "verify.html", status=400, error=exc.message)
    # A button, not an automatic verification: mail scanners that open links must not use them.
    return render(request, "verify.html", token=token)


@router.post("/verify")
def verify(request: Request, viewer: MaybeViewer, token: Field = "") -> Response:
    try:
        context(request).auth.signup.verify_email(token)
    except TokenRefused as exc:
        return render(request, "verify.html", status=400, error=exc.message)
    return render(request, "verify.html", verified=True, signed_in=viewer is not None)


@router.get("/verify/pending")
def verify_pending(request: Request, viewer: CurrentUser) -> Response:
    if viewer.verified:
        raise Redirect("/")
    return render(request, "verify_pending.html")


@router.post("/verify/resend")
def verify_resend(request: Request, viewer: CurrentUser) -> Response:
    if viewer.verified:
        raise Redirect("/")
    try:
        sent = context(request).auth.signup.resend_verification(
            viewer.user.id, client_ip=client_ip(request)
        )
    except LoginThrottled as exc:
        return _throttled(
            render(request, "verify_pending.html", status=429, error=exc.message), exc
        )
    notice = (
        "We sent a new link." if sent else "We sent one less than a minute ago: check your inbox."
    )
    return render(request, "verify_pending.html", notice=notice)


# -- profile ------------------------------------------------------------------------------------
@router.get("/profile")
def profile_page(request: Request, viewer: CurrentUser, next: str = "/") -> Response:
    if not viewer.verified:
        raise Redirect("/verify/pending")
    profile = context(request).auth.signup.profile(viewer.user.id)
    return render(
        request, "profile.html", profile=profile, name=viewer.user.name, next=safe_next(next)
    )


@router.post("/profile")
def profile(
    request: Request, viewer: CurrentUser, name: Field = "", org_name: Field = "", next: Field = "/"
) -> Response:
    signup = context(request).auth.signup
    actor = session_actor(request, viewer.user, viewer.session_ref)
    try:
        signup.complete_profile(viewer.user.id, name=name, org_name=org_name, actor=actor)
    except InvalidRequest as exc:  # EmailNotVerified too
        return render(
            request, "profile.html", status=400, error=exc.message,
            profile=signup.profile(viewer.user.id), name=name, org_name=org_name,
            next=safe_next(next),
        )  # fmt: skip
    raise Redirect(safe_next(next))


# -- log in and out -----------------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, viewer: MaybeViewer, next: str = "/") -> Response:
    if viewer is not None:
        raise Redirect(safe_next(next))
    return render(request, "login.html", next=safe_next(next))


@router.post("/login")
def login(request: Request, email: Field = "", password: Field = "", next: Field = "/") -> Response:
    auth = context(request).auth
    target = safe_next(next)
    try:
        sign_in = auth.login.log_in(
            email, password, client_ip=client_ip(request), user_agent=_user_agent(request)
        )
    except LoginThrottled as exc:
        page = render(
            request, "login.html", status=429, error=exc.message, email=email, next=target
        )
        return _throttled(page, exc)
    except InvalidCredentials as exc:
        return render(
            request, "login.html", status=401, error=exc.message, email=email, next=target
        )
    # Whatever session this browser had ends here.
    auth.login.log_out(
        session_cookie(request), client_ip=client_ip(request), user_agent=_user_agent(request)
    )
    if sign_in.needs_second_factor:
        target = f"/login/totp?next={quote(target, safe='')}"
    return _signed_in_redirect(request, target, sign_in.session_id)


@router.get("/login/totp")
def totp_page(request: Request, next: str = "/") -> Response:
    if context(request).auth.login.session(session_cookie(request), pending=True) is None:
        raise Redirect("/login")
    return render(request, "login_totp.html", next=safe_next(next))


@router.post("/login/totp")
def totp(request: Request, code: Field = "", next: Field = "/") -> Response:
    auth = context(request).auth
    target = safe_next(next)
    try:
        sign_in = auth.login.complete_second_factor(
            session_cookie(request), code,
            client_ip=client_ip(request), user_agent=_user_agent(request),
        )  # fmt: skip
    except SignInExpired as exc:
        response = render(request, "login.html", status=400, error=exc.message, next=target)
        clear_session_cookie(request, response)
        return response
    except LoginThrottled as exc:
        page = render(request, "login_totp.html", status=429, error=exc.message, next=target)
        return _throttled(page, exc)
    except InvalidSecondFactor as exc:
        return render(request, "login_totp.html", status=401, error=exc.message, next=target)
    return _signed_in_redirect(request, target, sign_in.session_id)


@router.get("/logout")
def logout_page(request: Request, viewer: MaybeViewer) -> Response:
    return render(request, "logout.html")


@router.post("/logout")
def logout(request: Request) -> Response:
    context(request).auth.login.log_out(
        session_cookie(request), client_ip=client_ip(request), user_agent=_user_agent(request)
    )
    response = render(request, "logout.html", done=True, viewer=None)
    clear_session_cookie(request, response)
    return response


# -- password reset -----------------------------------------------------------------------------
@router.get("/password/forgot")
def forgot_page(request: Request) -> Response:
    return render(request, "forgot.html")


@router.post("/password/forgot")
def forgot(request: Request, email: Field = "") -> Response:
    auth = context(request).auth
    try:
        auth.login.throttle.reset_requested(client_ip(request))
        auth.signup.request_password_reset(email)
    except LoginThrottled as exc:
        page = render(request, "forgot.html", status=429, error=exc.message, email=email)
        return _throttled(page, exc)
    except InvalidRequest as exc:
        return render(request, "forgot.html", status=400, error=exc.message, email=email)
    return render(request, "check_email.html", email=email.strip(), purpose="reset")


@router.get("/password/reset")
def reset_page(request: Request, token: str = "") -> Response:
    try:
        context(request).auth.signup.check_token(TokenPurpose.RESET_PASSWORD, token)
    except TokenRefused as exc:
        return render(request, "reset.html", status=400, error=exc.message)
    return render(request, "reset.html", token=token)


@router.post("/password/reset")
def reset(request: Request, token: Field = "", password: Field = "") -> Response:
    ctx = context(request)
    auth = ctx.auth
    try:
        with ctx.services.audit.atomic():
            user = auth.signup.reset_password(token, password)
            account_changed(request, user, "user.password_changed")
    except TokenRefused as exc:
        return render(request, "reset.html", status=400, error=exc.message)
    except InvalidRequest as exc:
        return render(request, "reset.html", status=400, error=exc.message, token=token)
    auth.login.throttle.forget_account(user.email)  # the link proved the mailbox
    # Every session of the account ended, this browser's too.
    response = render(request, "reset.html", done=True, viewer=None)
    clear_session_cookie(request, response)
    return response


# -- account security: two-factor -----------------------------------------------------------------
def _security(
    request: Request, viewer: CurrentMember, *, status: int = 200, **values: Any
) -> Response:
    factor = context(request).auth.second_factor.status(viewer.user.id)
    return render(request, "security.html", status=status, viewer=viewer, factor=factor, **values)


@router.get("/account/security")
def security_page(request: Request, viewer: CurrentMember) -> Response:
    return _security(request, viewer)


def _qr(uri: str) -> str:
    """The setup's otpauth:// link as a QR code for a phone's camera (an SVG data: URI, which
    the pages' Content-Security-Policy allows as an image)."""
    return str(segno.make(uri, error="m").svg_data_uri(scale=5, border=2))


@router.post("/account/totp/setup")
def totp_setup(request: Request, viewer: CurrentMember, password: Field = "") -> Response:
    try:
        setup = context(request).auth.second_factor.begin_setup(viewer.user, password)
    except LoginThrottled as exc:
        return _throttled(_security(request, viewer, status=429, error=exc.message), exc)
    except InvalidRequest as exc:
        return _security(request, viewer, status=400, error=exc.message)
    return render(request, "totp_setup.html", viewer=viewer, setup=setup, qr=_qr(setup.uri))


@router.post("/account/totp/enable")
def totp_enable(
    request: Request, viewer: CurrentMember, setup_token: Field = "", code: Field = ""
) -> Response:
    ctx = context(request)
    second_factor = ctx.auth.second_factor
    try:
        with ctx.services.audit.atomic():
            codes = second_factor.enable(viewer.user.id, setup_token, code)
            account_changed(request, viewer.user, "user.two_factor_enabled", viewer.session_ref)
    except InvalidRequest as exc:
        if exc.param != "code":
            return _security(request, viewer, status=400, error=exc.message)
        setup = second_factor.resume_setup(viewer.user, setup_token)
        return render(
            request,
            "totp_setup.html",
            status=400,
            viewer=viewer,
            setup=setup,
            qr=_qr(setup.uri),
            error=exc.message,
        )
    return render(request, "recovery_codes.html", viewer=viewer, codes=codes, enabled=True)


@router.post("/account/totp/disable")
def totp_disable(request: Request, viewer: CurrentMember, password: Field = "") -> Response:
    ctx = context(request)
    try:
        # (A wrong password's attempt stays counted: the throttle writes it on its own.)
        with ctx.services.audit.atomic():
            ctx.auth.second_factor.disable(viewer.user.id, password)
            account_changed(request, viewer.user, "user.two_factor_disabled", viewer.session_ref)
    except LoginThrottled as exc:
        return _throttled(_security(request, viewer, status=429, error=exc.message), exc)
    except InvalidRequest as exc:
        return _security(request, viewer, status=400, error=exc.message)
    return _security(request, viewer, notice="Two-factor authentication is off.")


@router.post("/account/recovery-codes")
def recovery_codes(request: Request, viewer: CurrentMember, password: Field = "") -> Response:
    ctx = context(request)
    try:
        with ctx.services.audit.atomic():
            codes = ctx.auth.second_factor.regenerate_recovery_codes(viewer.user.id, password)
            account_changed(
                request, viewer.user, "user.recovery_codes_replaced", viewer.session_ref
            )
    except LoginThrottled as exc:
        return _throttled(_security(request, viewer, status=429, error=exc.message), exc)
    except InvalidRequest as exc:
        return _security(request, viewer, status=400, error=exc.message)
    return render(request, "recovery_codes.html", viewer=viewer, codes=codes)
