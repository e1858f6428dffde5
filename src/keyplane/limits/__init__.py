"""Limits: usage tiers and per-model rate limits (GCRA), as pure rules plus an in-process limiter.

Budgets and the usage limit's money checks live with billing; this slice decides how many
requests, tokens, images and audio megabytes a scope may take per minute or day.
"""

from keyplane.limits.headers import format_reset, rate_limit_headers, rejection_message
from keyplane.limits.ratelimit import (
    UNLIMITED,
    Cost,
    Decision,
    Dimension,
    Headroom,
    InMemoryRateLimiter,
    LimiterUnavailable,
    LimitScope,
    ModelLimits,
    RateLimiter,
    Rejection,
    Ticket,
    burst_for,
    effective,
    limits_from,
    raised_fields,
    scope_id,
)
from keyplane.limits.tiers import Tier, TierProgress, TierTable, base_model

__all__ = [
    "UNLIMITED",
    "Cost",
    "Decision",
    "Dimension",
    "Headroom",
    "InMemoryRateLimiter",
    "LimitScope",
    "LimiterUnavailable",
    "ModelLimits",
    "RateLimiter",
    "Rejection",
    "Ticket",
    "Tier",
    "TierProgress",
    "TierTable",
    "base_model",
    "burst_for",
    "effective",
    "format_reset",
    "limits_from",
    "raised_fields",
    "rate_limit_headers",
    "rejection_message",
    "scope_id",
]
