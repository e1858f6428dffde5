"""The Members page (BRIEF C1; OpenAI's Settings → Members): the organization's members with their
role and when they joined, and the invitations not accepted yet. Every member sees it; Owners
invite people (one or more addresses, as Owner or Reader), change a member's role, remove a member
after a confirmation page (their keys here are revoked) and withdraw an invitation. Anyone leaves
the organization from it, after a confirmation page, unless they are its last Owner. An invitation
may name active projects (ticked on the form, with one project role for all), which the invitee
joins on accepting, as the Admin API's ``projects``.

Who may do what is the Admin API's rule (``POLICY``'s ``users.*`` and ``invites.*``), and every
change is an ``OrgService`` call, so it is refused (the last Owner) and audited (``user.updated``,
``user.deleted``, ``invite.sent``, ``invite.deleted``) exactly as the Admin API's; the invitation
email is the service's too."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

from keyplane.accounts.models import Organization, OrgRole
from keyplane.accounts.org_ports import Invite, InviteProject, InviteStatus, Member, ProjectRole
from keyplane.audit.models import AuditFilter
from keyplane.emails import normalize_email
from keyplane.errors import Conflict, InvalidRequest, NotFound
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.once import OnceForms
from keyplane.web.dashboard.session import (
    ORG_COOKIE,
    CurrentMember,
    Field,
    Redirect,
    Viewer,
    context,
    is_secure,
    render,
    same_org,
)
from keyplane.web.principal import Principal

router = APIRouter()
PATH = "/members"
MAX_INVITES = 20  # addresses in one invite form
ROLES = {"owner": OrgRole.OWNER, "reader": OrgRole.READER}
PROJECT_ROLES = {"member": ProjectRole.MEMBER, "owner": ProjectRole.OWNER}
Ticked = Annotated[list[str] | None, Form()]  # a form's checkboxes of one name, in page order
REFUSED = {
    "users.list": "Your role does not allow seeing this organization's members.",
    "users.update": "Only the organization's Owners change members' roles.",
    "users.delete": "Only the organization's Owners remove members.",
    "invites.create": "Only the organization's Owners invite members.",
    "invites.delete": "Only the organization's Owners withdraw invitations.",
}
# A form shown before someone else changed the same member or invitation (another tab, another
# Owner): said on the list, which shows how things are now, rather than as a missing page.
GONE_MEMBER = "That person is no longer a member of this organization: nothing was changed."
GONE_INVITE = "That invitation was withdrawn already: nothing was changed."
_SEPARATORS = re.compile(r"[\s,;]+")
_FORMS = OnceForms()  # the invite form's one-time ids: sent twice (a double click), it sends once


def _allowed(request: Request, viewer: Viewer, operation: str) -> Principal:
    principal = principal_of(request, viewer)
    if not may(request, principal, operation, None):
        raise HTTPException(403, REFUSED[operation])
    return principal


def _by_user(members: Sequence[Member]) -> dict[str, Member]:
    return {m.user.id: m for m in members}


def _list(request: Request, viewer: Viewer, *, status: int = 200, **values: object) -> Response:
    principal = _allowed(request, viewer, "users.list")
    orgs = context(request).services.orgs
    members = orgs.members(principal.org_id)
    now = orgs.now()
    waiting = [i for i in orgs.invites(principal.org_id) if i.accepted_at is None]
    projects = {p.id: p for p in orgs.projects(principal.org_id, include_archived=True)}
    return render(
        request, "members.html", status=status, viewer=viewer, members=members,
        invites=[(i, i.status(now) is InviteStatus.EXPIRED) for i in waiting], projects=projects,
        inviters=_by_user(members), me=principal.user_id,
        can_invite=may(request, principal, "invites.create", None),
        can_revoke=may(request, principal, "invites.delete", None),
        can_change=may(request, principal, "users.update", None),
        can_remove=may(request, principal, "users.delete", None), **values,
    )  # fmt: skip


def _done(request: Request, org_id: str, event: str, target_id: str) -> Mapping[str, Any] | None:
    """The details of this organization's recent ``event`` about ``target_id`` (a removal or a
    withdrawal just made), for the notice that says so; None if there is none."""
    audit = context(request).services.audit
    found = audit.query(org_id, AuditFilter(event_types=[event]), limit=20)
    return next((e.details for e in found.events if e.target_id == target_id), None)


def _sent(emails: Sequence[str]) -> str:
    return f"Invitation sent to {', '.join(emails)}: the link in it works for 7 days."


def _notice(request: Request, org: Organization, done: Mapping[str, str]) -> str | None:
    """What the change just made did (``done``: the page's query), named only if it is so in
    this organization, so that an address says nothing made up: ``invited``, the ids of the
    invitations sent (comma-separated; pending ones only); ``changed``, a member whose role was
    set; ``removed``, a member removed (no longer one); ``withdrawn``, an invitation withdrawn."""
    orgs = context(request).services.orgs
    if invited := done.get("invited", ""):
        now = orgs.now()
        waiting = {
            i.id: i.email for i in orgs.invites(org.id) if i.status(now) is InviteStatus.PENDING
        }
        ids = dict.fromkeys(invited.split(",")[:MAX_INVITES])  # in the order they were typed
        sent = [waiting[i] for i in ids if i in waiting]
        if sent:
            return _sent(sent)
    if (changed := done.get("changed")) and (who := orgs.member(org.id, changed)) is not None:
        name = f"{who.user.name} ({who.user.email})" if who.user.name else who.user.email
        return f"{name} is now {'an Owner' if who.role is OrgRole.OWNER else 'a Reader'}."
    removed = done.get("removed", "")
    if removed and orgs.member(org.id, removed) is None:
        details = _done(request, org.id, "user.deleted", removed)
        if details is not None:
            keys = _keys_said(len(details.get("revoked_keys", ())), "they", "owned")
            return f"{details['data']['email']} is removed from {org.name}. {keys}"
    if withdrawn := done.get("withdrawn"):
        details = _done(request, org.id, "invite.deleted", withdrawn)
        if details is not None:
            email = details["data"]["email"]
            return f"The invitation of {email} is withdrawn: its link no longer works."
    return None


@router.get(PATH)
def members_page(request: Request, viewer: CurrentMember) -> Response:
    """The list, with a notice of the change just made (see ``_notice``)."""
    _allowed(request, viewer, "users.list")  # before anything is looked up for the notice
    org = viewer.org
    notice = None if org is None else _notice(request, org, request.query_params)
    return _list(request, viewer, notice=notice)


# -- invitations ----------------------------------------------------------------------------------
def _invite_page(
    request: Request, viewer: Viewer, *, status: int = 200, emails: str = "",
    role: str = "reader", errors: Sequence[str] = (), notice: str | None = None,
    ticked: Sequence[str] = (), project_role: str = "member",
) -> Response:  # fmt: skip
    """The form; ``ticked``, the projects chosen, with ``project_role``."""
    org_id = principal_of(request, viewer).org_id
    projects = context(request).services.orgs.projects(org_id)  # active ones
    return render(
        request, "members_invite.html", status=status, viewer=viewer, emails=emails, role=role,
        errors=list(dict.fromkeys(errors)), notice=notice, most=MAX_INVITES,
        form_id=secrets.token_urlsafe(16), projects=projects, ticked=set(ticked),
        project_role=project_role,
    )  # fmt: skip


@router.get(PATH + "/invite")
def invite_page(request: Request, viewer: CurrentMember) -> Response:
    _allowed(request, viewer, "invites.create")
    return _invite_page(request, viewer)


@router.post(PATH + "/invite")
def send_invites(
    request: Request, viewer: CurrentMember, emails: Field = "", role: Field = "",
    org_id: Field = "", form_id: Field = "", projects: Ticked = None,
    project_role: Field = "member",
) -> Response:  # fmt: skip
    """Invites each address typed (commas, spaces or lines between them), to the projects ticked
    too. A malformed address sends nothing; an address the service refuses (a member already, or
    invited already) is shown again with why, while the others are invited; a project it refuses
    (archived meanwhile) sends nothing. The same form sent again (a double click) sends nothing
    more: it shows the list with what the first one sent."""
    principal = _allowed(request, viewer, "invites.create")
    same_org(viewer, org_id)
    typed = [e for e in _SEPARATORS.split(emails) if e]
    orgs = context(request).services.orgs
    if form_id and not _FORMS.claim(form_id):  # sent before: the list shows what that sent
        raise Redirect(_listed(_pending_of(orgs.invites(principal.org_id), typed)))
    chosen = ROLES.get(role)
    in_project = PROJECT_ROLES.get(project_role)
    ticked = list(dict.fromkeys(projects or ()))
    refused: list[str] = []
    if chosen is None:
        refused.append("Choose Owner or Reader.")
    if in_project is None:
        refused.append("Choose Member or Owner as the role in the projects.")
    # Only this organization's projects reach the service (an archived one, ticked before it was
    # archived, is refused there with its name); anything else was not offered by the form.
    known = {p.id for p in orgs.projects(principal.org_id, include_archived=True)}
    if any(p not in known for p in ticked):
        refused.append("Choose the projects from the list.")
    if not typed:
        refused.append("Enter the email address of the person to invite.")
    elif len(typed) > MAX_INVITES:
        refused.append(f"Invite at most {MAX_INVITES} people at a time.")
    for address in typed[:MAX_INVITES]:
        try:
            normalize_email(address)
        except InvalidRequest as exc:
            refused.append(f"{address}: {exc.message}")
    if refused or chosen is None or in_project is None:
        _FORMS.release(form_id)  # nothing was sent: the form may be sent again
        return _invite_page(
            request, viewer, status=400, emails=emails, role=role, errors=refused,
            ticked=ticked, project_role=project_role,
        )  # fmt: skip
    joining = [InviteProject(p, in_project) for p in ticked]
    sent: list[Invite] = []
    left: list[str] = []
    try:
        for address in dict.fromkeys(normalize_email(a) for a in typed):
            try:
                sent.append(
                    orgs.invite(principal.actor, principal.org_id, address, chosen, joining)
                )
            except (Conflict, InvalidRequest) as exc:  # a member, or invited, already
                left.append(address)
                refused.append(exc.message)
    finally:
        if not sent:
            _FORMS.release(form_id)
    if refused:
        notice = _sent([i.email for i in sent]) if sent else None
        return _invite_page(
            request, viewer, status=409, emails="\n".join(left), role=role, errors=refused,
            notice=notice, ticked=ticked, project_role=project_role,
        )  # fmt: skip
    raise Redirect(_listed(sent))


def _pending_of(invites: Sequence[Invite], typed: Sequence[str]) -> list[Invite]:
    """The invitations not accepted yet of the addresses typed (those well formed)."""
    wanted = set()
    for address in typed[:MAX_INVITES]:
        try:
            wanted.add(normalize_email(address))
        except InvalidRequest:
            continue
    return [i for i in invites if i.email in wanted and i.accepted_at is None]


def _listed(invites: Sequence[Invite]) -> str:
    """The list, with the notice of ``invites`` sent."""
    ids = ",".join(i.id for i in invites)
    return f"{PATH}?invited={quote(ids, safe=',')}" if ids else PATH


@router.post(PATH + "/invites/{invite_id}/revoke")
def revoke_invite(
    request: Request, viewer: CurrentMember, invite_id: str, org_id: Field = ""
) -> Response:
    principal = _allowed(request, viewer, "invites.delete")
    same_org(viewer, org_id)
    try:
        context(request).services.orgs.delete_invite(principal.actor, principal.org_id, invite_id)
    except NotFound:  # withdrawn meanwhile (a double submit, another tab)
        return _list(request, viewer, status=404, error=GONE_INVITE)
    except InvalidRequest as exc:  # accepted meanwhile
        return _list(request, viewer, status=400, error=exc.message)
    raise Redirect(f"{PATH}?withdrawn={quote(invite_id)}")


# -- members --------------------------------------------------------------------------------------
def _not_me(principal: Principal, user_id: str) -> None:
    """Refuses (400) removing oneself, who leaves instead."""
    if user_id == principal.user_id:
        raise InvalidRequest("To leave the organization yourself, use Leave organization.")


@router.post(PATH + "/{user_id}/role")
def change_role(
    request: Request, viewer: CurrentMember, user_id: str, role: Field = "", org_id: Field = ""
) -> Response:
    principal = _allowed(request, viewer, "users.update")
    same_org(viewer, org_id)
    chosen = ROLES.get(role)
    if chosen is None:
        return _list(request, viewer, status=400, error="Choose Owner or Reader.")
    try:
        context(request).services.orgs.change_role(
            principal.actor, principal.org_id, user_id, chosen
        )
    except NotFound:  # removed meanwhile
        return _list(request, viewer, status=404, error=GONE_MEMBER)
    except Conflict as exc:  # the last Owner
        return _list(request, viewer, status=409, error=exc.message)
    raise Redirect(f"{PATH}?changed={quote(user_id)}")


def _keys_owned(request: Request, org_id: str, user_id: str) -> int:
    keys = context(request).services.keys.list(org_id)
    return sum(
        1 for k in keys if k.owner_type == "user" and k.owner_id == user_id and k.revoked_at is None
    )


def _keys_said(count: int, whose: str, own: str = "own") -> str:
    """What becomes of the keys ``whose`` ("they", "you") ``own`` ("owned", once removed) here."""
    if count == 0:
        return f"{whose.capitalize()} {own} no keys here."
    if count == 1:
        return f"The key {whose} {own} here stops working on every gateway within a second."
    return f"The {count} keys {whose} {own} here stop working on every gateway within a second."


@router.get(PATH + "/{user_id}/remove")
def remove_page(request: Request, viewer: CurrentMember, user_id: str) -> Response:
    principal = _allowed(request, viewer, "users.delete")
    _not_me(principal, user_id)
    try:
        member = context(request).services.orgs.get_member(principal.org_id, user_id)
    except NotFound:  # removed meanwhile (its Remove link clicked on a list left open)
        return _list(request, viewer, status=404, error=GONE_MEMBER)
    owned = _keys_owned(request, principal.org_id, member.user.id)
    return render(
        request, "confirm.html", viewer=viewer, heading="Remove member",
        message=f"{member.user.email} leaves this organization and its projects. "
        f"{_keys_said(owned, 'they')} This cannot be undone; invite them again to bring them back.",
        action=f"{PATH}/{member.user.id}/remove", button="Remove member", back=PATH,
        org_id=principal.org_id,
    )  # fmt: skip


@router.post(PATH + "/{user_id}/remove")
def remove_member(
    request: Request, viewer: CurrentMember, user_id: str, org_id: Field = ""
) -> Response:
    principal = _allowed(request, viewer, "users.delete")
    same_org(viewer, org_id)
    _not_me(principal, user_id)
    try:
        member = context(request).services.orgs.remove_member(
            principal.actor, principal.org_id, user_id
        )
    except NotFound:  # removed meanwhile (a double submit, another tab)
        return _list(request, viewer, status=404, error=GONE_MEMBER)
    except Conflict as exc:  # the last Owner (only in a race: the remover is an Owner)
        return _list(request, viewer, status=409, error=exc.message)
    raise Redirect(f"{PATH}?removed={quote(member.user.id)}")


# -- leaving --------------------------------------------------------------------------------------
@router.get(PATH + "/leave")
def leave_page(request: Request, viewer: CurrentMember) -> Response:
    """Any member may leave (it changes nothing but their own membership): as the Admin API's
    ``users.delete`` of themselves, which the service refuses for the last Owner: told so here,
    rather than asked to confirm what cannot be done."""
    principal = principal_of(request, viewer)
    name = viewer.org.name if viewer.org is not None else "this organization"
    owners = [m.user.id for m in context(request).services.orgs.members(principal.org_id)
              if m.role is OrgRole.OWNER]  # fmt: skip
    if owners == [principal.user_id]:
        error = f"You are the only Owner of {name}: make someone else an Owner before you leave."
        return _list(request, viewer, status=409, error=error)
    owned = _keys_owned(request, principal.org_id, principal.user_id)
    return render(
        request, "confirm.html", viewer=viewer, heading=f"Leave {name}?",
        message=f"You lose access to {name} and its projects. {_keys_said(owned, 'you')} An Owner can invite you "
        "again.",
        action=f"{PATH}/leave", button="Leave organization", back=PATH, org_id=principal.org_id,
    )  # fmt: skip


@router.post(PATH + "/leave")
def leave(request: Request, viewer: CurrentMember, org_id: Field = "") -> Response:
    principal = principal_of(request, viewer)
    same_org(viewer, org_id)
    try:
        context(request).services.orgs.remove_member(
            principal.actor, principal.org_id, principal.user_id
        )
    except Conflict as exc:  # the last Owner
        return _list(request, viewer, status=409, error=exc.message)
    # The dashboard acts in another of the user's organizations now (or asks them to make one).
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(ORG_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=is_secure(request))  # fmt: skip
    return response
