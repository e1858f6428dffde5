"""Database reads on the request path, bounded in time.

A database that stops answering without closing its connections (a firewall dropping packets, a
network split, another process holding SQLite's lock) would otherwise keep each request that needs
a read (a key not cached yet, an organization's first request) waiting for as long as that lasts.
Such a request gets 503 after ``READ_TIMEOUT_S`` instead, as when the database refuses outright;
the read itself goes on in its thread and is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from keyplane.errors import StoreUnavailable

READ_TIMEOUT_S = 5.0

T = TypeVar("T")


async def read(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker thread; StoreUnavailable if it takes over ``READ_TIMEOUT_S``."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), READ_TIMEOUT_S)
    except TimeoutError:
        raise StoreUnavailable("The database did not answer in time.") from None
