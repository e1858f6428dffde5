"""Who is calling the Admin API: the admin-key dependency every route shares, and the services it
reaches (looked up from the app, never built here, so tests can hand in fakes).

Only admin keys (``sk-kp-admin-…``) pass; the key's organization scopes everything the route does.
A database outage while the key is not cached answers 503, never 401 (BRIEF C12).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Protocol, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from keyplane.accounts.service import AccountService
from keyplane.billing.ports import MoneyStore
from keyplane.billing.service import BillingService
from keyplane.clock import Clock
from keyplane.gateway.errors import ApiError, missing_key
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.usage.ports import UsageStore
from keyplane.web.errors import AdminApiError

NOT_ADMIN = (
    "Project keys can only call the gateway (/v1/chat/completions, …); the Admin API needs an "
    "admin key (sk-kp-admin-…)."
)


class Authenticator(Protocol):
    async def authenticate(self, token: str, client_ip: str | None) -> ApiKey:
        """Returns the usable key for ``token``. Raises InvalidApiKey, StoreUnavailable."""
        ...

    def used(self, key: ApiKey, client_ip: str | None, now: float) -> None:
        """Records the key's use (its last_used_at and last_used_ip)."""
        ...


class AdminServices(Protocol):
    """What the Admin API uses from the composition root (``bootstrap.Container`` is one)."""

    @property
    def clock(self) -> Clock: ...

    @property
    def accounts(self) -> AccountService: ...

    @property
    def billing(self) -> BillingService: ...

    @property
    def money_store(self) -> MoneyStore: ...

    @property
    def usage_store(self) -> UsageStore: ...


@dataclass(frozen=True, slots=True)
class AdminContext:
    services: AdminServices
    auth: Authenticator
    # Makes this process's gateway apply a money change now rather than at its next poll.
    on_money_change: Callable[[], Awaitable[object]]
    # Told of each admin key's use and its client address (anomaly alerts: a new network).
    on_key_used: Callable[[ApiKey, str | None], None] = lambda key, client_ip: None


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated admin key and where the request came from (for the audit log)."""

    key: ApiKey
    client_ip: str | None

    @property
    def org_id(self) -> str:
        return self.key.org_id


def context(request: Request) -> AdminContext:
    return cast(AdminContext, request.app.state.admin)


Ctx = Annotated[AdminContext, Depends(context)]
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminKey",
    description="An admin key: `Authorization: Bearer sk-kp-admin-…`.",
)


async def admin_caller(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None:
        raise AdminApiError(missing_key())
    client_ip = request.client.host if request.client else None
    key = await ctx.auth.authenticate(credentials.credentials.strip(), client_ip)
    if key.kind is not KeyKind.ADMIN:
        raise AdminApiError(ApiError(401, NOT_ADMIN, code="invalid_api_key"))
    ctx.auth.used(key, client_ip, ctx.services.clock.now())
    ctx.on_key_used(key, client_ip)
    return Caller(key, client_ip)


Admin = Annotated[Caller, Depends(admin_caller)]
