"""What the API keys page (``keys_routes``: project keys) and the Admin keys page
(``admin_keys_routes``) share: a listed key's status, the notice once one is revoked, the pages
that show a new secret once, ask to revoke or rotate a key (``templates/api_key_*.html``, told
which list they belong to by a ``Listing``), and rotating a key through a one-time form.

A secret is shown once: the create and rotate forms carry a one-time id (``FORMS``), so sending
one again (a reload of the page that showed the secret) makes no second key or secret."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Request
from starlette.responses import Response

from keyplane.accounts.models import Project
from keyplane.errors import InvalidRequest, NotFound
from keyplane.keys.models import ApiKey
from keyplane.keys.permissions import describe
from keyplane.web.dashboard.once import OnceForms
from keyplane.web.dashboard.session import Redirect, Viewer, context, render
from keyplane.web.principal import Principal

# How long the old secret keeps working after a rotation (BRIEF C2: 0 to 7 days).
GRACE_CHOICES = {"none": 0, "1h": 3600, "1d": 86400, "7d": 7 * 86400}
GRACE_LABELS = {"none": "None: it stops now", "1h": "1 hour", "1d": "1 day", "7d": "7 days"}
FORMS = OnceForms()


@dataclass(frozen=True, slots=True)
class Listing:
    """A kind of key's list page, which the shared pages name and link back to."""

    path: str  # "/api-keys"
    title: str  # "API keys"
    noun: str  # "secret key": "Revoke secret key"


PROJECT_KEYS = Listing("/api-keys", "API keys", "secret key")
ADMIN_KEYS = Listing("/admin-keys", "Admin keys", "admin key")


async def _sent(request: Request) -> dict[str, str]:
    """The form's text fields, read on the event loop (the routes that take them run in a
    worker thread: they wait on the database)."""
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


Sent = Annotated[dict[str, str], Depends(_sent)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ListedKey:
    """A row of a key list (``templates/_key_list.html``): the key, its status and the actions
    the signed-in user is offered on it."""

    key: ApiKey
    status: str  # active / rotated (replaced, in its grace period) / expired (revoked: not listed)
    rotate: bool  # older than the rotation policy
    can_revoke: bool
    can_rotate: bool
    can_edit: bool = False


def replaced_ids(keys: Iterable[ApiKey]) -> set[str]:
    """The ids of the keys among ``keys`` that a rotation replaced (each by one of ``keys``)."""
    return {k.rotated_from for k in keys if k.rotated_from}


def status_of(key: ApiKey, replaced: set[str], now: float, max_age_s: int) -> tuple[str, bool]:
    """A listed key's status: active, rotated (replaced, working out its grace period) or expired
    (a revoked key is not listed); and whether it is older than the rotation policy."""
    rotated = key.id in replaced  # works out its grace period, then stops
    rotate = not rotated and key.needs_rotation(now, max_age_s)
    return ("rotated" if rotated and key.is_usable(now) else key.status(now)), rotate


def refuse_replaced(key: ApiKey, keys: Iterable[ApiKey], verb: str, listing: Listing) -> None:
    """Refuses to rotate or edit a key already replaced by a rotation: rotating it again would
    make a second replacement, and its replacement is the one to change."""
    if key.id in replaced_ids(keys):
        raise InvalidRequest(
            f"The key {key.redacted_value} was rotated already: {verb} its "
            f"replacement, listed on the {listing.title} page under the same name."
        )


def listed_key(request: Request, org_id: str, key_id: str) -> ApiKey | None:
    """The organization's key ``key_id`` (revoked too), for a notice about it; None if unknown."""
    try:
        return context(request).services.keys.get(org_id, key_id)
    except NotFound:
        return None


def back_to_list(listing: Listing, revoked: ApiKey) -> NoReturn:
    """After Revoke: the list, which says the key is revoked (``revoked_notice``)."""
    raise Redirect(f"{listing.path}?revoked={revoked.id}")


def revoked_notice(key: ApiKey | None) -> str | None:
    """What the list says once Revoke led back to it (nothing unless the key is revoked)."""
    if key is None or key.revoked_at is None:
        return None
    return f"{key.redacted_value} is revoked: every gateway refuses it within a second."


def api_base(request: Request) -> str:
    """The gateway's base URL for an SDK (``public_url`` is always set, without a final /)."""
    return context(request).services.settings.public_url + "/v1"


def created_page(
    request: Request, viewer: Viewer, listing: Listing, key: ApiKey, secret: str,
    project: Project | None, **more: Any,
) -> Response:  # fmt: skip
    """The page that shows a new secret once, with a Copy button (``project`` None: an admin
    key's)."""
    return render(
        request, "api_key_created.html", viewer=viewer, listing=listing, key=key, secret=secret,
        project=project, permissions=describe(key.scopes), base_url=api_base(request), **more,
    )  # fmt: skip


def again_page(request: Request, viewer: Viewer, listing: Listing, *, rotated: bool) -> Response:
    """A create or rotate form sent a second time: nothing more was made."""
    return render(
        request, "api_key_again.html", status=409, viewer=viewer, listing=listing, rotated=rotated
    )


def rotate_page(
    request: Request, viewer: Viewer, listing: Listing, key: ApiKey, project: Project | None, *,
    grace: str = "1d", status: int = 200, error: str | None = None,
) -> Response:  # fmt: skip
    return render(
        request, "api_key_rotate.html", status=status, viewer=viewer, listing=listing, key=key,
        project=project, graces=GRACE_LABELS, grace=grace, error=error,
        form_id=secrets.token_urlsafe(16),
    )  # fmt: skip


def rotate_once(
    request: Request,
    viewer: Viewer,
    listing: Listing,
    form: dict[str, str],
    find: Callable[[], tuple[Principal, ApiKey, Project | None]],
    rotate: Callable[[Principal, ApiKey, int], tuple[ApiKey, str]],
) -> Response:
    """The Rotate form sent: ``find`` the key the user may rotate (it raises 403, 404 or 400),
    ``rotate`` it with the grace period chosen, once for the form, and show the new secret."""
    form_id = form.get("form_id", "")
    # A reload of the page that showed the new secret: checked first, as the key it names is
    # replaced now (or revoked, without a grace period).
    if FORMS.seen(form_id):
        return again_page(request, viewer, listing, rotated=True)
    principal, key, project = find()
    grace = form.get("grace", "")
    if grace not in GRACE_CHOICES:
        return rotate_page(
            request, viewer, listing, key, project, status=400,
            error="Choose how long the old secret keeps working: None, 1 hour, 1 day or 7 days.",
        )  # fmt: skip
    if not FORMS.claim(form_id):  # sent twice at once, or not from the page
        return again_page(request, viewer, listing, rotated=True)
    with FORMS.taking(form_id):
        new, secret = rotate(principal, key, GRACE_CHOICES[grace])
    # Without a grace period the old key is revoked at once; with one, it stops at its new expiry.
    old = None if grace == "none" else listed_key(request, principal.org_id, key.id)
    return created_page(
        request, viewer, listing, new, secret, project, replaced=key,
        replaced_until=None if old is None else old.expires_at,
    )  # fmt: skip
