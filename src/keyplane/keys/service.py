"""Creating, listing and revoking keys (the management side, not the hot path)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from keyplane.clock import Clock
from keyplane.errors import InvalidRequest, NotFound
from keyplane.keys import format as keyfmt
from keyplane.keys import permissions
from keyplane.keys.access import ip_allowlist, model_allowlist
from keyplane.keys.models import ApiKey
from keyplane.keys.ports import KeyStore
from keyplane.text import refuse_control_characters

MAX_EXPIRES_IN_S = 365 * 24 * 3600  # OpenAI's cap for expires_in_seconds
MAX_GRACE_S = 7 * 24 * 3600


def _restrictions(
    scopes: Sequence[str] | None, models: Sequence[str] | None, cidrs: Sequence[str] | None
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None, tuple[str, ...] | None]:
    """Validates and normalizes a key's restrictions. Raises InvalidRequest."""
    try:
        checked_scopes = permissions.validate(scopes) if scopes else None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="scopes") from None
    return checked_scopes, model_allowlist(models), ip_allowlist(cidrs)


def _key_name(name: str) -> str:
    """A key's name, trimmed. Raises InvalidRequest."""
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidRequest("A key name must have 1 to 200 characters.", param="name")
    return refuse_control_characters(name, "A key name", "name")


class KeyService:
    def __init__(self, store: KeyStore, pepper: bytes | keyfmt.Peppers, clock: Clock) -> None:
        self._store = store
        self._peppers = keyfmt.Peppers(pepper) if isinstance(pepper, bytes) else pepper
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
        scopes: Sequence[str] | None = None,
        allowed_models: Sequence[str] | None = None,
        allowed_cidrs: Sequence[str] | None = None,
        rotated_from: str | None = None,
    ) -> tuple[ApiKey, str]:
        """Returns the stored key and its full secret text, which is never available again."""
        name = _key_name(name)
        if expires_in_s is not None and not 0 < expires_in_s <= MAX_EXPIRES_IN_S:
            raise InvalidRequest(
                f"expires_in_seconds must be between 1 and {MAX_EXPIRES_IN_S}.",
                param="expires_in_seconds",
            )
        if (kind is keyfmt.KeyKind.ADMIN) != (project_id is None):
            raise InvalidRequest("Admin keys belong to an organization, other keys to a project.")
        text, parsed = keyfmt.generate(kind)
        now = int(self._clock.now())
        secret_hash, pepper_id = self._peppers.hash(parsed.secret)
        key = ApiKey(
            id=keyfmt.key_id(parsed.public_id),
            kind=kind,
            org_id=org_id,
            project_id=project_id,
            owner_type=owner_type,
            owner_id=owner_id,
            name=name,
            secret_hash=secret_hash,
            redacted_value=keyfmt.redact(text),
            created_at=now,
            created_by=created_by,
            expires_at=None if expires_in_s is None else now + expires_in_s,
            rotated_from=rotated_from,
            pepper_id=pepper_id,
        )
        s, m, c = _restrictions(scopes, allowed_models, allowed_cidrs)
        key = dataclasses.replace(key, scopes=s, allowed_models=m, allowed_cidrs=c)
        self._store.add(key)
        return key, text

    def restrict(
        self,
        org_id: str,
        key_id: str,
        *,
        scopes: Sequence[str] | None,
        allowed_models: Sequence[str] | None,
        allowed_cidrs: Sequence[str] | None,
        name: str | None = None,
    ) -> ApiKey:
        """Replaces a key's permissions, allowed models and IP allowlist (None: no restriction),
        and its name if ``name`` is given."""
        key = self.get(org_id, key_id)
        s, m, c = _restrictions(scopes, allowed_models, allowed_cidrs)
        new_name = key.name if name is None else _key_name(name)
        changed = dataclasses.replace(
            key, name=new_name, scopes=s, allowed_models=m, allowed_cidrs=c
        )
        self._store.update(changed, int(self._clock.now()))
        return changed

    def rotate(
        self, org_id: str, key_id: str, *, grace_s: int, created_by: str | None
    ) -> tuple[ApiKey, str]:
        """Issues a new secret for a key: a new key with the same name, project, owner and
        restrictions; the old one keeps working for ``grace_s`` seconds (0 to 7 days), then stops
        everywhere. Returns the new key and its secret (shown once)."""
        if not 0 <= grace_s <= MAX_GRACE_S:
            raise InvalidRequest(
                "The grace period is between 0 and 7 days.", param="grace_period_seconds"
            )
        old = self.get(org_id, key_id)
        now = int(self._clock.now())
        if not old.is_usable(now):
            raise InvalidRequest(
                f"The key {old.redacted_value} is revoked or expired: create a new one."
            )
        remaining = None if old.expires_at is None else max(old.expires_at - now, 1)
        new, secret = self.create(
            kind=old.kind, org_id=old.org_id, project_id=old.project_id, name=old.name,
            owner_type=old.owner_type, owner_id=old.owner_id, created_by=created_by,
            expires_in_s=remaining, scopes=old.scopes, allowed_models=old.allowed_models,
            allowed_cidrs=old.allowed_cidrs, rotated_from=old.id,
        )  # fmt: skip
        if grace_s == 0:
            self._store.revoke(old.id, now)
        else:
            ends = now + grace_s if old.expires_at is None else min(old.expires_at, now + grace_s)
            self._store.update(dataclasses.replace(old, expires_at=ends), now)
        return new, secret

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
