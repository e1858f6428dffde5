"""Usage records leave the request path through a buffer that a background task writes in batches.

What a crash can lose: records still in the buffer, i.e. at most ``usage_flush_interval_s``
(default 0.2 s) worth of requests, or a batch whose write was failing when the process died.
A batch that fails to write (database down) stays queued and is retried; duplicates are impossible
because the request id is the primary key.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from keyplane.errors import StoreUnavailable
from keyplane.usage.ports import UsageStore
from keyplane.usage.records import UsageRecord

log = logging.getLogger("keyplane.metering")


class UsageBuffer:
    def __init__(self, store: UsageStore, *, batch_size: int = 500) -> None:
        self._store = store
        self._batch_size = batch_size
        self._queue: deque[UsageRecord] = deque()
        self._lock = asyncio.Lock()
        self.written = 0

    def submit(self, record: UsageRecord) -> None:
        """Queues one record; never blocks the request."""
        self._queue.append(record)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> int:
        """Writes everything queued so far; returns how many records were stored.

        Raises StoreUnavailable (the records stay queued)."""
        async with self._lock:
            stored = 0
            while self._queue:
                batch = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
                stored += await asyncio.to_thread(self._store.add_many, batch)
                for _ in batch:
                    self._queue.popleft()
            self.written += stored
            return stored

    async def flush_quietly(self) -> None:
        try:
            await self.flush()
        except StoreUnavailable:
            log.warning("usage write failed; %d records kept queued", len(self._queue))
