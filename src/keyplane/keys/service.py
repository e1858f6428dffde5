"""Creating, listing and revoking keys (the management side, not the hot path)."""

from __future__ import annotations

from collections.abc import Sequence

from keyplane.clock import Clock
from keyplane.errors import InvalidRequest, NotFound
from keyplane.keys import format as keyfmt
from keyplane.keys.models import ApiKey
from keyplane.keys.ports import KeyStore

MAX_EXPIRES_IN_S = 365 * 24 * 3600  # OpenAI's cap for expires_in_seconds


class KeyService:
    def __init__(self, store: KeyStore, pepper: bytes, clock: Clock) -> None:
        self._store = store
        self._pepper = pepper
        self._clock = clock

    def create(
        self,
        *,
        kind: keyfmt.KeyKind,
        org_id: str,
        project_id: str | None,
        name: str,
        owner_type: str,
        owner_id: str,
        created_by: str | None,
        expires_in_s: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Returns the stored key and its full secret text, which is never available again."""
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidRequest("A key name must have 1 to 200 characters.", param="name")
        if expires_in_s is not None and not 0 < expires_in_s <= MAX_EXPIRES_IN_S:
            raise InvalidRequest(
                f"expires_in_seconds must be between 1 and {MAX_EXPIRES_IN_S}.",
                param="expires_in_seconds",
            )
        if (kind is keyfmt.KeyKind.ADMIN) != (project_id is None):
            raise InvalidRequest("Admin keys belong to an organization, other keys to a project.")
        text, parsed = keyfmt.generate(kind)
        now = int(self._clock.now())
        key = ApiKey(
            id=keyfmt.key_id(parsed.public_id),
            kind=kind,
            org_id=org_id,
            project_id=project_id,
            owner_type=owner_type,
            owner_id=owner_id,
            name=name,
            secret_hash=keyfmt.hash_secret(self._pepper, parsed.secret),
            redacted_value=keyfmt.redact(text),
            created_at=now,
            created_by=created_by,
            expires_at=None if expires_in_s is None else now + expires_in_s,
        )
        self._store.add(key)
        return key, text

    def list(self, org_id: str, project_id: str | None = None) -> Sequence[ApiKey]:
        return self._store.list(org_id, project_id)

    def get(self, org_id: str, key_id: str) -> ApiKey:
        key = self._store.get(key_id)
        if key is None or key.org_id != org_id:
            raise NotFound(f"No API key with id '{key_id}'.")
        return key

    def revoke(self, org_id: str, key_id: str) -> ApiKey:
        key = self.get(org_id, key_id)
        self._store.revoke(key.id, int(self._clock.now()))
        return self.get(org_id, key_id)
