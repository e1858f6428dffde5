"""Token estimates for when the upstream does not report usage (a broken or abandoned stream).

No tokenizer file can be fetched at run time, so keyplane uses OpenAI's rule of thumb for English:
about four characters per token, rounded up.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4


def estimate_chars(chars: int) -> int:
    """Tokens for ``chars`` characters of text, rounded up."""
    return -(-chars // CHARS_PER_TOKEN)


def estimate_text(text: str) -> int:
    return estimate_chars(len(text))


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def estimate_chat_prompt(messages: Any) -> int:
    """Estimated prompt tokens of a chat request: text plus a small per-message overhead."""
    if not isinstance(messages, list):
        return 0
    total = 3
    for message in messages:
        if isinstance(message, dict):
            total += 3 + estimate_text(content_text(message.get("content")))
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
    completions' text). Counted, not joined: it runs for every event of every stream."""
    if type(chunk) is not dict:
        return 0
    choices = chunk.get("choices")
    if type(choices) is not list:
        return 0
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
