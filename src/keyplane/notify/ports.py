"""What the notify slice needs from storage (the outbox) and from a mail server (the mailer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from keyplane.notify.models import OutboundEmail


class MailError(Exception):
    """The mail server did not take the message. The text names the cause, never a password."""


class Outbox(Protocol):
    def enqueue(
        self,
        dedupe_key: str,
        to: Sequence[str],
        subject: str,
        body_text: str,
        body_html: str | None = None,
        *,
        now: float,
    ) -> bool:
        """Stores a message due at ``now``; returns False (and stores nothing) when a message with
        this dedupe_key already exists. The database's unique constraint decides, so of many
        processes racing to enqueue the same key, exactly one gets True.

        Raises ValueError when ``to`` is empty; StoreUnavailable."""
        ...

    def claim_due(self, now: float, limit: int, lease_s: int) -> list[OutboundEmail]:
        """Leases up to ``limit`` unsent messages due at ``now`` for ``lease_s`` seconds and returns
        them, oldest due first. A leased message is returned to no other caller until the lease
        expires, so two dispatchers never send the same message at the same time.

        Raises StoreUnavailable."""
        ...

    def mark_sent(self, email_id: str, now: float) -> None:
        """Records delivery; the message is never claimed again. Raises StoreUnavailable."""
        ...

    def mark_failed(self, email_id: str, now: float, error: str, retry_at: float) -> None:
        """Counts a failed attempt, stores ``error`` and releases the lease; the message is due
        again at ``retry_at``. Does nothing to a message already sent. Raises StoreUnavailable."""
        ...


class Mailer(Protocol):
    def send(self, email: OutboundEmail) -> None:
        """Hands the message to the mail server; returns once the server has accepted it.

        Blocking (call it from a worker thread). Raises MailError."""
        ...
