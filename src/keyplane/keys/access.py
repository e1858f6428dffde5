"""Organization- and project-level access policy: allowed models and IP allowlists (BRIEF C2).

A request must pass every level that is set (organization, project, key): AND, never OR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from keyplane.errors import InvalidRequest
from keyplane.keys import network


def ip_allowlist(cidrs: Sequence[str] | None) -> tuple[str, ...] | None:
    """An IP allowlist checked and normalized (``network.allowlist``). Raises InvalidRequest."""
    try:
        return network.allowlist(cidrs)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="allowed_ips") from None


def model_allowlist(models: Sequence[str] | None) -> tuple[str, ...] | None:
    """A model allowlist checked, each model once (``[]``: no model). Raises InvalidRequest."""
    if models is None:
        return None
    if any(not m or len(m) > 200 for m in models):
        raise InvalidRequest("Allowed models are non-empty names.", param="allowed_models")
    if len(models) > network.MAX_ALLOWLIST:
        raise InvalidRequest(
            f"A model allowlist holds at most {network.MAX_ALLOWLIST:,} models.",
            param="allowed_models",
        )
    return tuple(dict.fromkeys(models))


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    allowed_models: tuple[str, ...] | None = None  # None: no restriction at this level
    allowed_cidrs: tuple[str, ...] | None = None


NO_POLICY = AccessPolicy()


class AccessPolicyStore(Protocol):
    def policy(self, scope_type: str, scope_id: str) -> AccessPolicy:
        """Returns the policy of an organization ("org") or a project ("project"); NO_POLICY when
        none is set. Raises StoreUnavailable."""
        ...

    def save_policy(
        self, org_id: str, scope_type: str, scope_id: str, policy: AccessPolicy, at: int
    ) -> None:
        """Stores a policy and announces the change on the change feed (kind "access")."""
        ...


def model_allowed(model: str, lists: Sequence[tuple[str, ...] | None]) -> bool:
    """True when every list that is set names the model."""
    for allowed in lists:  # noqa: SIM110 (a loop: no generator object per request)
        if allowed is not None and model not in allowed:
            return False
    return True


class AccessPolicyService:
    def __init__(self, store: AccessPolicyStore, now: Callable[[], float]) -> None:
        self._store = store
        self._now = now

    def policy(self, scope_type: str, scope_id: str) -> AccessPolicy:
        return self._store.policy(scope_type, scope_id)

    def set_policy(
        self, org_id: str, scope_type: str, scope_id: str, *, allowed_models: Sequence[str] | None,
        allowed_cidrs: Sequence[str] | None,
    ) -> AccessPolicy:  # fmt: skip
        """Replaces the allowed models and IP allowlist of an organization or a project.

        Raises InvalidRequest for a malformed CIDR or model name."""
        if scope_type not in ("org", "project"):
            raise InvalidRequest("An access policy belongs to an organization or a project.")
        policy = AccessPolicy(model_allowlist(allowed_models), ip_allowlist(allowed_cidrs))
        self._store.save_policy(org_id, scope_type, scope_id, policy, int(self._now()))
        return policy
