"""What the Admin API's money routes share (credits, spend limits and alerts, billing settings,
payments).

Every money route is scoped to the caller's organization: an id that belongs to another
organization is answered exactly like an id that does not exist (404). Service calls do blocking
database I/O, so each route runs its reads and writes in one worker thread (``asyncio.to_thread``)
and keeps the event loop free. Money changes end with ``applied`` so this process's gateway
enforces them on the very next request instead of at its next poll.
"""

from __future__ import annotations

import logging

from keyplane.errors import StoreUnavailable
from keyplane.web.auth import AdminContext

log = logging.getLogger("keyplane.admin")


async def applied(ctx: AdminContext) -> None:
    # The change is already stored; if the refresh cannot read it back now, the gateway's own poll
    # applies it shortly, so the caller still gets the stored object rather than a 503.
    try:
        await ctx.on_money_change()
    except StoreUnavailable:
        log.warning("money change stored; the gateway will apply it at its next poll")
