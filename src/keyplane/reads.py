"""Database reads on the request path, bounded in time.

A database that stops answering without closing its connections (a firewall dropping packets, a
network split, another process holding SQLite's lock) would otherwise keep each request that needs
a read (a key not cached yet, an organization's first request) waiting for as long as that lasts.
Such a request gets 503 after ``READ_TIMEOUT_S`` instead, as when the database refuses outright;
the read itself goes on in its thread and is dropped.

Concurrent requests needing the same read (a burst of first requests on a gateway just started)
share one (``SharedReads``): read once each, the reads queued for the few worker threads, and on a
busy machine the last of them waited past the timeout, answering 503 with the database fine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

from keyplane.errors import StoreUnavailable

READ_TIMEOUT_S = 5.0

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


async def read(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker thread; StoreUnavailable if it takes over ``READ_TIMEOUT_S``."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), READ_TIMEOUT_S)
    except TimeoutError:
        raise StoreUnavailable("The database did not answer in time.") from None


class SharedReads(Generic[K, T]):
    """``read`` by key, shared: a caller asking for a key being read waits for that read. (A key
    should name what was read and when: a read that began before a change is not shared with
    callers that came after it.)"""

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[T]] = {}

    async def read(self, key: K, fn: Callable[..., T], *args: object) -> T:
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(read(fn, *args))
            self._pending[key] = pending
            pending.add_done_callback(partial(self._done, key))
        # (shielded: a caller that goes away, its client gone, does not cancel the others' read)
        return await asyncio.shield(pending)

    def _done(self, key: K, future: asyncio.Future[T]) -> None:
        del self._pending[key]
        if not future.cancelled():
            future.exception()  # (taken: every caller may have gone away)
