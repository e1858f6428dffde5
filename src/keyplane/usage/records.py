"""One usage record per forwarded request."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final

from keyplane.values import Value


class Outcome(enum.StrEnum):
    COMPLETED = "completed"  # the upstream answered (any status) and the client got it all
    CLIENT_DISCONNECTED = "client_disconnected"  # billed for what was streamed before
    UPSTREAM_BROKEN = "upstream_broken"  # the stream broke mid-way; billed for what arrived
    UPSTREAM_UNREACHABLE = "upstream_unreachable"  # never got an answer; costs nothing
    GATEWAY_LOST = "gateway_lost"  # the gateway died mid-request; billed at its hold by the sweeper


@final
class UsageRecord(Value):
    """Its fields are the ``usage_records`` table's columns, in order."""

    FIELDS = (
        "request_id", "created_at", "org_id", "project_id", "key_id", "owner_type", "owner_id",
        "model", "endpoint", "input_tokens", "cached_input_tokens", "output_tokens", "status",
        "latency_ms", "client_ip", "cost_micro_usd", "stream", "outcome", "tokens_estimated",
        "period", "images", "audio_seconds", "characters", "input_audio_tokens",
        "output_audio_tokens",
    )  # fmt: skip
    __slots__ = FIELDS

    def __init__(
        self,
        request_id: str,
        created_at: int,
        org_id: str,
        project_id: str | None,
        key_id: str,
        owner_type: str,
        owner_id: str,
        model: str,
        endpoint: str,
        input_tokens: int,
        cached_input_tokens: int,
        output_tokens: int,
        status: int,
        latency_ms: int,
        client_ip: str | None,
        cost_micro_usd: int,
        stream: bool,
        outcome: Outcome,
        tokens_estimated: bool = False,  # True when counted by keyplane, not reported upstream
        period: str = "",  # UTC month of admission (YYYY-MM): the month its spend counts in
        images: int = 0,  # images generated (billed per image)
        audio_seconds: int = 0,  # audio transcribed or translated (billed per minute)
        characters: int = 0,  # text spoken (text to speech, billed per character)
        # Of the input and output tokens, those the upstream reported as audio (a chat model's
        # audio in or out); counted to be shown, billed as the model's other tokens.
        input_audio_tokens: int = 0,
        output_audio_tokens: int = 0,
    ) -> None:
        self.request_id = request_id
        self.created_at = created_at
        self.org_id = org_id
        self.project_id = project_id
        self.key_id = key_id
        self.owner_type = owner_type
        self.owner_id = owner_id
        self.model = model
        self.endpoint = endpoint
        self.input_tokens = input_tokens
        self.cached_input_tokens = cached_input_tokens
        self.output_tokens = output_tokens
        self.status = status
        self.latency_ms = latency_ms
        self.client_ip = client_ip
        self.cost_micro_usd = cost_micro_usd
        self.stream = stream
        self.outcome = outcome
        self.tokens_estimated = tokens_estimated
        self.period = period
        self.images = images
        self.audio_seconds = audio_seconds
        self.characters = characters
        self.input_audio_tokens = input_audio_tokens
        self.output_audio_tokens = output_audio_tokens


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """One UTC day's usage of one model (the dashboard's usage page)."""

    day: int  # days since 1970-01-01
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    images: int = 0
    audio_seconds: int = 0
    characters: int = 0


def units(images: int, audio_seconds: int, characters: int) -> str:
    """What a request (or a sum of them) was billed for besides tokens, for people: "2 images",
    "1 min 5 s of audio", "1,234 characters" (joined by " · "); "" when nothing."""
    parts = []
    if images:
        parts.append(f"{images:,} image{'s' if images != 1 else ''}")
    if audio_seconds:
        minutes, seconds = divmod(audio_seconds, 60)
        spoken = f"{minutes:,} min {seconds} s" if minutes else f"{seconds} s"
        parts.append(f"{spoken} of audio")
    if characters:
        parts.append(f"{characters:,} character{'s' if characters != 1 else ''}")
    return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """Usage added up over one time bucket and one combination of the grouped fields (the
    Admin API's usage and costs buckets); a field not grouped by is None."""

    start: int  # the bucket's first second
    project_id: str | None
    model: str | None
    key_id: str | None
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    owner_id: str | None = None  # the key's owner (a user, or a service account)
    images: int = 0  # images generated
    audio_seconds: int = 0  # audio transcribed or translated
    characters: int = 0  # text spoken
    input_audio_tokens: int = 0  # of the input tokens, audio
    output_audio_tokens: int = 0  # of the output tokens, audio
