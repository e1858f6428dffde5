"""The Admin keys page (OpenAI's Organization settings → Admin keys): the organization's admin keys
(``sk-kp-admin-…``, which call the Admin API only), "Create new admin key" (a name) with the
secret shown once to copy, rotating one (a new secret shown once; the old one works for the grace
period chosen) and revoking one, each after a confirmation page. Its emails link here: an admin
key's anomaly alert to its Revoke page, its leak to the create form, its rotation reminder to its
Rotate page.

Who may do what is the Admin API's rule (``POLICY``'s ``admin_api_keys.*``) applied to the
signed-in user: every member sees the list, as ``admin_api_keys.list`` lets a Reader; Owners
create, rotate and revoke. Rotating (which the Admin API lacks, as OpenAI's) asks for
``admin_api_keys.delete``, as a project key's rotation has its revocation's grants. Every change
goes through ``OrgService`` and is audited as the Admin API's (``api_key.created``,
``api_key.deleted``) and the ``keyplane keys rotate`` command's (``api_key.rotated``)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.errors import KeyplaneError, NotFound
from keyplane.keys.models import ApiKey
from keyplane.web.dashboard import key_pages as pages
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.key_pages import ADMIN_KEYS, FORMS, Sent
from keyplane.web.dashboard.session import CurrentMember, Viewer, context, render, same_org
from keyplane.web.principal import Principal

router = APIRouter()
PATH = ADMIN_KEYS.path


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminKeyRow(pages.ListedKey):  # (no Edit: an admin key has no permissions or allowlists)
    created_by: str  # the member's email


def _created_by(key: ApiKey, people: dict[str, str]) -> str:
    """Who made a key: a member (its owner, through the dashboard or the Admin API), or the
    ``keyplane`` command on the server, which makes it for the first Owner."""
    if key.created_by is None:
        return f"keyplane command, for {people.get(key.owner_id, 'a former member')}"
    return people.get(key.created_by, "a former member")


def _rows(request: Request, principal: Principal) -> list[AdminKeyRow]:
    services = context(request).services
    now, max_age_s = services.clock.now(), services.settings.key_rotation_days * 86400
    people = {m.user.id: m.user.email for m in services.orgs.members(principal.org_id)}
    keys = services.orgs.admin_keys(principal.org_id)
    replaced = pages.replaced_ids(keys)
    can_revoke = may(request, principal, "admin_api_keys.delete", None)
    rows = []
    for key in sorted(keys, key=lambda k: k.created_at, reverse=True):
        status, rotate = pages.status_of(key, replaced, now, max_age_s)
        rows.append(
            AdminKeyRow(
                key=key, status=status, rotate=rotate, can_revoke=can_revoke,
                can_rotate=can_revoke and status == "active", created_by=_created_by(key, people),
            )
        )  # fmt: skip
    return rows


@router.get(PATH)
def admin_keys_page(request: Request, viewer: CurrentMember, revoked: str = "") -> Response:
    """``revoked``: the key just revoked (Revoke leads here), said in a notice."""
    principal = principal_of(request, viewer)
    key = pages.listed_key(request, principal.org_id, revoked) if revoked else None
    return render(
        request, "admin_keys.html", viewer=viewer, rows=_rows(request, principal),
        notice=pages.revoked_notice(key), listing=ADMIN_KEYS,
        can_create=may(request, principal, "admin_api_keys.create", None),
        rotation_days=context(request).services.settings.key_rotation_days,
    )  # fmt: skip


def _owner(request: Request, viewer: Viewer, operation: str, verb: str) -> Principal:
    """The signed-in user, if ``POLICY`` lets them perform ``operation`` (403 otherwise)."""
    principal = principal_of(request, viewer)
    if not may(request, principal, operation, None):
        raise HTTPException(403, f"Your role does not allow {verb} admin keys: Owners do.")
    return principal


def _new_page(
    request: Request, viewer: Viewer, *, status: int = 200, error: str | None = None,
    error_field: str | None = None, form: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    return render(
        request, "api_key_new.html", status=status, viewer=viewer, listing=ADMIN_KEYS, projects=(),
        error=error, error_field=error_field, form=form or {}, form_id=secrets.token_urlsafe(16),
    )  # fmt: skip


@router.get(PATH + "/new")
def new_admin_key_page(request: Request, viewer: CurrentMember) -> Response:
    _owner(request, viewer, "admin_api_keys.create", "creating")
    return _new_page(request, viewer)


@router.post(PATH)
def create_admin_key(request: Request, viewer: CurrentMember, form: Sent) -> Response:
    same_org(viewer, form.get("org_id", ""))
    principal = _owner(request, viewer, "admin_api_keys.create", "creating")
    form_id = form.get("form_id", "")
    if not FORMS.claim(form_id):
        return pages.again_page(request, viewer, ADMIN_KEYS, rotated=False)
    try:
        with FORMS.taking(form_id):
            key, secret = context(request).services.orgs.create_admin_key(
                principal.actor, principal.org_id, form.get("name", ""), principal.user_id,
                expires_in_s=None,
            )  # fmt: skip
    except KeyplaneError as exc:
        return _new_page(
            request, viewer, status=400, error=exc.message, error_field=exc.param, form=form
        )
    return pages.created_page(request, viewer, ADMIN_KEYS, key, secret, None)


def _key(
    request: Request, viewer: Viewer, key_id: str, operation: str, verb: str
) -> tuple[Principal, ApiKey]:
    """The admin key an Owner may change (404 unknown here: another organization's too; 403 for
    a Reader)."""
    principal = _owner(request, viewer, operation, verb)
    try:
        return principal, context(request).services.orgs.admin_key(principal.org_id, key_id)
    except NotFound:
        raise HTTPException(404) from None


@router.get(PATH + "/{key_id}/revoke")
def revoke_admin_key_page(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    _, key = _key(request, viewer, key_id, "admin_api_keys.delete", "revoking")
    return render(
        request, "api_key_revoke.html", viewer=viewer, listing=ADMIN_KEYS, key=key, project=None
    )


@router.post(PATH + "/{key_id}/revoke")
def revoke_admin_key(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    principal, key = _key(request, viewer, key_id, "admin_api_keys.delete", "revoking")
    context(request).services.orgs.revoke_admin_key(principal.actor, principal.org_id, key.id)
    pages.back_to_list(ADMIN_KEYS, key)


def _rotatable(request: Request, viewer: Viewer, key_id: str) -> tuple[Principal, ApiKey, None]:
    """The admin key an Owner may rotate: not one a rotation replaced already."""
    principal, key = _key(request, viewer, key_id, "admin_api_keys.delete", "rotating")
    pages.refuse_replaced(key, context(request).services.orgs.admin_keys(principal.org_id), "rotate",
                    ADMIN_KEYS)  # fmt: skip
    return principal, key, None


@router.get(PATH + "/{key_id}/rotate")
def rotate_admin_key_page(request: Request, viewer: CurrentMember, key_id: str) -> Response:
    _, key, _ = _rotatable(request, viewer, key_id)
    return pages.rotate_page(request, viewer, ADMIN_KEYS, key, None)


@router.post(PATH + "/{key_id}/rotate")
def rotate_admin_key(request: Request, viewer: CurrentMember, key_id: str, form: Sent) -> Response:
    orgs = context(request).services.orgs

    def rotate(principal: Principal, key: ApiKey, grace_s: int) -> tuple[ApiKey, str]:
        return orgs.rotate_admin_key(principal.actor, principal.org_id, key.id, grace_s=grace_s)

    find = partial(_rotatable, request, viewer, key_id)
    return pages.rotate_once(request, viewer, ADMIN_KEYS, form, find, rotate)
