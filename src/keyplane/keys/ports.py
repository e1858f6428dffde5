"""What the key slice needs from storage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from keyplane.keys.models import ApiKey


class KeyStore(Protocol):
    def get(self, key_id: str) -> ApiKey | None:
        """Returns the key with this id, revoked or not, or None.

        Raises StoreUnavailable when the database cannot be reached."""
        ...

    def add(self, key: ApiKey) -> None:
        """Stores a new key and appends a change event for it."""
        ...

    def update(self, key: ApiKey, at: int) -> None:
        """Stores a key's changed settings and appends a change event for it."""
        ...

    def list(self, org_id: str, project_id: str | None = None) -> Sequence[ApiKey]:
        """Returns the organization's keys (of one project if given), newest first."""
        ...

    def revoke(self, key_id: str, at: int) -> bool:
        """Marks the key revoked and appends a change event; returns False if unknown or already
        revoked."""
        ...

    def changes_since(self, seq: int | None) -> tuple[int, Sequence[str]]:
        """Returns the latest change sequence number and the ids of keys changed after ``seq``
        (none for None: where the feed is now).

        Raises StoreUnavailable when the database cannot be reached."""
        ...

    def record_use(self, uses: Mapping[str, tuple[int, str | None]]) -> None:
        """Stores last_used_at / last_used_ip for many keys at once (not a change event)."""
        ...

    def rehash(self, rehashes: Mapping[str, tuple[str, str]], pepper_id: str) -> None:
        """Stores keys' hashes made again with the pepper ``pepper_id`` (id → (the hash it
        replaces, the new one)), each only if its stored hash is still the one it replaces. Not a
        change event: the key's settings are the same, and its old hash works until that pepper
        is removed.

        Raises StoreUnavailable when the database cannot be reached."""
        ...
