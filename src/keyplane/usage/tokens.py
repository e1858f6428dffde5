"""Token estimates for when the upstream does not report usage (a broken or abandoned stream).

No tokenizer file can be fetched at run time, so keyplane uses OpenAI's rule of thumb for English:
about four characters per token, rounded up.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4


def estimate_text(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


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


def delta_text(chunk: Any) -> str:
    """The generated text carried by one streamed chunk (content, refusals, tool-call arguments)."""
    if not isinstance(chunk, dict):
        return ""
    parts: list[str] = []
    choices = chunk.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("text"), str):  # legacy completions
                parts.append(choice["text"])
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for field in ("content", "refusal", "reasoning_content"):
                if isinstance(delta.get(field), str):
                    parts.append(delta[field])
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        parts.append(fn["arguments"])
    return "".join(parts)
