"""The Responses API (``POST /v1/responses``) and the responses it keeps.

* a request has ``input_tokens = text_tokens(instructions) + sum(3 + text_tokens(text of
  item)) + 3`` over its ``input`` items (see ``response_input_tokens``), a string ``input``
  being one item whose text is the string; the text of an item is its string ``content``, or
  the concatenated ``text`` of its ``input_text``/``output_text`` parts (other parts, such as
  ``input_image`` and ``input_file``, count 0), or its string ``output``
  (``function_call_output``); with ``previous_response_id``, plus that stored response's
  ``input_tokens + output_tokens`` (the context carried over);
* an answer has ``n = min(config.completion_tokens, max_output_tokens)`` output tokens of
  ``completion_text(n)``, as chat; it is ``"incomplete"`` when the cap is lower.

Responses are kept in memory per app (the ``MAX_STORED_RESPONSES`` most recent, unless
``store`` is false) for ``previous_response_id`` and the ``/v1/responses/{id}`` routes. A
streamed response is stored, complete, as soon as its request is answered: the simulator
knows the whole answer before it sends the first event.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.params import (
    JSON,
    RequestError,
    check_items,
    invalid_type,
    known_model,
    optional_bool,
    optional_str,
    positive_int,
)
from keyplane.simulator.replies import Reply, Stream
from keyplane.simulator.tokens import completion_text, content_text, pieces, text_tokens

MAX_STORED_RESPONSES = 10_000
_RESPONSE_TEXT_PARTS = frozenset({"input_text", "output_text"})


def _item_text(item: JSON) -> str:
    """A Responses input item's text: its content, else its string ``output``."""
    if item.get("content") is not None:
        return content_text(item["content"], _RESPONSE_TEXT_PARTS)
    output = item.get("output")
    return output if isinstance(output, str) else ""


def response_input_tokens(items: list[JSON], instructions: str | None = None) -> int:
    """Input tokens of a Responses request, before any context carried over from a previous
    response: ``text_tokens(instructions) + sum(3 + text_tokens(text)) + 3`` over the items."""
    items_tokens = sum(3 + text_tokens(_item_text(item)) for item in items)
    return text_tokens(instructions or "") + items_tokens + 3


@dataclass(frozen=True)
class _Stored:
    response: JSON
    items: list[JSON]


class ResponseStore:
    """The stored responses of one app, the ``limit`` most recent (oldest dropped first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, _Stored] = OrderedDict()

    def put(self, response: JSON, items: list[JSON]) -> None:
        self._entries[response["id"]] = _Stored(response, items)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> _Stored | None:
        return self._entries.get(response_id)

    def delete(self, response_id: str) -> None:
        self._entries.pop(response_id, None)


def _response_items(body: JSON) -> list[JSON]:
    """The ``input`` of a Responses request as items: a string is one user message."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid_type("input", "a string or an array", value)
    check_items(value, "input")
    return value


def _carried_tokens(store: ResponseStore, previous_id: str | None) -> int:
    """The context a ``previous_response_id`` brings along: that exchange's total tokens."""
    if previous_id is None:
        return 0
    previous = store.get(previous_id)
    if previous is None:
        message = f"Previous response with id '{previous_id}' not found."
        raise RequestError(404, message, "previous_response_id", "previous_response_not_found")
    usage = previous.response["usage"]
    return int(usage["input_tokens"]) + int(usage["output_tokens"])


def _is_message(item: JSON) -> bool:
    return item.get("type") == "message" or ("type" not in item and "role" in item)


def _stored_item(item: JSON) -> JSON:
    """An input item as ``input_items`` lists it: messages with content parts, all with ids."""
    if not _is_message(item):
        return {"id": "item_" + uuid.uuid4().hex, **item}
    role, content = item.get("role"), item.get("content")
    if isinstance(content, str):
        part: JSON = {"type": "input_text", "text": content}
        if role == "assistant":
            part = {"type": "output_text", "text": content, "annotations": []}
        content = [part]
    return {
        "id": item.get("id") or "msg_" + uuid.uuid4().hex,
        "type": "message",
        "role": role,
        "status": "completed",
        "content": content if isinstance(content, list) else [],
    }


def _response_usage(input_tokens: int, output_tokens: int) -> JSON:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _response_object(status: str, echo: JSON, usage: JSON) -> JSON:
    """A Response as OpenAI shapes it (the SDK parses it): one assistant text message."""
    text = completion_text(usage["output_tokens"])
    message = {
        "id": "msg_" + uuid.uuid4().hex,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    incomplete = status == "incomplete"
    return {
        "id": "resp_" + uuid.uuid4().hex,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        **echo,
        "output": [message],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": 1.0,
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": {},
        "usage": usage,
    }


def create_response(body: JSON, config: SimulatorConfig, store: ResponseStore) -> Reply:
    """POST /v1/responses: answer, store unless ``store`` is false, stream if asked."""
    model = known_model(body, config)
    items = _response_items(body)
    instructions = optional_str(body, "instructions")
    previous_id = optional_str(body, "previous_response_id")
    if body.get("input") is None and previous_id is None:
        message = "Missing required parameter: 'input'."
        raise RequestError(400, message, "input", "missing_required_parameter")
    limit = positive_int(body, "max_output_tokens")
    keep = optional_bool(body, "store", True)
    input_tokens = response_input_tokens(items, instructions) + _carried_tokens(store, previous_id)
    budget = max(config.completion_tokens, 0)
    n = budget if limit is None else min(limit, budget)
    status = "incomplete" if limit is not None and limit < budget else "completed"
    echo = {
        "model": model,
        "instructions": instructions,
        "max_output_tokens": limit,
        "previous_response_id": previous_id,
        "store": keep,
    }
    response = _response_object(status, echo, _response_usage(input_tokens, n))
    if keep:
        store.put(response, [_stored_item(item) for item in items])
    if body.get("stream") is True:
        return _response_stream(response)
    return 200, response


def _numbered(events: list[JSON], start: int) -> list[JSON]:
    return [{"type": e["type"], "sequence_number": start + i, **e} for i, e in enumerate(events)]


def _response_stream(final: JSON) -> Stream:
    """The events OpenAI streams for a one-message text answer, ending with ``final``."""
    message = final["output"][0]
    part = message["content"][0]
    started = {**final, "status": "in_progress", "incomplete_details": None, "output": []}
    started["usage"] = None
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    head: list[JSON] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
    ]
    deltas = [
        {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        for piece in pieces(final["usage"]["output_tokens"])
    ]
    tail = [
        {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": f"response.{final['status']}", "response": final},
    ]
    return Stream(
        _numbered(head, 0),
        _numbered(deltas, len(head)),
        _numbered(tail, len(head) + len(deltas)),
        named=True,
    )


_STORED_RESPONSE_ROUTES = frozenset(
    {("GET", ""), ("DELETE", ""), ("GET", "input_items"), ("POST", "cancel")}
)


def stored_response(method: str, path: str, store: ResponseStore) -> Reply:
    """GET/DELETE /v1/responses/{id}, GET .../input_items and POST .../cancel."""
    response_id, _, action = path.removeprefix("/v1/responses/").partition("/")
    if (method, action) not in _STORED_RESPONSE_ROUTES:
        raise RequestError(404, f"Invalid URL ({method} {path})")
    stored = store.get(response_id)
    if stored is None:
        raise RequestError(404, f"Response with id '{response_id}' not found.")
    if action == "input_items":
        items = stored.items
        first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
        return 200, {
            "object": "list",
            "data": items,
            "first_id": first,
            "last_id": last,
            "has_more": False,
        }
    if action == "cancel":
        raise RequestError(400, "Only responses created with background=true can be cancelled.")
    if method == "DELETE":
        store.delete(response_id)
        return 200, {"id": response_id, "object": "response.deleted", "deleted": True}
    return 200, stored.response
