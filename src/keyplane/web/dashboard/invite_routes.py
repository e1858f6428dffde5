"""The page an invitation email links to: who invited you where, and a button that joins.

Opening the link changes nothing (mail scanners fetch links); joining is a form post from the
signed-in account the invitation was sent to. Someone without an account is told to sign up with
that address first; the link works for 7 days, once."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from keyplane.accounts.invitations import INVITE_PATH
from keyplane.audit.models import Actor, ActorType
from keyplane.errors import InvalidRequest
from keyplane.web.dashboard.session import (
    ORG_COOKIE,
    CurrentUser,
    MaybeViewer,
    Viewer,
    client_ip,
    context,
    is_secure,
    render,
)

router = APIRouter()


def _actor(request: Request, viewer: Viewer) -> Actor:
    return Actor(
        ActorType.SESSION, viewer.session_ref, user_id=viewer.user.id, email=viewer.user.email,
        ip_address=client_ip(request), user_agent=request.headers.get("user-agent"),
    )  # fmt: skip


@router.get(INVITE_PATH)
def invite_page(request: Request, viewer: MaybeViewer, token: str = "") -> Response:
    orgs = context(request).services.orgs
    try:
        invite, org_name = orgs.invitation(token)
    except InvalidRequest as exc:
        return render(request, "invite.html", status=400, error=exc.message)
    # The projects it joins, said as accepting would do it: one archived since is skipped.
    named = [(orgs.project(invite.org_id, p.project_id), p.role) for p in invite.projects]
    joining = [(project.name, role.value) for project, role in named if project.archived_at is None]
    here = f"{INVITE_PATH}?token={quote(token, safe='')}"
    mismatch = viewer is not None and viewer.user.email.lower() != invite.email
    # Signing up from here comes back here: accepting then verifies the address (the link came to
    # it), and the new account joins this organization instead of being asked to make its own.
    signup_url = f"/signup?email={quote(invite.email, safe='')}&next={quote(here, safe='')}"
    return render(
        request, "invite.html", invite=invite, org_name=org_name, token=token,
        login_url=f"/login?next={quote(here, safe='')}", signup_url=signup_url, mismatch=mismatch,
        joining=joining,
    )  # fmt: skip


@router.post(INVITE_PATH)
def accept_invite(
    request: Request, viewer: CurrentUser, token: Annotated[str, Form()] = ""
) -> Response:
    ctx = context(request)
    try:
        invite, _ = ctx.services.orgs.invitation(token)
        ctx.services.orgs.accept_invite(_actor(request, viewer), token, viewer.user.id)
    except InvalidRequest as exc:
        return render(request, "invite.html", status=400, error=exc.message)
    # The token came to this address (accept_invite checked it is the account's): it is proven,
    # so an account signed up from the invitation does not need a second link to verify.
    ctx.auth.signup.address_proven(viewer.user.id)
    # The dashboard now acts in the organization just joined.
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        ORG_COOKIE, invite.org_id, path="/", httponly=True, samesite="lax",
        secure=is_secure(request),
    )  # fmt: skip
    return response
