"""Token estimates for when the upstream does not report usage (a broken or abandoned stream).

No tokenizer file can be fetched at run time, so keyplane uses OpenAI's rule of thumb for English:
about four characters per token, rounded up; a character outside ASCII (most of Chinese, Japanese,
Korean, Cyrillic...) counts about one more. An image counts about what the model takes for a
1024×1024 image at high detail (its size cannot be known from a URL); tool definitions count as
their JSON text.
"""

from __future__ import annotations

from typing import Any

import orjson

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 765  # 85 + 170 per 512-pixel tile, four tiles: a 1024×1024 image at high detail
_LARGEST_IMAGE = 1445  # the same model's largest image: 85 + 170 × 8 tiles
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_REQUEST_JSON = ("tools", "functions", "response_format")  # definitions the model reads too


def estimate_chars(chars: int) -> int:
    """Tokens for ``chars`` characters of text, rounded up."""
    return -(-chars // CHARS_PER_TOKEN)


def estimate_text(text: str) -> int:
    if text.isascii():
        return estimate_chars(len(text))
    return estimate_chars(len(text)) + (len(text.encode("utf-8", "replace")) - len(text)) // 2


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def image_estimate(largest: int | None) -> int:
    """Tokens an image is estimated at on a model whose largest image costs ``largest`` (its price
    entry's ``image_input_tokens``): in the same proportion as a 1024×1024 image to the largest on
    gpt-4o, 765 of 1,445 (gpt-4o-mini, whose tiles cost 33 times more: 25,500)."""
    return largest * IMAGE_TOKENS // _LARGEST_IMAGE if largest else IMAGE_TOKENS


def estimate_chat_prompt(messages: Any, image_tokens: int = IMAGE_TOKENS) -> int:
    """Estimated prompt tokens of a chat request's messages: their text, images (``image_tokens``
    each) and earlier tool calls' arguments, plus a small per-message overhead."""
    if not isinstance(messages, list):
        return 0
    total = 3
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        total += 3 + estimate_text(content_text(content))
        if isinstance(content, list):
            total += image_tokens * sum(1 for p in content if _image_part(p))
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            total += estimate_chars(len(orjson.dumps(calls)))
    return total


def _image_part(part: Any) -> bool:
    """Whether a content part is an image by its ``type`` (which a client may send as anything,
    an array or an object among them: not a set member)."""
    if not isinstance(part, dict):
        return False
    kind = part.get("type")
    return type(kind) is str and kind in IMAGE_PARTS


def estimate_chat(payload: dict[str, Any], image_tokens: int = IMAGE_TOKENS) -> int:
    """Estimated prompt tokens of a whole chat request: its messages and the tool and format
    definitions sent with them."""
    total = estimate_chat_prompt(payload.get("messages"), image_tokens)
    for name in _REQUEST_JSON:
        value = payload.get(name)
        if value:
            total += estimate_chars(len(orjson.dumps(value)))
    return total


def estimate_responses(payload: dict[str, Any], image_tokens: int = IMAGE_TOKENS) -> int:
    """Estimated input tokens of a Responses API request: its ``instructions``, its ``input`` (a
    string, or items: messages as in chat, function call outputs by their text, other items by
    their JSON) and the tool and format definitions sent with it."""
    total = 0
    instructions = payload.get("instructions")
    if isinstance(instructions, str):
        total += estimate_text(instructions)
    items = payload.get("input")
    if isinstance(items, str):
        total += 3 + estimate_text(items) + 3
    elif isinstance(items, list):
        messages = [i for i in items if isinstance(i, dict) and "content" in i]
        total += estimate_chat_prompt(messages, image_tokens)
        for item in items:
            if not isinstance(item, dict) or "content" in item:
                continue
            output = item.get("output")
            if isinstance(output, str):
                total += estimate_text(output)
            else:
                total += estimate_chars(len(orjson.dumps(item)))
    for name in ("tools", "text"):
        value = payload.get(name)
        if value:
            total += estimate_chars(len(orjson.dumps(value)))
    return total


def estimate_input(value: Any) -> int:
    """Estimated tokens of an embeddings/completions ``input``/``prompt``."""
    if isinstance(value, str):
        return estimate_text(value)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(estimate_input(v) for v in value)
    return 0


def generated_chars(chunk: Any) -> int:
    """How many characters of generated text one streamed chunk, or a whole answer (its
    choices' ``message``), carries (content, refusals, reasoning, tool-call arguments, legacy
    completions' text). Counted, not joined: it runs for every event of every stream. A Responses
    API answer or event is counted by ``response_chars``."""
    if type(chunk) is not dict:
        return 0
    choices = chunk.get("choices")
    if type(choices) is not list:
        return response_chars(chunk)
    count = 0
    for choice in choices:
        if type(choice) is not dict:
            continue
        text = choice.get("text")  # legacy completions
        if type(text) is str:
            count += len(text)
        delta = choice.get("delta")
        if type(delta) is not dict:
            delta = choice.get("message")
            if type(delta) is not dict:
                continue
        for field in _DELTA_TEXT:
            value = delta.get(field)
            if type(value) is str:
                count += len(value)
        calls = delta.get("tool_calls")
        if type(calls) is list:
            for call in calls:
                fn = call.get("function") if type(call) is dict else None
                if type(fn) is dict and type(fn.get("arguments")) is str:
                    count += len(fn["arguments"])
    return count


_DELTA_TEXT = ("content", "refusal", "reasoning_content")


def response_chars(obj: dict[str, Any]) -> int:
    """Characters of generated text in a Responses API stream event (the ``delta`` of any
    ``….delta`` event: output text, refusals, reasoning, function call arguments) or whole answer
    (its ``output`` items' text parts, function call arguments and reasoning summaries)."""
    delta = obj.get("delta")
    if type(delta) is str:
        kind = obj.get("type")
        return len(delta) if type(kind) is str and kind.endswith(".delta") else 0
    output = obj.get("output")
    if type(output) is not list:
        return 0
    count = 0
    for item in output:
        if type(item) is not dict:
            continue
        arguments = item.get("arguments")
        if type(arguments) is str:
            count += len(arguments)
        for name in ("content", "summary"):
            parts = item.get(name)
            if type(parts) is not list:
                continue
            for part in parts:
                if type(part) is dict:
                    for field in ("text", "refusal"):
                        value = part.get(field)
                        if type(value) is str:
                            count += len(value)
    return count
