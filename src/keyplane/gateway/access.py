"""Who may call what from where: IP allowlists, permissions (scopes) and allowed models, at the
organization, project and key levels — a request must pass every level that is set.

Failure policy: these are security checks, so they fail closed — if a policy cannot be read the
request gets 503, never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from keyplane import reads
from keyplane.gateway.asgi import Scope
from keyplane.gateway.errors import ApiError, model_not_found
from keyplane.keys import network, permissions
from keyplane.keys.access import NO_POLICY, AccessPolicy, AccessPolicyStore, model_allowed
from keyplane.keys.models import ApiKey

# A key's organization and project policies (the project's is NO_POLICY for keys without one).
Levels = tuple[AccessPolicy, AccessPolicy]
_MAX_CACHED = 100_000


class AccessGuard:
    def __init__(self, store: AccessPolicyStore, trusted_proxies: Sequence[str]) -> None:
        self._store = store
        self._trusted = network.parse_networks(trusted_proxies)
        self._policies: dict[tuple[str, str], AccessPolicy] = {}
        self._levels: dict[tuple[str, str | None], Levels] = {}  # (org id, project id) → both
        self._addresses: dict[tuple[str | None, str | None], str | None] = {}
        self._epoch = 0  # bumped by forget(): a read that overlapped a change is not cached
        self._reads: reads.SharedReads[tuple[str, str, int], AccessPolicy] = reads.SharedReads()

    def client_ip(self, scope: Scope) -> str | None:
        """The caller's address: the socket peer, or X-Forwarded-For through trusted proxies.
        Worked out once per (peer, X-Forwarded-For): a gateway sees the same few over and over."""
        peer = scope.get("client")
        host = peer[0] if peer else None
        forwarded = network.forwarded_for(scope["headers"]) if self._trusted else None
        seen = (host, forwarded)
        if seen in self._addresses:
            return self._addresses[seen]
        addr = network.client_address(host, forwarded, self._trusted)
        if len(self._addresses) >= 4096:
            self._addresses.clear()
        shown = self._addresses[seen] = None if addr is None else str(addr)
        return shown

    async def levels(self, key: ApiKey) -> Levels:
        """The key's organization and project policies (cached until the change feed says)."""
        cached = self._levels.get((key.org_id, key.project_id))
        if cached is not None:
            return cached
        epoch = self._epoch
        org = await self._policy("org", key.org_id)
        project = await self._policy("project", key.project_id) if key.project_id else NO_POLICY
        if epoch == self._epoch:
            if len(self._levels) >= _MAX_CACHED:
                self._levels.clear()
            self._levels[(key.org_id, key.project_id)] = (org, project)
        return org, project

    @staticmethod
    def check_ip(levels: Levels, key: ApiKey, client_ip: str | None) -> None:
        """Raises 403 unless the address passes the organization's, project's and key's lists."""
        org, project = levels
        if (
            org.allowed_cidrs is None
            and project.allowed_cidrs is None
            and key.allowed_cidrs is None
        ):
            return
        addr = network.parse_address(client_ip)
        for cidrs, level in (
            (org.allowed_cidrs, "organization"),
            (project.allowed_cidrs, "project"),
            (key.allowed_cidrs, "API key"),
        ):
            if cidrs is not None and not network.allowed(addr, network.cached_networks(cidrs)):
                raise ApiError(
                    403,
                    f"Access forbidden: the IP address {client_ip or 'unknown'} is not allowed by this {level}'s IP allowlist.",
                    type="invalid_request_error",
                    code="ip_not_allowed",
                )

    @staticmethod
    def check_permission(key: ApiKey, group: permissions.Group, access: permissions.Access) -> None:
        lacking = permissions.missing(key.scopes, group, access)
        if lacking is not None:
            raise ApiError(
                401,
                f"You have insufficient permissions for this operation. Missing scopes: {lacking}.",
                code="insufficient_permissions",
            )

    @staticmethod
    def check_model(levels: Levels, key: ApiKey, model: str) -> None:
        if not AccessGuard.model_allowed(levels, key, model):
            raise model_not_found(model)

    @staticmethod
    def model_allowed(levels: Levels, key: ApiKey, model: str) -> bool:
        org, project = levels
        return model_allowed(
            model, (org.allowed_models, project.allowed_models, key.allowed_models)
        )

    def forget(self, scope_id: str | None) -> None:
        """Drops the cached policies of an organization or project that changed (None: all)."""
        self._epoch += 1
        if scope_id is None:
            self._policies.clear()
            self._levels.clear()
            return
        for cached in [k for k in self._policies if k[1] == scope_id]:
            del self._policies[cached]
        for pair in [p for p in self._levels if scope_id in p]:
            del self._levels[pair]

    async def _policy(self, scope_type: str, scope_id: str) -> AccessPolicy:
        cached = self._policies.get((scope_type, scope_id))
        if cached is None:
            epoch = self._epoch
            cached = await self._reads.read(
                (scope_type, scope_id, epoch), self._store.policy, scope_type, scope_id
            )
            if epoch == self._epoch:
                self._policies[(scope_type, scope_id)] = cached
        return cached
