"""Writing an organization's keys for OrgService: creating, changing, rotating and revoking keys
it has already found in their organization and project, each change audited in its own
transaction (``AuditService.atomic``); and the shapes in which the audit log shows a key (the
``keyplane`` command records the same)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from keyplane.accounts.org_ports import KeyLimits
from keyplane.audit.models import Actor
from keyplane.audit.service import AuditService
from keyplane.errors import InvalidRequest
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.keys.service import KeyService
from keyplane.limits.ratelimit import LimitOutOfRange, ModelLimits, with_changes


def key_data(key: ApiKey) -> dict[str, Any]:
    """A key as the audit log shows it (the ``keyplane`` command records the same)."""
    return {
        "name": key.name,
        "kind": key.kind.value,
        "redacted_value": key.redacted_value,
        "owner": {"type": key.owner_type, "id": key.owner_id},
        "expires_at": key.expires_at,
    }


class Unchanged:
    """Marks an update argument the caller did not give (None means "remove the restriction")."""


UNCHANGED = Unchanged()


def key_access(key: ApiKey) -> dict[str, Any]:
    """A key's permissions and allowlists as the audit log shows them."""
    return {
        "scopes": list(key.scopes or ()),
        "allowed_models": None if key.allowed_models is None else list(key.allowed_models),
        "allowed_ips": None if key.allowed_cidrs is None else list(key.allowed_cidrs),
    }


def created_key_data(key: ApiKey) -> dict[str, Any]:
    """A new key as its ``api_key.created`` entry shows it: what it is and what it may do."""
    return {**key_data(key), **key_access(key)}


def limits_data(limits: ModelLimits | None) -> dict[str, int | None]:
    """A key's limits as the audit log shows them."""
    limits = limits or ModelLimits()
    return {"rpm": limits.rpm, "tpm": limits.tpm, "rpd": limits.rpd}


class OrgKeys:
    def __init__(
        self,
        keys: KeyService,
        audit: AuditService,
        *,
        require_can_create_keys: Callable[[str], None],
        key_limits: KeyLimits | None,
        require_org_verified: Callable[[str], None],
    ) -> None:
        self._keys = keys
        self._audit = audit
        # Raises unless the user may own keys (their email is verified): BRIEF C1.
        self._require_can_create_keys = require_can_create_keys
        self._key_limits = key_limits
        self._require_org_verified = require_org_verified

    def create(
        self, actor: Actor, org_id: str, project_id: str | None, kind: KeyKind, name: str,
        *, owner_type: str, owner_id: str, expires_in_s: int | None = None,
        scopes: Sequence[str] | None = None, allowed_models: Sequence[str] | None = None,
        allowed_ips: Sequence[str] | None = None,
    ) -> tuple[ApiKey, str]:  # fmt: skip
        self._require_org_verified(org_id)
        if owner_type == "user":
            self._require_can_create_keys(owner_id)
        with self._audit.atomic():
            key, text = self._keys.create(
                kind=kind, org_id=org_id, project_id=project_id, name=name,
                owner_type=owner_type, owner_id=owner_id, created_by=actor.user_id,
                expires_in_s=expires_in_s, scopes=scopes, allowed_models=allowed_models,
                allowed_cidrs=allowed_ips,
            )  # fmt: skip
            self._audit.record(
                org_id, actor, "api_key.created", target_id=key.id, project_id=project_id,
                details={"data": created_key_data(key)},
            )  # fmt: skip
        return key, text

    def update(
        self, actor: Actor, org_id: str, project_id: str, key: ApiKey, *,
        scopes: Sequence[str] | Unchanged | None, allowed_models: Sequence[str] | Unchanged | None,
        allowed_ips: Sequence[str] | Unchanged | None, limits: Mapping[str, int | None],
        name: str | Unchanged,
    ) -> ApiKey:  # fmt: skip
        """``OrgService.update_project_key`` once the key is found: everything is checked before
        anything changes, and nothing is recorded when nothing changed."""
        before: dict[str, Any] = key_access(key)
        after: dict[str, Any] = {}
        renamed = not isinstance(name, Unchanged)
        if renamed:
            before["name"] = key.name
        key_limits = self._key_limits if limits else None
        new_limits: ModelLimits | None = None
        if key_limits is not None:
            old_limits = key_limits.key_limits(key.id)
            try:  # checked before anything changes
                new_limits = with_changes(old_limits, limits)
            except LimitOutOfRange as exc:
                raise InvalidRequest(str(exc), param=exc.param) from None
            before["rate_limits"] = limits_data(old_limits)
            after["rate_limits"] = limits_data(new_limits)
        with self._audit.atomic():
            updated = self._keys.restrict(
                org_id, key.id,
                scopes=key.scopes if isinstance(scopes, Unchanged) else scopes,
                allowed_models=key.allowed_models if isinstance(allowed_models, Unchanged) else allowed_models,
                allowed_cidrs=key.allowed_cidrs if isinstance(allowed_ips, Unchanged) else allowed_ips,
                name=None if isinstance(name, Unchanged) else name,
            )  # fmt: skip
            if renamed:
                after["name"] = updated.name
            if key_limits is not None:
                key_limits.set_key_limits(org_id, key.id, new_limits)
            after = {**key_access(updated), **after}
            if after != before:  # (a form saved unchanged records nothing)
                self._audit.record(
                    org_id, actor, "api_key.updated", target_id=key.id, project_id=project_id,
                    details={"before": before, "after": after},
                )  # fmt: skip
        return updated

    def limits(self, key_id: str) -> ModelLimits | None:
        return None if self._key_limits is None else self._key_limits.key_limits(key_id)

    def rotate(
        self, actor: Actor, org_id: str, project_id: str | None, old: ApiKey, *, grace_s: int
    ) -> tuple[ApiKey, str]:
        """A new secret for ``old``, with its permissions, allowlists and rate limits
        (``project_id`` None: an admin key)."""
        with self._audit.atomic():
            new, text = self._keys.rotate(org_id, old.id, grace_s=grace_s, created_by=actor.user_id)
            if self._key_limits is not None and (limits := self._key_limits.key_limits(old.id)):
                self._key_limits.set_key_limits(org_id, new.id, limits)
            self._audit.record(
                org_id, actor, "api_key.rotated", target_id=new.id, project_id=project_id,
                details={"data": {**key_data(new), "rotated_from": old.id, "grace_period_seconds": grace_s}},
            )  # fmt: skip
        return new, text

    def delete(self, actor: Actor, key: ApiKey) -> ApiKey:
        with self._audit.atomic():
            revoked = self._keys.revoke(key.org_id, key.id)
            self._audit.record(
                key.org_id, actor, "api_key.deleted", target_id=key.id, project_id=key.project_id,
                details={"data": key_data(key)},
            )  # fmt: skip
        return revoked

    def revoke_all(self, keys: Sequence[ApiKey]) -> list[str]:
        """Revokes the usable ones among ``keys``; returns their ids (for the audit entry)."""
        done = []
        for key in keys:
            if key.revoked_at is None:
                self._keys.revoke(key.org_id, key.id)
                done.append(key.id)
        return done
