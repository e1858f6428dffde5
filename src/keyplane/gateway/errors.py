"""OpenAI's error envelope, and the one table that maps domain errors onto it."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from keyplane.errors import (
    Conflict,
    IdempotencyKeyReused,
    InvalidApiKey,
    InvalidRequest,
    KeyplaneError,
    NotFound,
    SpendRefused,
    StoreUnavailable,
    TooManyFailures,
)

# Money refusals: (code, x-keyplane-limit). No Retry-After and x-should-retry: false, because
# retrying cannot help (the official SDKs honour x-should-retry) — unless only requests in flight
# stand in the way: then code "spend_held_in_flight" and a Retry-After, which the SDKs wait for.
_SPEND = {
    "credits": ("insufficient_quota", b"credits"),
    "usage_limit": ("insufficient_quota", b"usage_limit"),
    "org_budget": ("organization_spend_limit_exceeded", b"budget"),
    "project_budget": ("project_spend_limit_exceeded", b"budget"),
}


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """An answer in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def from_domain(exc: KeyplaneError) -> ApiError:
    if isinstance(exc, SpendRefused):
        code, limit = _SPEND[exc.scope]
        if exc.retry_after_s is not None:
            # Spread (the SDKs wait retry-after-ms): refused together, they would all retry at
            # the same instant, and most be refused together again.
            wait_ms = round(exc.retry_after_s * 1000 * (0.5 + random.random()))
            headers = (
                (b"x-keyplane-limit", limit),
                (b"retry-after", str(max(1, round(exc.retry_after_s))).encode()),
                (b"retry-after-ms", str(wait_ms).encode()),
            )
            return ApiError(
                429, exc.message, type="insufficient_quota", code="spend_held_in_flight",
                extra_headers=headers,
            )  # fmt: skip
        final = ((b"x-keyplane-limit", limit), (b"x-should-retry", b"false"))
        return ApiError(429, exc.message, type="insufficient_quota", code=code, extra_headers=final)
    if isinstance(exc, InvalidApiKey):
        return ApiError(401, exc.message, code="invalid_api_key")
    if isinstance(exc, TooManyFailures):
        wait = str(max(1, math.ceil(exc.retry_after_s))).encode()
        return ApiError(
            429,
            exc.message,
            code="too_many_failed_attempts",
            extra_headers=((b"retry-after", wait),),
        )
    if isinstance(exc, StoreUnavailable):
        return ApiError(
            503,
            "keyplane cannot reach its database right now; retry shortly.",
            type="server_error",
            code="service_unavailable",
        )
    if isinstance(exc, NotFound):
        return ApiError(404, exc.message, code="not_found", param=exc.param)
    if isinstance(exc, IdempotencyKeyReused):
        return ApiError(409, exc.message, code="idempotency_key_reused", param="Idempotency-Key")
    if isinstance(exc, Conflict):
        return ApiError(409, exc.message, code="conflict", param=exc.param)
    if isinstance(exc, InvalidRequest):
        return ApiError(400, exc.message, param=exc.param)
    return ApiError(500, "Internal error.", type="server_error")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def model_not_priced(model: str) -> ApiError:
    """A model the upstream serves that has no price here: it cannot be held against a balance
    or a budget, so it is not served (rather than served free)."""
    return ApiError(
        404,
        f"The model `{model}` has no price on this keyplane, so it cannot be used; an operator "
        "can add one (the price_files setting).",
        code="model_not_found",
        param="model",
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def missing_key() -> ApiError:
    return ApiError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        code="invalid_api_key",
    )
