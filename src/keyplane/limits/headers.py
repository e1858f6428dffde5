"""How a rate-limit decision is shown to clients, in OpenAI's words and header formats.

The official SDKs read these: ``retry-after-ms`` / ``retry-after`` set their wait before retrying a
429, and ``x-should-retry: false`` stops them retrying a request that can never fit.
"""

from __future__ import annotations

import math

from keyplane.limits.ratelimit import Decision, Dimension

_LABEL = {
    Dimension.REQUESTS: "requests per min (RPM)",
    Dimension.TOKENS: "tokens per min (TPM)",
    Dimension.REQUESTS_PER_DAY: "requests per day (RPD)",
    Dimension.IMAGES: "images per min (IPM)",
    Dimension.AUDIO_MB: "audio megabytes per min",
}
_SCOPE = {"org": "organization", "project": "project", "key": "API key"}


def _ceil_ms(seconds: float) -> int:
    # Rounds up, but not for the sub-microsecond noise of Unix-time floats (ulp ~0.24 µs).
    return max(0, math.ceil(seconds * 1000 - 1e-3))


def format_reset(seconds: float) -> str:
    """Returns a duration the way OpenAI writes its reset headers (Go's ``time.Duration``, rounded
    up to whole milliseconds): ``6ms``, ``1s``, ``1.5s``, ``1m2s``, ``6m0s``, ``1h0m0s``."""
    ms = _ceil_ms(seconds)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _reset(seconds: float) -> bytes:
    ms = _ceil_ms(seconds)
    if ms < 1000:  # (the usual case, without format_reset's str)
        return b"%dms" % ms if ms else b"0s"
    return format_reset(seconds).encode()


_LIMIT_REQUESTS, _REMAINING_REQUESTS, _RESET_REQUESTS = (
    f"x-ratelimit-{what}-requests".encode() for what in ("limit", "remaining", "reset")
)
_LIMIT_TOKENS, _REMAINING_TOKENS, _RESET_TOKENS = (
    f"x-ratelimit-{what}-tokens".encode() for what in ("limit", "remaining", "reset")
)


def rate_limit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """Returns the ``x-ratelimit-*`` headers for any answer, plus the retry headers on a 429.

    In OpenAI's order (limits, remainings, resets; requests before tokens). A triple is left out
    when no scope limits that dimension. (Spelt out: this runs for every request.)"""
    r, t = decision.requests, decision.tokens
    out: list[tuple[bytes, bytes]] = []
    if r is not None:
        out.append((_LIMIT_REQUESTS, b"%d" % r.limit))
    if t is not None:
        out.append((_LIMIT_TOKENS, b"%d" % t.limit))
    if r is not None:
        out.append((_REMAINING_REQUESTS, b"%d" % r.remaining))
    if t is not None:
        out.append((_REMAINING_TOKENS, b"%d" % t.remaining))
    if r is not None:
        out.append((_RESET_REQUESTS, _reset(r.reset_s)))
    if t is not None:
        out.append((_RESET_TOKENS, _reset(t.reset_s)))
    rejection = decision.rejection
    if rejection is not None:
        if rejection.retry_after is None:
            out.append((b"x-should-retry", b"false"))
        else:
            wait_ms = max(1, _ceil_ms(rejection.retry_after))
            out.append((b"retry-after", str(math.ceil(wait_ms / 1000)).encode()))
            out.append((b"retry-after-ms", str(wait_ms).encode()))
    return out


def rejection_message(model: str, org_id: str, decision: Decision) -> str:
    """Returns OpenAI's ``rate_limit_exceeded`` message for a rejected decision, naming the project
    or key when their lower limit was the one reached."""
    rejection = decision.rejection
    if rejection is None:
        raise ValueError("the decision admitted the request")
    where = f"organization {org_id}"
    kind, _, rest = rejection.scope_id.partition(":")
    owner = rest.partition(":")[0]
    if kind in ("project", "key") and owner:
        where = f"{_SCOPE[kind]} {owner} of {where}"
    label = _LABEL[rejection.dimension]
    if rejection.too_large:
        what = "input or output tokens" if rejection.dimension is Dimension.TOKENS else "request"
        return (
            f"Request too large for {model} in {where} on {label}: Limit {rejection.limit}, "
            f"Requested {rejection.requested}. The {what} must be reduced in order to run "
            "successfully."
        )
    wait = format_reset(rejection.retry_after or 0.0)
    return (
        f"Rate limit reached for {model} in {where} on {label}: Limit {rejection.limit}, "
        f"Used {rejection.used}, Requested {rejection.requested}. Please try again in {wait}."
    )
