"""EmailDispatcher: drains the outbox into the mail server, retrying with backoff.

Delivery guarantee. A message is enqueued once per dedupe_key (the database's unique constraint
decides, across processes). A dispatcher leases a message before sending it, and a lease is
granted to one dispatcher at a time, so two dispatchers never send the same message
concurrently; once ``mark_sent`` commits, the message is never sent again. A refused or failed
send is counted and retried with exponential backoff until the server takes it.

The one window of at-least-once: a dispatcher that dies (or loses the database) after the mail
server accepted a message but before ``mark_sent`` committed leaves the lease to expire, and
then another dispatcher sends the message again. No protocol closes that window: SMTP has no
idempotency key. The stable Message-ID (see ``smtp.py``) lets many mail systems hide the copy.
The same happens if one send outlasts its lease, so ``lease_s`` (default 5 minutes) must stay
well above the SMTP timeout; each message is leased right before its own send for that reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
from collections.abc import Callable

from keyplane.clock import Clock
from keyplane.errors import StoreUnavailable
from keyplane.notify.ports import Mailer, MailError, Outbox

log = logging.getLogger(__name__)

BASE_DELAY_S = 5.0
MAX_DELAY_S = 15 * 60.0


def retry_delay(attempts: int, *, rand: Callable[[], float] = random.random) -> float:
    """Returns the seconds to wait after the ``attempts``-th failed try (1 for the first).

    5 s, 10 s, 20 s, … doubling up to 15 minutes, each scaled by a random factor in [0.5, 1) so
    that messages that failed together (a mail server outage) do not all retry together."""
    exponent = min(max(attempts, 1) - 1, 16)  # 5 s * 2**8 already exceeds the cap
    base = min(MAX_DELAY_S, BASE_DELAY_S * 2.0**exponent)
    return base * (0.5 + 0.5 * rand())


class EmailDispatcher:
    def __init__(
        self,
        outbox: Outbox,
        mailer: Mailer,
        clock: Clock,
        *,
        batch_size: int = 50,
        lease_s: int = 300,
    ) -> None:
        if batch_size < 1 or lease_s < 1:
            raise ValueError("batch_size and lease_s must be positive")
        self._outbox = outbox
        self._mailer = mailer
        # Its own thread: a slow mail server must not hold one of the few threads that do the
        # gateway's database work (settlement batches, change feeds).
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keyplane-smtp")
        self._clock = clock
        self._batch_size = batch_size
        self._lease_s = lease_s

    async def run_once(self) -> int:
        """Sends up to ``batch_size`` due messages; returns how many the mail server accepted.

        Raises StoreUnavailable (the messages in hand stay leased, and are retried after the
        lease expires)."""
        sent = 0
        for _ in range(self._batch_size):
            # Claim one message at a time: its lease starts right before its own send, so a
            # long batch against a slow server never outlives the lease of its last message.
            claimed = await asyncio.to_thread(
                self._outbox.claim_due, self._clock.now(), 1, self._lease_s
            )
            if not claimed:
                break
            email = claimed[0]
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._sender, self._mailer.send, email
                )
            except MailError as exc:
                attempts = email.attempts + 1
                now = self._clock.now()
                log.warning("email %s: attempt %d failed: %s", email.id, attempts, exc)
                await asyncio.to_thread(
                    self._outbox.mark_failed, email.id, now, str(exc), now + retry_delay(attempts)
                )
                continue
            await asyncio.to_thread(self._outbox.mark_sent, email.id, self._clock.now())
            sent += 1
        return sent

    async def run(self, stop: asyncio.Event, *, interval_s: float = 5.0) -> None:
        """Calls ``run_once`` every ``interval_s`` (at once again while batches come back full)
        until ``stop`` is set. A database outage is logged and retried, never fatal."""
        while not stop.is_set():
            try:
                sent = await self.run_once()
            except StoreUnavailable:
                log.warning("email outbox: the database is unavailable; retrying")
                sent = 0
            if sent >= self._batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
