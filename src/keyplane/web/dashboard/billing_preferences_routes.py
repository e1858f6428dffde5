"""Billing → Preferences (``/billing/preferences``; BRIEF C5: "preferences (billing email,
currency display)", C9: the Billing tabs): the billing email, the currency, the billing address.

- Billing email: where billing emails go (notification thresholds without recipients of their own,
  auto-recharge failures, tier changes) in place of the Owners, as OpenAI's billing email does;
  empty: to the Owners.
- Currency: US dollars, shown and explained, not chosen: keyplane bills in USD only and converts
  nothing.
- Billing address: what receipts say the organization was billed to (each payment keeps the address
  of the day it was made). All its fields empty: no address.

One form, Owners only (403 for anyone else, the page shown read-only); a change is audited as the
Admin API's ``billing_settings.updated`` with the fields that changed, before and after
(``audit_details.preferences_shown``), nothing when nothing changed. The form carries a
fingerprint of the preferences it was shown with: one sent after someone else saved theirs (another
Owner, another tab) saves nothing and shows the preferences as they are now, rather than silently
putting back what the page showed."""

from __future__ import annotations

import hashlib
import json

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from keyplane.audit.service import changed
from keyplane.billing.address import FIELDS, address_errors, countries, parse_address
from keyplane.billing.audit_details import preferences_shown
from keyplane.billing.ports import BillingSettings
from keyplane.emails import normalize_email
from keyplane.errors import KeyplaneError
from keyplane.web.dashboard.authorize import may, principal_of
from keyplane.web.dashboard.session import (
    CurrentMember,
    Field,
    Redirect,
    Viewer,
    context,
    render,
    same_org,
)

router = APIRouter()
PATH = "/billing/preferences"
STALE = (
    "Someone else changed the billing preferences after this page was shown, so nothing was "
    "saved. They are shown below as they are now: make your change again."
)


def _fingerprint(settings: BillingSettings) -> str:
    shown = json.dumps(preferences_shown(settings), sort_keys=True)
    return hashlib.sha256(shown.encode()).hexdigest()[:16]


def _page(
    request: Request, viewer: Viewer, *, status: int = 200, errors: dict[str, str] | None = None,
    typed: dict[str, str] | None = None, saved: bool = False, error: str | None = None,
    fingerprint: str = "",
) -> Response:  # fmt: skip
    """The tab; ``typed``: the form as it was sent (refused), else the stored preferences;
    ``fingerprint``: of the preferences that form was first shown with, else of the stored ones."""
    services = context(request).services
    errors = errors or {}
    principal = principal_of(request, viewer)
    if not may(request, principal, "billing_settings.retrieve", None):
        raise HTTPException(403)
    settings = services.billing.settings(principal.org_id)
    address = settings.billing_address
    if typed is None:
        typed = {name: getattr(address, name) if address else "" for name in FIELDS}
        typed["billing_email"] = settings.billing_email or ""
    owners = [u.email for u in services.accounts.owners(principal.org_id)]
    return render(
        request, "billing_preferences.html", status=status, viewer=viewer, section=PATH,
        settings=settings, address=address, typed=typed, errors=errors, fields=FIELDS,
        countries=countries(), owners=owners, error=error,
        first_error=next((n for n in ("billing_email", *FIELDS) if n in errors), None),
        fingerprint=fingerprint or _fingerprint(settings),
        notice="Billing preferences saved." if saved else None,
        can_edit=may(request, principal, "billing_settings.update", None),
    )  # fmt: skip


@router.get(PATH)
def preferences_page(request: Request, viewer: CurrentMember, saved: str = "") -> Response:
    return _page(request, viewer, saved=saved == "1")


@router.post(PATH)
def save_preferences(
    request: Request, viewer: CurrentMember, billing_email: Field = "", name: Field = "",
    line1: Field = "", line2: Field = "", city: Field = "", state: Field = "",
    postal_code: Field = "", country: Field = "", tax_id: Field = "", org_id: Field = "",
    fingerprint: Field = "",
) -> Response:  # fmt: skip
    """Saves the billing email and the billing address (every field empty: none). Owners only.
    ``fingerprint``: of the preferences the form was shown with (none: not checked)."""
    form_org = org_id
    principal = principal_of(request, viewer)
    if not may(request, principal, "billing_settings.update", None):
        raise HTTPException(403, "Only the organization's Owners change its billing preferences.")
    same_org(viewer, form_org)
    typed = {
        "name": name, "line1": line1, "line2": line2, "city": city, "state": state,
        "postal_code": postal_code, "country": country, "tax_id": tax_id,
    }  # fmt: skip
    errors: dict[str, str] = {}
    email = None
    if billing_email.strip():
        try:
            email = normalize_email(billing_email, param="billing_email")
        except KeyplaneError as exc:
            errors["billing_email"] = exc.message
    address = None
    if any(value.strip() for value in typed.values()):
        errors.update(address_errors(typed))
        if not errors:
            address = parse_address(typed)
    if errors:
        shown = {**typed, "billing_email": billing_email}
        return _page(
            request, viewer, status=400, errors=errors, typed=shown, fingerprint=fingerprint
        )
    services = context(request).services
    stored = services.billing.settings(principal.org_id)
    # The same form sent twice (a double click) finds its own change made: that is no conflict.
    done_already = (email, address) == (stored.billing_email, stored.billing_address)
    if fingerprint not in ("", _fingerprint(stored)) and not done_already:
        return _page(request, viewer, status=409, error=STALE)
    before = preferences_shown(stored)
    with services.audit.atomic():
        record = services.billing.update_settings(
            principal.org_id, billing_email=email, billing_address=address
        )
        details = changed(before, preferences_shown(record))
        if details["after"]:
            services.audit.record(
                principal.org_id, principal.actor, "billing_settings.updated", details=details
            )
    raise Redirect(PATH + "?saved=1")
