"""The stored form of an API key. The secret itself is never here, only its keyed hash."""

from __future__ import annotations

from dataclasses import dataclass

from keyplane.keys.format import KeyKind


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    kind: KeyKind
    org_id: str
    project_id: str | None
    owner_type: str  # "user" | "service_account"
    owner_id: str
    name: str
    secret_hash: str  # HMAC-SHA-256(pepper, secret), hex
    redacted_value: str
    created_at: int
    created_by: str | None
    expires_at: int | None = None
    revoked_at: int | None = None
    last_used_at: int | None = None
    last_used_ip: str | None = None
    scopes: tuple[str, ...] | None = None  # None or empty: All (keys/permissions.py)
    allowed_models: tuple[str, ...] | None = None  # None: every model the project allows
    allowed_cidrs: tuple[str, ...] | None = None  # None: any address the project and org allow
    rotated_from: str | None = None  # the key this one replaced
    # The id of the pepper secret_hash was made with (keys/format.py); None: stored before
    # keyplane recorded it (then any configured pepper is tried).
    pepper_id: str | None = None

    def is_usable(self, now: float) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def needs_rotation(self, now: float, max_age_s: int) -> bool:
        """Working keys older than the rotation policy are flagged ("rotate keys regularly")."""
        return self.is_usable(now) and now - self.created_at >= max_age_s

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.is_usable(now) else "expired"
