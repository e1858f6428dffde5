"""The fields "Create new secret key" and "Edit secret key" share (name, permissions, allowed IPs
and models): what a key's settings look like in the form, and what a form sent asks for. The
templates' side is ``_key_fields.html``."""

from __future__ import annotations

import re

from keyplane.keys.access import ip_allowlist, model_allowlist
from keyplane.keys.models import ApiKey
from keyplane.keys.permissions import ALL_READ, Access, Group, describe, scopes_for

ACCESS = frozenset(a.value for a in Access)
GROUP_LABELS = {
    Group.MODELS: "Models",
    Group.CHAT: "Model capabilities (chat, completions, responses)",
    Group.EMBEDDINGS: "Embeddings",
    Group.AUDIO: "Audio",
    Group.IMAGES: "Images",
    Group.MODERATIONS: "Moderations",
    Group.FILES: "Files",
    Group.BATCH: "Batch",
}
PERMISSIONS = {"All": "all", "Restricted": "restricted", "Read only": "read_only"}


def scopes_of(form: dict[str, str]) -> tuple[str, ...] | None:
    """The scopes the form asks for (None: All). Raises ValueError for a choice not offered."""
    choice = form.get("permissions", "all")
    if choice not in PERMISSIONS.values():
        raise ValueError("Choose All, Restricted or Read only.")
    if choice != "restricted":
        if any(form.get(f"perm_{g.value}", "none") != "none" for g in Group):
            # (choices per group apply to Restricted only: never a key wider than meant)
            raise ValueError(
                "Access per group applies to Restricted keys: choose Restricted, or set every "
                "group back to None."
            )
        return None if choice == "all" else (ALL_READ,)
    chosen = {}
    for group in Group:
        value = form.get(f"perm_{group.value}", "none")
        if value not in ACCESS:
            raise ValueError(f"Choose None, Read or Write for {GROUP_LABELS[group]}.")
        chosen[group] = Access(value)
    scopes = scopes_for(chosen)
    if not scopes:
        raise ValueError(
            "A restricted key needs Read or Write on at least one group (or choose Read only)."
        )
    return scopes


def _listed(text: str) -> list[str]:
    """A list typed in a form: one entry a line, or separated by commas or spaces (neither a model
    name nor a CIDR holds one)."""
    return [entry for entry in re.split(r"[\s,]+", text) if entry]


def restrictions_of(
    form: dict[str, str],
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The key's own allowed models and IP allowlist the form asks for (None: left empty, no list
    of the key's own). Raises InvalidRequest naming the field."""
    models = _listed(form.get("allowed_models", ""))
    ips = _listed(form.get("allowed_ips", ""))
    return model_allowlist(models or None), ip_allowlist(ips or None)


def fields_of(key: ApiKey) -> dict[str, str]:
    """The form filled in with a key's settings, as sending it unchanged keeps them."""
    scopes = key.scopes or ()
    form = {"name": key.name, "permissions": PERMISSIONS[describe(scopes)]}
    if form["permissions"] == "restricted":
        for group in Group:
            # api.all.read with some writes (possible through the Admin API) is Read on the
            # other groups: the same access, said the form's way.
            write, read = f"{group.value}.write" in scopes, f"{group.value}.read" in scopes
            access = "write" if write else "read" if read or ALL_READ in scopes else "none"
            form[f"perm_{group.value}"] = access
    form["allowed_ips"] = "\n".join(key.allowed_cidrs or ())
    form["allowed_models"] = "\n".join(key.allowed_models or ())
    return form
