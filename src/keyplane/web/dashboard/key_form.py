"""The fields "Create new secret key" and "Edit secret key" share (name, permissions, allowed IPs
and models), and the key's own rate limits Edit adds: what a key's settings look like in the form,
and what a form sent asks for. The templates' side is ``_key_fields.html``."""

from __future__ import annotations

import re

from keyplane.errors import InvalidRequest
from keyplane.keys.access import ip_allowlist, model_allowlist
from keyplane.keys.models import ApiKey
from keyplane.keys.permissions import ALL_READ, Access, Group, describe, scopes_for
from keyplane.limits.ratelimit import API_NAMES, ModelLimits

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
# A key's own rate limits, as the Admin API's update takes them (each field is named as the API's).
LIMIT_LABELS = {"rpm": "Requests per minute", "tpm": "Tokens per minute", "rpd": "Requests per day"}
LIMIT_FIELDS = tuple((name, API_NAMES[name], label) for name, label in LIMIT_LABELS.items())
_SHORT = {"rpm": "RPM", "tpm": "TPM", "rpd": "RPD"}


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


def limits_of(form: dict[str, str]) -> dict[str, int | None]:
    """The key's own rate limits the form asks for, as ``OrgService.update_project_key`` takes
    them: a field left empty lifts that limit, one not sent at all keeps it. Raises
    InvalidRequest naming the field when it is not a whole number of 1 or more (the largest
    allowed is the service's to check, as for the Admin API)."""
    limits: dict[str, int | None] = {}
    for name, field, label in LIMIT_FIELDS:
        if field not in form:
            continue
        text = form[field].strip().replace(",", "")  # (10,000 as people write it)
        if text and not re.fullmatch(r"[1-9][0-9]*", text):
            raise InvalidRequest(
                f"{label} must be a whole number of 1 or more, like 60 (left empty, the key has "
                "no limit of its own).",
                param=field,
            )
        limits[name] = int(text) if text else None
    return limits


def notes_of(key: ApiKey, limits: ModelLimits | None) -> tuple[tuple[str, str], ...]:
    """What the keys list says of a key's own allowed IPs and models (one entry in full, several
    counted) and rate limits: (the note, the note in full for its tooltip)."""
    notes = []
    for label, values, several in (
        ("IP", key.allowed_cidrs, "ranges"),
        ("Models", key.allowed_models, ""),
    ):
        if values is None:
            continue
        full = ", ".join(values) or "none"
        shown = values[0] if len(values) == 1 else f"{len(values)} {several}".strip()
        notes.append((f"{label}: {shown if values else 'none'}", f"{label}: {full}"))
    own = [(_SHORT[n], getattr(limits, n)) for n in LIMIT_LABELS] if limits else []
    if said := " · ".join(f"{v:,} {short}" for short, v in own if v is not None):
        notes.append((f"Limits: {said}", f"The key's own rate limits, for every model: {said}"))
    return tuple(notes)


def fields_of(key: ApiKey, limits: ModelLimits | None = None) -> dict[str, str]:
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
    for name in LIMIT_LABELS:
        value = getattr(limits, name) if limits else None
        form[API_NAMES[name]] = "" if value is None else str(value)
    return form
