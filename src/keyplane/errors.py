"""Domain errors. Each adapter (gateway, admin API, CLI) maps them to its own answer in one table."""

from __future__ import annotations


class KeyplaneError(Exception):
    """Base class; ``message`` is safe to show to the caller (never contains a secret)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidApiKey(KeyplaneError):
    pass


class TooManyFailures(KeyplaneError):
    """Too many failed authentications from one address; ``retry_after_s`` until it may try."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(KeyplaneError):
    pass


class Conflict(KeyplaneError):
    pass


class IdempotencyKeyReused(Conflict):
    """The Idempotency-Key was used with other parameters, or its first request is still running."""


class InvalidRequest(KeyplaneError):
    pass


class StoreUnavailable(KeyplaneError):
    """The database cannot be reached; callers answer 503, never 401."""


class SpendRefused(KeyplaneError):
    """A request would exceed the credit balance, a monthly budget or the usage limit.

    ``scope`` is one of ``keyplane.billing.wallet.Scope``'s values; ``retry_after_s`` is set when
    only requests in flight stand in the way (their holds are released as they finish)."""

    def __init__(self, scope: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.scope = scope
        self.retry_after_s = retry_after_s
