"""Key permissions as OpenAI-style scopes (BRIEF C2).

- **All**: no scopes stored (``None`` or empty) — every endpoint.
- **Read only**: ``["api.all.read"]`` — every read (GET), no write.
- **Restricted**: a scope per endpoint group and access level: ``<group>.read`` or
  ``<group>.write`` (write includes read); a group not listed is None.

A request that lacks its scope gets 401 "You have insufficient permissions for this operation.
Missing scopes: …", as OpenAI answers.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

ALL_READ = "api.all.read"


class Group(enum.StrEnum):
    MODELS = "models"
    CHAT = "chat"  # chat/completions, completions, responses
    EMBEDDINGS = "embeddings"
    AUDIO = "audio"
    IMAGES = "images"
    MODERATIONS = "moderations"
    FILES = "files"
    BATCH = "batch"


class Access(enum.StrEnum):
    NONE = "none"
    READ = "read"
    WRITE = "write"


def scopes_for(permissions: dict[Group, Access]) -> tuple[str, ...]:
    """The scopes of a Restricted key from its per-group choices."""
    return tuple(
        f"{g.value}.{a.value}" for g, a in sorted(permissions.items()) if a is not Access.NONE
    )


def validate(scopes: Iterable[str]) -> tuple[str, ...]:
    """Returns the scopes if each is known; raises ValueError naming the first unknown one."""
    known = {ALL_READ} | {
        f"{g.value}.{a.value}" for g in Group for a in (Access.READ, Access.WRITE)
    }
    out = tuple(scopes)
    for scope in out:
        if scope not in known:
            raise ValueError(f"Unknown scope '{scope}'. Known scopes: {', '.join(sorted(known))}.")
    return out


def missing(scopes: Sequence[str] | None, group: Group, access: Access) -> str | None:
    """Returns the scope the request needs and the key lacks, or None when it may proceed."""
    if not scopes:
        return None  # All
    if access is Access.READ and (ALL_READ in scopes or f"{group.value}.read" in scopes):
        return None
    if f"{group.value}.write" in scopes:
        return None
    return f"{group.value}.{access.value}"


def describe(scopes: Sequence[str] | None) -> str:
    """ "All", "Read only" or "Restricted", as the dashboard shows a key's permissions."""
    if not scopes:
        return "All"
    return "Read only" if tuple(scopes) == (ALL_READ,) else "Restricted"
