"""Who may call what from where: IP allowlists, permissions (scopes) and allowed models, at the
organization, project and key levels — a request must pass every level that is set.

Failure policy: these are security checks, so they fail closed — if a policy cannot be read the
request gets 503, never a pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from keyplane.gateway.asgi import Scope, header
from keyplane.gateway.errors import ApiError, model_not_found
from keyplane.keys import network, permissions
from keyplane.keys.access import AccessPolicy, AccessPolicyStore, model_allowed
from keyplane.keys.models import ApiKey


class AccessGuard:
    def __init__(self, store: AccessPolicyStore, trusted_proxies: Sequence[str]) -> None:
        self._store = store
        self._trusted = network.parse_networks(trusted_proxies)
        self._policies: dict[tuple[str, str], AccessPolicy] = {}

    def client_ip(self, scope: Scope) -> str | None:
        """The caller's address: the socket peer, or X-Forwarded-For through trusted proxies."""
        peer = scope.get("client")
        forwarded = header(scope, b"x-forwarded-for") if self._trusted else None
        addr = network.client_address(
            peer[0] if peer else None,
            forwarded.decode("latin-1") if forwarded else None,
            self._trusted,
        )
        return None if addr is None else str(addr)

    async def check_ip(self, key: ApiKey, client_ip: str | None) -> None:
        """Raises 403 unless the address passes the organization's, project's and key's lists."""
        org, project = await self._levels(key)
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

    async def check_model(self, key: ApiKey, model: str) -> None:
        if not await self.model_allowed(key, model):
            raise model_not_found(model)

    async def model_allowed(self, key: ApiKey, model: str) -> bool:
        org, project = await self._levels(key)
        return model_allowed(
            model, (org.allowed_models, project.allowed_models, key.allowed_models)
        )

    def forget(self, scope_id: str | None) -> None:
        if scope_id is None:
            self._policies.clear()
            return
        for cached in [k for k in self._policies if k[1] == scope_id]:
            del self._policies[cached]

    async def _levels(self, key: ApiKey) -> tuple[AccessPolicy, AccessPolicy]:
        org = await self._policy("org", key.org_id)
        project = (
            await self._policy("project", key.project_id) if key.project_id else AccessPolicy()
        )
        return org, project

    async def _policy(self, scope_type: str, scope_id: str) -> AccessPolicy:
        cached = self._policies.get((scope_type, scope_id))
        if cached is None:
            cached = await asyncio.to_thread(self._store.policy, scope_type, scope_id)
            self._policies[(scope_type, scope_id)] = cached
        return cached
