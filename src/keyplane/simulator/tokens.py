"""Token accounting, deterministic (no tokenizer), and the text the simulator writes.

* ``text_tokens(text) = ceil(len(text) / TOKEN_CHARS)`` (0 for ``""``);
* ``prompt_tokens(messages) = sum(3 + text_tokens(text of message)) + 3`` where the text of
  a message is its string ``content``, or the concatenated ``text`` of its ``{"type": "text"}``
  parts (other parts count 0);
* legacy completion prompts and embedding inputs count ``text_tokens`` per string, or the
  length of each token array (``params.text_inputs``);
* a chat/completion answer has ``n = min(config.completion_tokens, max_tokens)`` output
  tokens, each exactly ``TOKEN_CHARS`` characters long (see ``completion_text``);
* a chat's ``input_audio`` parts add ``audio_tokens(data)`` each to its prompt tokens:
  ``ceil(decoded bytes / AUDIO_BYTES_PER_TOKEN)``, at least 1 (16-bit WAV at 16 kHz, 10 tokens a
  second, as OpenAI counts audio it hears), reported as ``prompt_tokens_details.audio_tokens``;
* a chat that asks for audio (``modalities`` with "audio") answers ``n // 5`` tokens of transcript
  (text) and ``n - n // 5`` of audio (``completion_tokens_details.audio_tokens``).

The Responses API counts its own way (``responses``), and so do the image and audio models.
"""

from __future__ import annotations

from typing import Any

TOKEN_CHARS = 4
AUDIO_BYTES_PER_TOKEN = 3200  # 32,000 bytes a second of 16-bit WAV at 16 kHz, 10 tokens a second
_PIECES = ("Hell", "o fr", "om t", "he k", "eypl", "ane ", "simu", "lato", "r.  ")


def text_tokens(text: str) -> int:
    """Tokens of a text: ``ceil(len(text) / TOKEN_CHARS)``, 0 for the empty string."""
    return -(-len(text) // TOKEN_CHARS)


_CHAT_TEXT_PARTS = frozenset({"text"})


def content_text(content: Any, text_parts: frozenset[str] = _CHAT_TEXT_PARTS) -> str:
    """A string content, or the ``text`` of its parts whose type is in ``text_parts``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and isinstance(part.get("type"), str)  # (an array or an object: no set member)
            and part["type"] in text_parts
            and isinstance(part.get("text"), str)
        )
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat: ``sum(3 + text_tokens(text)) + 3`` over the messages."""
    return sum(3 + text_tokens(content_text(m.get("content"))) for m in messages) + 3


def audio_tokens(decoded_bytes: int) -> int:
    """Tokens of an audio part whose data decodes to ``decoded_bytes``: at least 1."""
    return max(1, -(-decoded_bytes // AUDIO_BYTES_PER_TOKEN))


def spoken_tokens(n: int) -> tuple[int, int]:
    """(transcript, audio) tokens of an answer of ``n`` output tokens that speaks."""
    return n // 5, n - n // 5


def completion_text(n_tokens: int) -> str:
    """``n_tokens`` pieces of exactly ``TOKEN_CHARS`` characters: ``len == 4 * n_tokens``."""
    return "".join(_PIECES[i % len(_PIECES)] for i in range(max(n_tokens, 0)))


def pieces(n: int) -> list[str]:
    text = completion_text(n)
    return [text[i : i + TOKEN_CHARS] for i in range(0, len(text), TOKEN_CHARS)]
