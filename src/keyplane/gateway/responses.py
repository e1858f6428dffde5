"""The Responses API: what a request may ask of keyplane, its stored responses, whose each one
is, and the requests that name one.

The upstream stores a response unless the request says ``store: false``, and answers anyone with
keyplane's provider key about it. So keyplane notes the project of every response it forwards
(``ResponseOwners``: in memory at once, in the database within a flush interval) and serves a
stored response — read, deleted, its input items, its cancellation, a ``previous_response_id`` —
to keys of that project only, from the upstream that stored it. Another project's response, or
one keyplane never forwarded, is "not found", as OpenAI answers for another organization's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from keyplane import reads
from keyplane.clock import Clock
from keyplane.errors import StoreUnavailable
from keyplane.gateway.errors import ApiError, bad_request
from keyplane.keys.models import ApiKey
from keyplane.keys.permissions import Access
from keyplane.usage.stored import ResponseStore, StoredResponse

log = logging.getLogger("keyplane.gateway")

# Responses API tools keyplane forwards: those the client runs itself. The upstream's own (web and
# file search, code interpreter, image generation, computer use, remote MCP servers) charge fees
# per call and read their results into the context, which no hold made beforehand can bound.
CLIENT_TOOLS = frozenset({"function", "custom"})


PREFIX = "/v1/responses/"
# (method, what follows the id) → access the key needs: read for a GET, write otherwise.
ROUTES = {
    ("GET", ""): Access.READ,
    ("DELETE", ""): Access.WRITE,
    ("GET", "input_items"): Access.READ,
    ("POST", "cancel"): Access.WRITE,
}


DAY = 86_400
EXPIRE_BATCH = 5_000  # rows forgotten per write transaction (the write lock held briefly)


class ResponseOwners:
    def __init__(self, store: ResponseStore, clock: Clock, *, retention_days: int = 30) -> None:
        self._store = store
        self._clock = clock
        # A stored response is this project's for as long as the upstream keeps it: OpenAI keeps
        # one 30 days. Older, it is "not found", and ``expire`` forgets its row.
        self._retention_s = retention_days * DAY
        # Noted and not stored yet (kept until stored, so a lookup meanwhile finds them).
        self._pending: dict[str, StoredResponse] = {}

    def note(
        self, response_id: str, key: ApiKey, upstream: str, context_tokens: int | None = None
    ) -> None:
        """Notes a response as ``key``'s project's: when its id is first seen (a stream's first
        event), and again with ``context_tokens`` when its request ended."""
        self._pending[response_id] = StoredResponse(
            response_id, key.org_id, key.project_id or "", upstream, int(self._clock.now()),
            context_tokens,
        )  # fmt: skip

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Stores what was noted since the last flush (kept for the next on a database error)."""
        if not self._pending:
            return
        rows = list(self._pending.values())
        await asyncio.to_thread(self._store.add_responses, rows)
        for row in rows:
            if self._pending.get(row.id) is row:
                del self._pending[row.id]

    async def owned(self, response_id: str, key: ApiKey) -> StoredResponse | None:
        """The stored response if ``key``'s project created it, else None."""
        found = self._pending.get(response_id)
        if found is None:
            found = await reads.read(self._store.stored_response, response_id)
        if found is None or (found.org_id, found.project_id) != (key.org_id, key.project_id):
            return None
        if found.created_at < self._clock.now() - self._retention_s:
            return None
        return found

    async def expire(self) -> int:
        """Forgets the responses stored longer than the retention, a batch per transaction;
        returns how many."""
        cutoff = int(self._clock.now()) - self._retention_s
        forgotten = 0
        while True:
            done = await asyncio.to_thread(
                self._store.forget_responses_before, cutoff, EXPIRE_BATCH
            )
            forgotten += done
            if done < EXPIRE_BATCH:
                return forgotten

    async def forget(self, response_id: str) -> None:
        """The upstream deleted it: its row goes too (one left by a database error only names a
        response nobody can read any more)."""
        self._pending.pop(response_id, None)
        try:
            await asyncio.to_thread(self._store.forget_response, response_id)
        except StoreUnavailable:
            log.warning("could not forget the deleted response %s: the database is unavailable",
                        response_id)  # fmt: skip


def not_found(response_id: str) -> ApiError:
    return ApiError(
        404, f"Response with id '{response_id}' not found.", type="invalid_request_error"
    )


def previous_not_found(response_id: str) -> ApiError:
    return ApiError(
        404, f"Previous response with id '{response_id}' not found.",
        param="previous_response_id", code="previous_response_not_found",
    )  # fmt: skip


def check_request(payload: dict[str, Any]) -> None:
    """What a Responses API request may ask of keyplane: only what a hold can bound and keyplane
    can bill, and only this project's stored state."""
    previous = payload.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise bad_request(
            "'previous_response_id' must be a non-empty string.", param="previous_response_id"
        )
    if payload.get("background") not in (None, False):  # (an upstream may read "true" as true)
        raise bad_request(
            "keyplane does not forward background responses: their answer and cost come after the "
            "request ends. Send the request without 'background' (stream it if it runs long).",
            param="background", code="unsupported_parameter",
        )  # fmt: skip
    for name, what in (("conversation", "conversations"), ("prompt", "stored prompts")):
        if payload.get(name) is not None:
            raise bad_request(
                f"keyplane does not forward {what} ('{name}') yet: send the input itself, or "
                "continue a response with previous_response_id.",
                param=name, code="unsupported_parameter",
            )  # fmt: skip
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("'tools' must be an array.", param="tools")
    for tool in tools or ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str) or kind not in CLIENT_TOOLS:
            raise bad_request(
                f"keyplane forwards function and custom tools only, not '{kind}': the "
                "upstream's own tools charge per call and read their results into the context, "
                "which keyplane cannot hold money for in advance.",
                param="tools", code="unsupported_tool",
            )  # fmt: skip
    items = payload.get("input")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and _reference(item):
                raise bad_request(
                    "keyplane does not forward item references: they name items the upstream "
                    "stores, which keyplane cannot tell are this project's. Send the item itself.",
                    param="input", code="unsupported_parameter",
                )  # fmt: skip


def _reference(item: dict[str, Any]) -> bool:
    """Whether a Responses API input item names an item the upstream stores instead of carrying
    it: an ``item_reference``, or an item with no type (the API reads one as a reference) that is
    not a message."""
    kind = item.get("type")
    return kind == "item_reference" or (kind is None and "role" not in item)
