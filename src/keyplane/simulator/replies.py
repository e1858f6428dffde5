"""What a route answers (``Reply``: a status and JSON, server-sent events, plain text or
chunked audio) and how it goes out over ASGI, marked ``x-simulator: keyplane``.

Timing: ``latency_ms`` is slept before answering every POST; when streaming with
``tokens_per_second > 0``, ``1 / tokens_per_second`` is slept before each token chunk (a
``response.output_text.delta`` event for the Responses API, a ``transcript.text.delta`` event for
a transcription), and before each piece of speech's audio after its header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from keyplane.simulator.params import JSON

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SERVER_HEADERS = [(b"x-simulator", b"keyplane")]

# Indirection so tests can observe the delays without really sleeping.
_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass
class Stream:
    """Server-sent events; a delay may precede each of ``tokens`` (see ``_send_stream``).

    Chat, completion and transcription streams send bare ``data:`` events and end with
    ``data: [DONE]``;
    Responses streams (``named``) also name each event after its ``type`` and have no end
    marker, as OpenAI's do.
    """

    head: list[JSON]
    tokens: list[JSON]
    tail: list[JSON]
    named: bool = False


@dataclass(frozen=True)
class Audio:
    """A binary answer sent chunked: 200, ``content_type``, each of ``chunks`` a message."""

    content_type: bytes
    chunks: list[bytes]


@dataclass(frozen=True)
class Text:
    """A plain-text answer: 200, ``text/plain; charset=utf-8`` (a transcript, SRT or VTT)."""

    text: str


Reply = tuple[int, JSON] | Stream | Text | Audio


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def header(scope: Scope, name: bytes) -> str:
    """A request header's value (latin-1), ``""`` when absent; ``name`` in lower case."""
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def send_reply(send: Send, reply: Reply, delay: float, tokens_per_second: float) -> None:
    """Send ``reply`` after ``delay`` seconds (the latency of a POST, else 0)."""
    if delay > 0:
        await _sleep(delay)
    if isinstance(reply, Stream):
        await _send_stream(send, reply, tokens_per_second)
    elif isinstance(reply, Text):
        await _send_body(send, 200, b"text/plain; charset=utf-8", reply.text.encode())
    elif isinstance(reply, Audio):
        await _send_audio(send, reply, tokens_per_second)
    else:
        await _send_json(send, *reply)


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


async def _send_stream(send: Send, stream: Stream, tokens_per_second: float) -> None:
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


async def _send_audio(send: Send, audio: Audio, tokens_per_second: float) -> None:
    headers = [(b"content-type", audio.content_type), *_SERVER_HEADERS]  # (chunked: no length)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i, chunk in enumerate(audio.chunks):
        if i and tokens_per_second > 0:
            await _sleep(1.0 / tokens_per_second)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
