"""The dashboard pages that the emails about a key link to: a project key's on the API keys page
(``/api-keys``), an admin key's on the Admin keys page (``/admin-keys``)."""

from __future__ import annotations

from typing import Literal

from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey


def key_page(public_url: str, key: ApiKey, action: Literal["revoke", "rotate", "new"]) -> str:
    """The page that revokes or rotates ``key``, or (``new``) creates a key of its kind, in the
    key's organization: ``?org=`` makes the dashboard open that one (``OrgFromLink``).
    ``public_url`` has no final /."""
    listing = "/admin-keys" if key.kind is KeyKind.ADMIN else "/api-keys"
    page = f"{listing}/new" if action == "new" else f"{listing}/{key.id}/{action}"
    return f"{public_url}{page}?org={key.org_id}"
