"""One usage record per forwarded request."""

from __future__ import annotations

import enum
from typing import NamedTuple


class Outcome(enum.StrEnum):
    COMPLETED = "completed"  # the upstream answered (any status) and the client got it all
    CLIENT_DISCONNECTED = "client_disconnected"  # billed for what was streamed before
    UPSTREAM_BROKEN = "upstream_broken"  # the stream broke mid-way; billed for what arrived
    UPSTREAM_UNREACHABLE = "upstream_unreachable"  # never got an answer; costs nothing
    GATEWAY_LOST = "gateway_lost"  # the gateway died mid-request; billed at its hold by the sweeper


class UsageRecord(NamedTuple):
    request_id: str
    created_at: int
    org_id: str
    project_id: str | None
    key_id: str
    owner_type: str
    owner_id: str
    model: str
    endpoint: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    status: int
    latency_ms: int
    client_ip: str | None
    cost_micro_usd: int
    stream: bool
    outcome: Outcome
    tokens_estimated: bool = False  # True when counted by keyplane, not reported by the upstream
    period: str = ""  # UTC month of admission (YYYY-MM): the month its spend counts in
