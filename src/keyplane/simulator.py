"""Built-in upstream simulator: a small OpenAI-compatible server for offline use.

Used in tests, local demos and benchmarks in place of a real model API. Every answer
carries the header ``x-simulator: keyplane`` so it cannot be mistaken for a real model.

Token accounting is deterministic (no tokenizer):

* ``text_tokens(text) = ceil(len(text) / TOKEN_CHARS)`` (0 for ``""``);
* ``prompt_tokens(messages) = sum(3 + text_tokens(text of message)) + 3`` where the text of
  a message is its string ``content``, or the concatenated ``text`` of its ``{"type": "text"}``
  parts (other parts count 0);
* legacy completion prompts and embedding inputs count ``text_tokens`` per string, or the
  length of each token array;
* a chat/completion answer has ``n = min(config.completion_tokens, max_tokens)`` output
  tokens, each exactly ``TOKEN_CHARS`` characters long (see ``completion_text``);
* a Responses request has ``input_tokens = text_tokens(instructions) + sum(3 + text_tokens(text
  of item)) + 3`` over its ``input`` items (see ``response_input_tokens``), a string ``input``
  being one item whose text is the string; the text of an item is its string ``content``, or
  the concatenated ``text`` of its ``input_text``/``output_text`` parts (other parts, such as
  ``input_image`` and ``input_file``, count 0), or its string ``output``
  (``function_call_output``); with ``previous_response_id``, plus that stored response's
  ``input_tokens + output_tokens`` (the context carried over);
* a Responses answer has ``n = min(config.completion_tokens, max_output_tokens)`` output
  tokens of ``completion_text(n)``, as chat; it is ``"incomplete"`` when the cap is lower.

Moderation is deterministic too: an input is flagged (category ``violence``, score 0.99) when
its text contains ``FLAG_MARKER`` (``"[flag]"``); every other category and input scores 0.0001.

Image generation (``POST /v1/images/generations``, ``dall-e-2`` unless ``model`` names
``dall-e-3`` or ``gpt-image-1``) is deterministic as well: each of the ``n`` images is ``PNG_1X1``
(one white pixel, whatever the ``size``), as ``b64_json`` or as a ``url`` under ``IMAGE_URL_BASE``
whose name is a hash of the model, size, quality, prompt and the image's index; a ``dall-e-3``
image has the prompt as its ``revised_prompt``. The answer has no ``usage``, as OpenAI's dall-e
answers. ``gpt-image-1`` answers ``b64_json`` only (a ``response_format`` of ``url`` is refused,
as OpenAI's), takes ``quality`` low, medium, high or auto (the default), ``size`` 1024x1024,
1536x1024, 1024x1536 or auto (the default), ``output_format`` png, jpeg or webp (the image is the
same PNG whatever it says), ``background`` transparent, opaque or auto; auto draws
``GPT_IMAGE_AUTO`` (medium, 1024x1024), which the answer names in ``quality`` and ``size``. Its
answer has a ``usage``: ``output_tokens = n × GPT_IMAGE_TOKENS[quality][size]`` (OpenAI's table)
and ``input_tokens = text_tokens(prompt)``, all text (``input_tokens_details``).

Speech to text (``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``, ``whisper-1``,
a ``multipart/form-data`` body) hears no audio: a ``file`` of ``size`` bytes lasts
``audio_seconds(size) = max(1, ceil(size / AUDIO_BYTES_PER_SECOND))`` seconds (16000 bytes a
second, as 128 kbit/s), and its transcript is ``transcript_text(seconds)``: ``TRANSCRIPT_SENTENCE``
(``"Hello from the keyplane simulator."``) once per second, joined by spaces. ``json`` (the
default) answers ``{"text", "usage": {"type": "duration", "seconds"}}``; ``verbose_json`` adds
the task, ``language`` ``"english"``, the ``duration`` and one segment spanning it; ``text``,
``srt`` and ``vtt`` answer the transcript as ``text/plain`` (a subtitle document of one cue for
the last two), without usage, as OpenAI. ``language``, ``prompt`` and ``temperature`` are ignored.
``gpt-4o-transcribe`` and ``gpt-4o-mini-transcribe`` transcribe only (translations are whisper-1's,
as at OpenAI) and answer ``json`` or ``text`` (the others are refused with OpenAI's message); their
``json`` answer's ``usage`` is ``{"type": "tokens"}``: ``audio_tokens = AUDIO_TOKENS_PER_SECOND ×
audio_seconds(size)`` (10 a second, the simulator's own figure: OpenAI publishes none), ``text_tokens
= text_tokens(prompt)``, ``output_tokens = text_tokens(transcript)``. The transcript stops at
``TRANSCRIBE_MAX_OUTPUT`` (2,000) tokens; a file whose tokens would pass ``TRANSCRIBE_CONTEXT``
(16,000) is refused with 400, as too long for the model.

Text to speech (``POST /v1/audio/speech``, ``tts-1`` and ``tts-1-hd``) says nothing either: the
audio of an ``input`` of ``n`` characters is ``speech_audio(input)``, ``SPEECH_HEADER`` (an empty
ID3v2.4 tag, as MP3 files begin) then ``SPEECH_BYTES_PER_CHAR`` (64) bytes a character (a SHAKE-256
digest of the input's UTF-8), whatever the ``voice``, ``speed`` or format. It is sent chunked,
the header first and then pieces of at most ``SPEECH_CHUNK_BYTES`` (1,024) bytes, each one a
message of its own, as ``audio/mpeg`` (or the ``response_format``'s type: ``opus``, ``aac``,
``flac``, ``wav``, ``pcm``), with no usage, as OpenAI's. ``model``, ``input`` (a string of 1 to
``MAX_SPEECH_CHARS``, 4096, characters) and ``voice`` (one of ``SPEECH_VOICES``) are required;
``speed`` is a number from 0.25 to 4; ``instructions`` a string (ignored); ``stream_format``
``"audio"`` (``"sse"`` is refused, as for these models at OpenAI). Errors are OpenAI-style 400s.

Responses are kept in memory per app (the ``MAX_STORED_RESPONSES`` most recent, unless
``store`` is false) for ``previous_response_id`` and the ``/v1/responses/{id}`` routes. A
streamed response is stored, complete, as soon as its request is answered: the simulator
knows the whole answer before it sends the first event.

Timing: ``latency_ms`` is slept before answering every POST; when streaming with
``tokens_per_second > 0``, ``1 / tokens_per_second`` is slept before each token chunk (a
``response.output_text.delta`` event for the Responses API), and before each piece of speech's
audio after its header.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import socket
import struct
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartState, parse_options_header

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
JSON = dict[str, Any]

# fmt: off
DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-3.5-turbo",
    "gpt-3.5-turbo-instruct", "davinci-002", "babbage-002",  # what OpenAI serves on /v1/completions
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
    "omni-moderation-latest", "text-moderation-latest", "dall-e-2", "dall-e-3", "gpt-image-1",
    "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "tts-1", "tts-1-hd", "sim-chat",
    "sim-embed",
)
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
# The categories OpenAI's omni moderation also applies to images.
IMAGE_CATEGORIES = frozenset({
    "violence", "violence/graphic", "self-harm", "self-harm/intent", "self-harm/instructions",
    "sexual",
})
# The sizes and qualities each image model draws; the first quality is the default, and the size
# DEFAULT_IMAGE_SIZE, or gpt-image-1's first (auto).
IMAGE_SIZES: dict[str, tuple[str, ...]] = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "gpt-image-1": ("auto", "1024x1024", "1536x1024", "1024x1536"),
}
IMAGE_QUALITIES: dict[str, tuple[str, ...]] = {
    "dall-e-2": ("standard",),
    "dall-e-3": ("standard", "hd"),
    "gpt-image-1": ("auto", "low", "medium", "high"),
}
# gpt-image-1's output tokens per image, by quality and size (OpenAI's published table).
GPT_IMAGE_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
GPT_IMAGE_AUTO = ("medium", "1024x1024")  # what "auto" draws here (OpenAI picks per prompt)
GPT_IMAGE_FORMATS = ("png", "jpeg", "webp")
GPT_IMAGE_BACKGROUNDS = ("auto", "transparent", "opaque")
SPEECH_VOICES: tuple[str, ...] = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
)
# Text to speech's formats and the content type of each.
SPEECH_FORMATS: dict[str, bytes] = {
    "mp3": b"audio/mpeg", "opus": b"audio/opus", "aac": b"audio/aac", "flac": b"audio/flac",
    "wav": b"audio/wav", "pcm": b"audio/pcm",
}
# fmt: on
DEFAULT_IMAGE_MODEL = "dall-e-2"
DEFAULT_IMAGE_SIZE = "1024x1024"
IMAGE_RESPONSE_FORMATS = ("url", "b64_json")
MAX_IMAGES = 10
IMAGE_URL_BASE = "https://simulator.keyplane.invalid/images/"
TRANSCRIPTION_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})
TRANSLATION_MODELS = frozenset({"whisper-1"})
TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# The transcription models priced by tokens: their answer formats, and their bounds.
TOKEN_TRANSCRIPTION_FORMATS = ("json", "text")
AUDIO_TOKENS_PER_SECOND = 10
TRANSCRIBE_CONTEXT = 16_000
TRANSCRIBE_MAX_OUTPUT = 2_000
AUDIO_BYTES_PER_SECOND = 16_000  # 128 kbit/s
TRANSCRIPT_SENTENCE = "Hello from the keyplane simulator."
TRANSCRIPT_LANGUAGE = "english"
SPEECH_MODELS = frozenset({"tts-1", "tts-1-hd"})
MAX_SPEECH_CHARS = 4096
SPEECH_HEADER = b"ID3\x04\x00\x00\x00\x00\x00\x00"  # an empty ID3v2.4 tag
SPEECH_BYTES_PER_CHAR = 64
SPEECH_CHUNK_BYTES = 1024
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
FLAG_MARKER = "[flag]"
FLAGGED_SCORE = 0.99
UNFLAGGED_SCORE = 0.0001
MAX_STORED_RESPONSES = 10_000
TOKEN_CHARS = 4
MODEL_CREATED = 1700000000
OWNED_BY = "keyplane-simulator"
SYSTEM_FINGERPRINT = "fp_keyplane_sim"
DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 8192
_PIECES = ("Hell", "o fr", "om t", "he k", "eypl", "ane ", "simu", "lato", "r.  ")
_SERVER_HEADERS = [(b"x-simulator", b"keyplane")]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Every generated image: a valid 1x1 PNG, one white pixel (8-bit RGB, no interlace).
PNG_1X1 = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff"))
    + _png_chunk(b"IEND", b"")
)
_PNG_1X1_B64 = base64.b64encode(PNG_1X1).decode("ascii")

# Indirection so tests can observe the delays without really sleeping.
_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True)
class SimulatorConfig:
    latency_ms: float = 0.0  # delay before the first byte of every answer to a POST
    tokens_per_second: float = 0.0  # 0 = no delay between streamed chunks; else 1/tps
    completion_tokens: int = 16  # output tokens unless max_tokens is lower
    models: tuple[str, ...] = DEFAULT_MODELS


def text_tokens(text: str) -> int:
    """Tokens of a text: ``ceil(len(text) / TOKEN_CHARS)``, 0 for the empty string."""
    return -(-len(text) // TOKEN_CHARS)


_CHAT_TEXT_PARTS = frozenset({"text"})
_RESPONSE_TEXT_PARTS = frozenset({"input_text", "output_text"})


def _content_text(content: Any, text_parts: frozenset[str] = _CHAT_TEXT_PARTS) -> str:
    """A string content, or the ``text`` of its parts whose type is in ``text_parts``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") in text_parts
            and isinstance(part.get("text"), str)
        )
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat: ``sum(3 + text_tokens(text)) + 3`` over the messages."""
    return sum(3 + text_tokens(_content_text(m.get("content"))) for m in messages) + 3


def _item_text(item: JSON) -> str:
    """A Responses input item's text: its content, else its string ``output``."""
    if item.get("content") is not None:
        return _content_text(item["content"], _RESPONSE_TEXT_PARTS)
    output = item.get("output")
    return output if isinstance(output, str) else ""


def response_input_tokens(items: list[JSON], instructions: str | None = None) -> int:
    """Input tokens of a Responses request, before any context carried over from a previous
    response: ``text_tokens(instructions) + sum(3 + text_tokens(text)) + 3`` over the items."""
    items_tokens = sum(3 + text_tokens(_item_text(item)) for item in items)
    return text_tokens(instructions or "") + items_tokens + 3


def completion_text(n_tokens: int) -> str:
    """``n_tokens`` pieces of exactly ``TOKEN_CHARS`` characters: ``len == 4 * n_tokens``."""
    return "".join(_PIECES[i % len(_PIECES)] for i in range(max(n_tokens, 0)))


class _RequestError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
        self.status, self.payload = status, {"error": error}


@dataclass
class _Stream:
    """Server-sent events; a delay may precede each of ``tokens`` (see ``_send_stream``).

    Chat and completion streams send bare ``data:`` events and end with ``data: [DONE]``;
    Responses streams (``named``) also name each event after its ``type`` and have no end
    marker, as OpenAI's do.
    """

    head: list[JSON]
    tokens: list[JSON]
    tail: list[JSON]
    named: bool = False


@dataclass(frozen=True)
class _Stored:
    response: JSON
    items: list[JSON]


class _ResponseStore:
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


@dataclass(frozen=True)
class _Audio:
    """A binary answer sent chunked: 200, ``content_type``, each of ``chunks`` a message."""

    content_type: bytes
    chunks: list[bytes]


@dataclass(frozen=True)
class _Text:
    """A plain-text answer: 200, ``text/plain; charset=utf-8`` (a transcript, SRT or VTT)."""

    text: str


_Reply = tuple[int, JSON] | _Stream | _Text | _Audio


def _type_name(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names.update({list: "an array", dict: "an object", type(None): "null"})
    return names.get(type(value), "an unsupported value")


def _invalid_type(param: str, expected: str, value: Any) -> _RequestError:
    message = (
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead."
    )
    return _RequestError(400, message, param, "invalid_type")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _model(body: JSON, config: SimulatorConfig) -> str:
    model = body.get("model")
    if model is None:
        raise _RequestError(400, "Missing required parameter: 'model'.", "model", "missing")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    if model not in config.models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        raise _RequestError(404, message, None, "model_not_found")
    return model


def _positive_int(body: JSON, name: str, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise _invalid_type(name, "an integer", value)
    if value < 1 or (maximum is not None and value > maximum):
        bound = ">= 1" if maximum is None else f"between 1 and {maximum}"
        message = f"Invalid '{name}': expected an integer {bound}, but got {value} instead."
        code = "integer_below_min_value" if value < 1 else "integer_above_max_value"
        raise _RequestError(400, message, name, code)
    return int(value)


def _inputs(value: Any, param: str) -> list[tuple[bytes, int]]:
    """(hash key, tokens) per input: a string, strings, a token array or token arrays."""
    if value is None:
        raise _RequestError(400, f"Missing required parameter: '{param}'.", param, "missing")
    if isinstance(value, str):
        return [(value.encode(), text_tokens(value))]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [(v.encode(), text_tokens(v)) for v in value]
        if all(_is_int(v) for v in value):
            return [(b"tokens:" + orjson.dumps(value), len(value))]
        if all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value):
            return [(b"tokens:" + orjson.dumps(v), len(v)) for v in value]
    expected = "a string, an array of strings, an array of integers or an array of arrays"
    raise _invalid_type(param, expected, value)


def _usage(prompt: int, completion: int) -> JSON:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _chat_prompt(body: JSON) -> int:
    messages = body.get("messages")
    if messages is None:
        raise _RequestError(400, "Missing required parameter: 'messages'.", "messages", "missing")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        message = "Invalid 'messages': empty array. Expected an array with minimum length 1."
        raise _RequestError(400, message, "messages", "empty_array")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _invalid_type(f"messages[{i}]", "an object", msg)
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _invalid_type(f"messages[{i}].content", "a string or an array", content)
    return prompt_tokens(messages)


def _completion(body: JSON, config: SimulatorConfig, *, chat: bool) -> _Reply:
    """Chat (``chat=True``) or legacy text completion, streamed or not."""
    model = _model(body, config)
    prompt = (
        _chat_prompt(body) if chat else sum(t for _, t in _inputs(body.get("prompt"), "prompt"))
    )
    limits = [_positive_int(body, "max_tokens")]
    if chat:
        limits.append(_positive_int(body, "max_completion_tokens"))
    limit = min((x for x in limits if x is not None), default=None)
    budget = max(config.completion_tokens, 0)
    n = budget if limit is None else min(limit, budget)
    finish = "length" if limit is not None and limit < budget else "stop"
    usage = _usage(prompt, n)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise _RequestError(400, message, "stream_options", "invalid_value")
    if options is not None and not isinstance(options, dict):
        raise _invalid_type("stream_options", "an object", options)
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    base: JSON = {
        "id": ("chatcmpl-sim" if chat else "cmpl-sim") + uuid.uuid4().hex[:24],
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if not stream:
        text = completion_text(n)
        choice: JSON = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        return 200, {**base, "choices": [choice], "usage": usage}

    if chat:
        base["object"] = "chat.completion.chunk"
    if include_usage:
        base["usage"] = None

    def chunk(delta: JSON, finish_reason: str | None) -> JSON:
        choice: JSON = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta.get("content", "")
        return {**base, "choices": [choice]}

    head = [chunk({"role": "assistant", "content": ""}, None)] if chat else []
    tokens = [chunk({"content": piece}, None) for piece in _pieces(n)]
    tail = [chunk({}, finish)]
    if include_usage:
        tail.append({**base, "choices": [], "usage": usage})
    return _Stream(head, tokens, tail)


def _pieces(n: int) -> list[str]:
    text = completion_text(n)
    return [text[i : i + TOKEN_CHARS] for i in range(0, len(text), TOKEN_CHARS)]


def _vector(key: bytes, dimensions: int) -> list[float]:
    """Deterministic unit vector from a hash, rounded to float32 so base64 round-trips."""
    raw = hashlib.shake_256(key).digest(4 * dimensions)
    values = [x / 2**31 - 1.0 for x in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def _embeddings(body: JSON, config: SimulatorConfig) -> _Reply:
    model = _model(body, config)
    inputs = _inputs(body.get("input"), "input")
    dims = _positive_int(body, "dimensions", MAX_DIMENSIONS) or DEFAULT_DIMENSIONS
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        message = f"Invalid value for 'encoding_format': expected 'float' or 'base64', got {fmt!r}."
        raise _RequestError(400, message, "encoding_format", "invalid_value")
    data: list[JSON] = []
    for index, (key, _) in enumerate(inputs):
        vector = _vector(key, dims)
        embedding: list[float] | str = vector
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(t for _, t in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return 200, {"object": "list", "data": data, "model": model, "usage": usage}


def _optional_str(body: JSON, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid_type(name, "a string", value)
    return value


def _optional_bool(body: JSON, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid_type(name, "a boolean", value)
    return value


def _response_items(body: JSON) -> list[JSON]:
    """The ``input`` of a Responses request as items: a string is one user message."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _invalid_type("input", "a string or an array", value)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _invalid_type(f"input[{i}]", "an object", item)
        content = item.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _invalid_type(f"input[{i}].content", "a string or an array", content)
    return value


def _carried_tokens(store: _ResponseStore, previous_id: str | None) -> int:
    """The context a ``previous_response_id`` brings along: that exchange's total tokens."""
    if previous_id is None:
        return 0
    previous = store.get(previous_id)
    if previous is None:
        message = f"Previous response with id '{previous_id}' not found."
        raise _RequestError(404, message, "previous_response_id", "previous_response_not_found")
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


def _create_response(body: JSON, config: SimulatorConfig, store: _ResponseStore) -> _Reply:
    """POST /v1/responses: answer, store unless ``store`` is false, stream if asked."""
    model = _model(body, config)
    items = _response_items(body)
    instructions = _optional_str(body, "instructions")
    previous_id = _optional_str(body, "previous_response_id")
    if body.get("input") is None and previous_id is None:
        message = "Missing required parameter: 'input'."
        raise _RequestError(400, message, "input", "missing_required_parameter")
    limit = _positive_int(body, "max_output_tokens")
    keep = _optional_bool(body, "store", True)
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


def _response_stream(final: JSON) -> _Stream:
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
        for piece in _pieces(final["usage"]["output_tokens"])
    ]
    tail = [
        {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": f"response.{final['status']}", "response": final},
    ]
    return _Stream(
        _numbered(head, 0),
        _numbered(deltas, len(head)),
        _numbered(tail, len(head) + len(deltas)),
        named=True,
    )


_STORED_RESPONSE_ROUTES = frozenset(
    {("GET", ""), ("DELETE", ""), ("GET", "input_items"), ("POST", "cancel")}
)


def _stored_response(method: str, path: str, store: _ResponseStore) -> _Reply:
    """GET/DELETE /v1/responses/{id}, GET .../input_items and POST .../cancel."""
    response_id, _, action = path.removeprefix("/v1/responses/").partition("/")
    if (method, action) not in _STORED_RESPONSE_ROUTES:
        raise _RequestError(404, f"Invalid URL ({method} {path})")
    stored = store.get(response_id)
    if stored is None:
        raise _RequestError(404, f"Response with id '{response_id}' not found.")
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
        raise _RequestError(400, "Only responses created with background=true can be cancelled.")
    if method == "DELETE":
        store.delete(response_id)
        return 200, {"id": response_id, "object": "response.deleted", "deleted": True}
    return 200, stored.response


def _moderation_part(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if value.get("type") == "text":
        return isinstance(value.get("text"), str)
    return value.get("type") == "image_url" and isinstance(value.get("image_url"), dict)


def _moderation_inputs(value: Any) -> list[tuple[str, frozenset[str]]]:
    """(text, input types) per moderated input: a string, strings, or ONE list of parts."""
    if value is None:
        raise _RequestError(400, "Missing required parameter: 'input'.", "input", "missing")
    if isinstance(value, str):
        return [(value, frozenset({"text"}))]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [(v, frozenset({"text"})) for v in value]
        if all(_moderation_part(v) for v in value):
            text = "".join(p["text"] for p in value if p["type"] == "text")
            kinds = frozenset("image" if p["type"] == "image_url" else "text" for p in value)
            return [(text, kinds)]
    expected = "a string, an array of strings or an array of content parts"
    raise _invalid_type("input", expected, value)


def _moderation_result(text: str, kinds: frozenset[str]) -> JSON:
    """Flagged for ``violence`` exactly when the text holds ``FLAG_MARKER``."""
    flagged = FLAG_MARKER in text
    categories = {c: flagged and c == "violence" for c in MODERATION_CATEGORIES}
    applied = {
        c: [k for k in ("text", "image") if k in kinds and (k == "text" or c in IMAGE_CATEGORIES)]
        for c in MODERATION_CATEGORIES
    }
    return {
        "flagged": flagged,
        "categories": categories,
        "category_scores": {
            c: FLAGGED_SCORE if hit else UNFLAGGED_SCORE for c, hit in categories.items()
        },
        "category_applied_input_types": applied,
    }


def _moderations(body: JSON, config: SimulatorConfig) -> _Reply:
    model = DEFAULT_MODERATION_MODEL if body.get("model") is None else _model(body, config)
    results = [_moderation_result(*one) for one in _moderation_inputs(body.get("input"))]
    return 200, {"id": "modr-" + uuid.uuid4().hex, "model": model, "results": results}


def _choice(
    body: JSON, name: str, allowed: tuple[str, ...], default: str | None, model: str = ""
) -> str:
    """A string field that must be one of ``allowed`` (required when ``default`` is None); the
    error names ``model`` when the choices are that model's."""
    value = body.get(name)
    if value is None and default is None:
        message = f"Missing required parameter: '{name}'."
        raise _RequestError(400, message, name, "missing_required_parameter")
    if value is None:
        return str(default)
    if not isinstance(value, str):
        raise _invalid_type(name, "a string", value)
    if value not in allowed:
        supported = ", ".join(f"'{a}'" for a in allowed)
        whose = f" for {model}" if model else ""
        message = f"Invalid '{name}'{whose}: expected one of {supported}, but got {value!r}."
        raise _RequestError(400, message, name, "invalid_value")
    return value


def _image_url(model: str, size: str, quality: str, prompt: str, index: int) -> str:
    key = orjson.dumps([model, size, quality, prompt, index])
    return f"{IMAGE_URL_BASE}{hashlib.shake_256(key).hexdigest(16)}.png"


def _generate_images(body: JSON, config: SimulatorConfig) -> _Reply:
    """POST /v1/images/generations: ``n`` copies of ``PNG_1X1``, as URLs or base64."""
    model = DEFAULT_IMAGE_MODEL if body.get("model") is None else _model(body, config)
    if model not in IMAGE_SIZES:
        message = f"Invalid model '{model}' for image generation."
        raise _RequestError(400, message, "model", "invalid_value")
    prompt = _optional_str(body, "prompt")
    if not prompt:
        message = "Missing required parameter: 'prompt'."
        raise _RequestError(400, message, "prompt", "missing_required_parameter")
    n = _positive_int(body, "n", MAX_IMAGES) or 1
    if model == "dall-e-3" and n != 1:
        raise _RequestError(400, "Invalid 'n': dall-e-3 only supports n=1.", "n", "invalid_value")
    gpt_image = model == "gpt-image-1"
    sizes, qualities = IMAGE_SIZES[model], IMAGE_QUALITIES[model]
    size = _choice(body, "size", sizes, sizes[0] if gpt_image else DEFAULT_IMAGE_SIZE, model)
    quality = _choice(body, "quality", qualities, qualities[0], model)
    formats = ("b64_json",) if gpt_image else IMAGE_RESPONSE_FORMATS
    fmt = _choice(body, "response_format", formats, formats[0], model)
    if body.get("stream") is True:
        message = f"Streaming is not supported for {model}."
        raise _RequestError(400, message, "stream", "invalid_value")
    if gpt_image:
        return 200, _gpt_image(body, prompt, n, quality, size)
    data: list[JSON] = []
    for index in range(n):
        image: JSON = (
            {"b64_json": _PNG_1X1_B64}
            if fmt == "b64_json"
            else {"url": _image_url(model, size, quality, prompt, index)}
        )
        if model == "dall-e-3":
            image["revised_prompt"] = prompt
        data.append(image)
    return 200, {"created": int(time.time()), "data": data}


def _gpt_image(body: JSON, prompt: str, n: int, quality: str, size: str) -> JSON:
    """gpt-image-1's answer: ``n`` images as base64, with the tokens they cost."""
    output_format = _choice(body, "output_format", GPT_IMAGE_FORMATS, "png", "gpt-image-1")
    background = _choice(body, "background", GPT_IMAGE_BACKGROUNDS, "auto", "gpt-image-1")
    quality = GPT_IMAGE_AUTO[0] if quality == "auto" else quality
    size = GPT_IMAGE_AUTO[1] if size == "auto" else size
    text = text_tokens(prompt)
    output = n * GPT_IMAGE_TOKENS[quality][size]
    usage = {
        "total_tokens": text + output, "input_tokens": text, "output_tokens": output,
        "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
    }  # fmt: skip
    return {
        "created": int(time.time()), "data": [{"b64_json": _PNG_1X1_B64} for _ in range(n)],
        "background": "opaque" if background == "auto" else background,
        "output_format": output_format, "quality": quality, "size": size, "usage": usage,
    }  # fmt: skip


def audio_seconds(size: int) -> int:
    """Seconds of audio in a file of ``size`` bytes: ``max(1, ceil(size / 16000))``."""
    return max(1, -(-size // AUDIO_BYTES_PER_SECOND))


def transcript_text(seconds: int) -> str:
    """The transcript of ``seconds`` of audio: ``TRANSCRIPT_SENTENCE`` once per second."""
    return " ".join([TRANSCRIPT_SENTENCE] * seconds)


class _Form:
    """The parts of a multipart/form-data body, fed by ``MultipartParser``'s callbacks: text
    fields and files (parts with a ``filename``) by name, the last of a name winning."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.files: dict[str, bytes] = {}
        self._headers: dict[bytes, bytes] = {}
        self._name, self._value, self._data = bytearray(), bytearray(), bytearray()

    def part_begin(self) -> None:
        self._headers.clear()
        self._data.clear()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[bytes(self._name).strip().lower()] = bytes(self._value).strip()
        self._name.clear()
        self._value.clear()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if name is None:
            return
        key = name.decode("utf-8", "replace")
        if b"filename" in options:
            self.files[key] = bytes(self._data)
        else:
            self.fields[key] = self._data.decode("utf-8", "replace")


def _form(raw: bytes, content_type: str) -> _Form:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise _RequestError(400, "Expected a multipart/form-data body.")
    form = _Form()
    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": form.part_begin,
                "on_header_field": form.header_field,
                "on_header_value": form.header_value,
                "on_header_end": form.header_end,
                "on_part_data": form.part_data,
                "on_part_end": form.part_end,
            },
        )
        parser.write(raw)
        parser.finalize()
        complete = parser.state == MultipartState.END
    except FormParserError:
        complete = False
    if not complete:
        message = "We could not parse the multipart/form-data body of your request."
        raise _RequestError(400, message) from None
    return form


def _timestamp(seconds: int, separator: str) -> str:
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{second:02d}{separator}000"


def _subtitles(text: str, seconds: int, fmt: str) -> str:
    """An SRT or WebVTT document of one cue: ``text`` from 0 to ``seconds``."""
    if fmt == "srt":
        return f"1\n{_timestamp(0, ',')} --> {_timestamp(seconds, ',')}\n{text}\n\n"
    return f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(seconds, '.')}\n{text}\n\n"


def _speech_to_text(raw: bytes, content_type: str, config: SimulatorConfig, task: str) -> _Reply:
    """POST /v1/audio/transcriptions (``task="transcribe"``) or /v1/audio/translations
    (``"translate"``): ``transcript_text`` of the ``file``'s ``audio_seconds``."""
    form = _form(raw, content_type)
    audio = form.files.get("file")
    if audio is None:
        message = "Missing required parameter: 'file'."
        raise _RequestError(400, message, "file", "missing_required_parameter")
    if not form.fields.get("model"):
        message = "Missing required parameter: 'model'."
        raise _RequestError(400, message, "model", "missing_required_parameter")
    model = _model(form.fields, config)
    if model not in (TRANSCRIPTION_MODELS if task == "transcribe" else TRANSLATION_MODELS):
        purpose = "transcription" if task == "transcribe" else "translation"
        message = f"Invalid model '{model}' for {purpose}."
        raise _RequestError(400, message, "model", "invalid_value")
    fmt = form.fields.get("response_format", "json")
    if model != "whisper-1":
        return _token_transcription(form, model, fmt, len(audio))
    if fmt not in TRANSCRIPTION_FORMATS:
        supported = ", ".join(f"'{f}'" for f in TRANSCRIPTION_FORMATS)
        message = f"Invalid 'response_format': expected one of {supported}, but got {fmt!r}."
        raise _RequestError(400, message, "response_format", "invalid_value")
    seconds = audio_seconds(len(audio))
    text = transcript_text(seconds)
    if fmt == "text":
        return _Text(text)
    if fmt in ("srt", "vtt"):
        return _Text(_subtitles(text, seconds, fmt))
    usage = {"type": "duration", "seconds": seconds}
    if fmt == "json":
        return 200, {"text": text, "usage": usage}
    segment = {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": float(seconds),
        "text": text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": 0.0,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.0,
    }
    return 200, {
        "task": task,
        "language": TRANSCRIPT_LANGUAGE,
        "duration": float(seconds),
        "text": text,
        "segments": [segment],
        "usage": usage,
    }


def _token_transcription(form: _Form, model: str, fmt: str, size: int) -> _Reply:
    """gpt-4o-transcribe's (or its mini's) answer: the transcript, and in json its tokens."""
    if fmt not in TOKEN_TRANSCRIPTION_FORMATS:
        message = (
            f"response_format '{fmt}' is not compatible with model '{model}'. Use 'json' or "
            "'text' instead."
        )
        raise _RequestError(400, message, "response_format", "unsupported_value")
    audio = AUDIO_TOKENS_PER_SECOND * audio_seconds(size)
    prompt = text_tokens(form.fields.get("prompt", ""))
    if audio + prompt > TRANSCRIBE_CONTEXT:
        message = f"Audio file is too long for {model}: {audio + prompt} tokens, the most is 16000."
        raise _RequestError(400, message, "file", "invalid_value")
    text = transcript_text(audio_seconds(size))[: TRANSCRIBE_MAX_OUTPUT * TOKEN_CHARS]
    if fmt == "text":
        return _Text(text)
    output = text_tokens(text)
    usage = {
        "type": "tokens", "input_tokens": audio + prompt, "output_tokens": output,
        "total_tokens": audio + prompt + output,
        "input_token_details": {"text_tokens": prompt, "audio_tokens": audio},
    }  # fmt: skip
    return 200, {"text": text, "usage": usage}


def speech_audio(text: str) -> bytes:
    """The audio of ``text``: ``SPEECH_HEADER``, then ``SPEECH_BYTES_PER_CHAR`` bytes a character."""
    body = hashlib.shake_256(text.encode()).digest(SPEECH_BYTES_PER_CHAR * len(text))
    return SPEECH_HEADER + body


def _text_to_speech(body: JSON, config: SimulatorConfig) -> _Reply:
    """POST /v1/audio/speech: ``speech_audio(input)``, chunked."""
    if body.get("model") is None:
        message = "Missing required parameter: 'model'."
        raise _RequestError(400, message, "model", "missing_required_parameter")
    model = _model(body, config)
    if model not in SPEECH_MODELS:
        raise _RequestError(400, f"Invalid model '{model}' for speech.", "model", "invalid_value")
    text = body.get("input")
    if text is None:
        message = "Missing required parameter: 'input'."
        raise _RequestError(400, message, "input", "missing_required_parameter")
    if not isinstance(text, str):
        raise _invalid_type("input", "a string", text)
    if not text:
        message = "Invalid 'input': string too short. Expected a string with minimum length 1."
        raise _RequestError(400, message, "input", "string_below_min_length")
    if len(text) > MAX_SPEECH_CHARS:
        message = (
            f"Invalid 'input': string too long. Expected a string with maximum length "
            f"{MAX_SPEECH_CHARS}, but got a string with length {len(text)} instead."
        )
        raise _RequestError(400, message, "input", "string_above_max_length")
    _choice(body, "voice", SPEECH_VOICES, None)
    fmt = _choice(body, "response_format", tuple(SPEECH_FORMATS), "mp3")
    if _choice(body, "stream_format", ("audio", "sse"), "audio") == "sse":
        message = f"Unsupported value: 'stream_format' does not support 'sse' with {model}."
        raise _RequestError(400, message, "stream_format", "unsupported_value")
    speed = body.get("speed")
    if speed is not None and (
        isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4
    ):
        message = "Invalid 'speed': expected a number from 0.25 to 4.0."
        raise _RequestError(400, message, "speed", "invalid_value")
    _optional_str(body, "instructions")
    audio = speech_audio(text)
    rest = audio[len(SPEECH_HEADER) :]
    pieces = [rest[i : i + SPEECH_CHUNK_BYTES] for i in range(0, len(rest), SPEECH_CHUNK_BYTES)]
    return _Audio(SPEECH_FORMATS[fmt], [SPEECH_HEADER, *pieces])


def _model_card(model: str) -> JSON:
    return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": OWNED_BY}


def _parse(raw: bytes) -> JSON:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = (
            "We could not parse the JSON body of your request. The API expects a JSON payload."
        )
        raise _RequestError(400, message) from None
    if not isinstance(body, dict):
        raise _RequestError(400, "The request body must be a JSON object.")
    return body


def _dispatch(
    method: str,
    path: str,
    raw: bytes,
    content_type: str,
    config: SimulatorConfig,
    store: _ResponseStore,
) -> _Reply:
    if method == "GET" and path == "/v1/models":
        return 200, {"object": "list", "data": [_model_card(m) for m in config.models]}
    if method == "GET" and path.startswith("/v1/models/"):
        model = path.removeprefix("/v1/models/")
        if model not in config.models:
            message = f"The model '{model}' does not exist"
            raise _RequestError(404, message, "model", "model_not_found")
        return 200, _model_card(model)
    if method == "POST" and path == "/v1/chat/completions":
        return _completion(_parse(raw), config, chat=True)
    if method == "POST" and path == "/v1/completions":
        return _completion(_parse(raw), config, chat=False)
    if method == "POST" and path == "/v1/embeddings":
        return _embeddings(_parse(raw), config)
    if method == "POST" and path == "/v1/responses":
        return _create_response(_parse(raw), config, store)
    if path.startswith("/v1/responses/"):
        return _stored_response(method, path, store)
    if method == "POST" and path == "/v1/moderations":
        return _moderations(_parse(raw), config)
    if method == "POST" and path == "/v1/images/generations":
        return _generate_images(_parse(raw), config)
    if method == "POST" and path == "/v1/audio/transcriptions":
        return _speech_to_text(raw, content_type, config, "transcribe")
    if method == "POST" and path == "/v1/audio/translations":
        return _speech_to_text(raw, content_type, config, "translate")
    if method == "POST" and path == "/v1/audio/speech":
        return _text_to_speech(_parse(raw), config)
    raise _RequestError(404, f"Invalid URL ({method} {path})")


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str:
    """A request header's value (latin-1), ``""`` when absent; ``name`` in lower case."""
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def _send_json(send: Send, status: int, payload: JSON) -> None:
    await _send_body(send, status, b"application/json", orjson.dumps(payload))


async def _send_body(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *_SERVER_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_stream(send: Send, stream: _Stream, tokens_per_second: float) -> None:
    headers = [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        *_SERVER_HEADERS,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def event(data: bytes, name: str | None = None) -> None:
        body = b"data: " + data + b"\n\n"
        if name is not None:
            body = b"event: " + name.encode() + b"\n" + body
        await send({"type": "http.response.body", "body": body, "more_body": True})

    async def payload_event(payload: JSON) -> None:
        await event(orjson.dumps(payload), str(payload["type"]) if stream.named else None)

    for payload in stream.head:
        await payload_event(payload)
    for payload in stream.tokens:
        if tokens_per_second > 0:
            await _sleep(1.0 / tokens_per_second)
        await payload_event(payload)
    for payload in stream.tail:
        await payload_event(payload)
    if not stream.named:
        await event(b"[DONE]")
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_audio(send: Send, audio: _Audio, tokens_per_second: float) -> None:
    headers = [(b"content-type", audio.content_type), *_SERVER_HEADERS]  # (chunked: no length)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i, chunk in enumerate(audio.chunks):
        if i and tokens_per_second > 0:
            await _sleep(1.0 / tokens_per_second)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(config: SimulatorConfig = SimulatorConfig()) -> ASGIApp:
    """The simulator as a plain ASGI application, with its own store of responses."""
    store = _ResponseStore(MAX_STORED_RESPONSES)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = str(scope["method"]).upper()
        path = str(scope["path"]).rstrip("/") or "/"
        raw = await _read_body(receive)
        content_type = _header(scope, b"content-type")
        try:
            reply = _dispatch(method, path, raw, content_type, config, store)
        except _RequestError as exc:
            reply = (exc.status, exc.payload)
        if method == "POST" and config.latency_ms > 0:
            await _sleep(config.latency_ms / 1000.0)
        if isinstance(reply, _Stream):
            await _send_stream(send, reply, config.tokens_per_second)
        elif isinstance(reply, _Text):
            await _send_body(send, 200, b"text/plain; charset=utf-8", reply.text.encode())
        elif isinstance(reply, _Audio):
            await _send_audio(send, reply, config.tokens_per_second)
        else:
            await _send_json(send, *reply)

    return app


def serve(sock: socket.socket, config: SimulatorConfig) -> None:
    """Run the simulator on the listening ``sock`` until stopped (Ctrl-C / SIGTERM)."""
    from keyplane import server

    simulator = server.make_server(create_app(config))

    async def main() -> None:
        server.stop_on_signals([simulator])
        await simulator.serve([sock])

    server.run(main())
