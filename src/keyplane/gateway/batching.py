"""Batching writes off the request path.

- ``GroupCommit``: callers await their item's durable write; items arriving while a write runs are
  written together by the next one, so the database sees one transaction per batch, not per request.
- ``BatchWriter``: fire-and-forget items written every few hundred milliseconds by a background loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from keyplane.errors import StoreUnavailable

T = TypeVar("T")
log = logging.getLogger("keyplane.batching")


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[Sequence[T]], object], *, max_batch: int = 1000) -> None:
        self._write = write
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._draining = False

    async def submit(self, item: T) -> None:
        """Returns once ``item`` is durably written. Raises what the write raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = (
                    self._pending[: self._max_batch],
                    self._pending[self._max_batch :],
                )
                try:
                    await asyncio.to_thread(self._write, [item for item, _ in batch])
                except Exception as exc:  # every waiter learns the write failed
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._draining = False


class BatchWriter(Generic[T]):
    def __init__(self, write: Callable[[Sequence[T]], int], *, batch_size: int = 500) -> None:
        self._write = write
        self._batch_size = batch_size
        self._queue: deque[T] = deque()
        self._lock = asyncio.Lock()
        self.written = 0

    def submit(self, item: T) -> None:
        """Queues one item; never blocks the request."""
        self._queue.append(item)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> int:
        """Writes everything queued so far; returns how many items were stored.

        Raises StoreUnavailable (the items stay queued and are retried by the next flush)."""
        async with self._lock:
            stored = 0
            while self._queue:
                batch = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
                stored += await asyncio.to_thread(self._write, batch)
                for _ in batch:
                    self._queue.popleft()
            self.written += stored
            return stored

    async def flush_quietly(self) -> None:
        try:
            await self.flush()
        except StoreUnavailable:
            log.warning("batch write failed; %d items kept queued", len(self._queue))
