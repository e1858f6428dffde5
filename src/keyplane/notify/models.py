"""An email waiting in (or delivered from) the outbox. Times are Unix seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboundEmail:
    id: str
    dedupe_key: str  # e.g. "threshold:<org>:<2026-11>:<threshold>"; one message per key, ever
    to: tuple[str, ...]
    subject: str
    body_text: str
    body_html: str | None
    created_at: int
    attempts: int  # failed delivery attempts so far
    next_attempt_at: int
    sent_at: int | None = None
    last_error: str | None = None
