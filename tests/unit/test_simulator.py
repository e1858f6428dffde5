"""Tests for the built-in OpenAI-compatible upstream simulator."""

from __future__ import annotations

import base64
import re
import struct
import warnings
import zlib
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import orjson
import pytest

import kphttp
from keyplane import simulator
from keyplane.simulator import (
    DEFAULT_MODELS,
    SPEECH_HEADER,
    TOKEN_CHARS,
    SimulatorConfig,
    audio_seconds,
    completion_text,
    create_app,
    prompt_tokens,
    replies,
    response_input_tokens,
    speech_audio,
    text_tokens,
    transcript_text,
)
from keyplane.simulator import app as simulator_app
from kptest import ServerThread

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def _client(config: SimulatorConfig | None = None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config or SimulatorConfig())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


def _events(response: httpx.Response) -> list[Any]:
    """The `data:` payloads of an SSE body; "[DONE]" stays a string."""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    out: list[Any] = []
    for block in response.text.split("\n\n")[:-1]:
        assert block.startswith("data: ")
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def _named_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The payloads of a Responses SSE body: every event named after its type, no [DONE]."""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    out: list[dict[str, Any]] = []
    for block in response.text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        payload = orjson.loads(data_line.removeprefix("data: "))
        assert payload["type"] == name_line.removeprefix("event: ")
        out.append(payload)
    return out


def _assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status
    assert response.headers["x-simulator"] == "keyplane"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the simulator, please."},
]


# --- pure helpers -------------------------------------------------------------------------------


def test_text_tokens() -> None:
    assert text_tokens("") == 0
    assert text_tokens("a") == 1
    assert text_tokens("abcd") == 1
    assert text_tokens("abcde") == 2
    assert text_tokens("x" * 400) == 100


def test_prompt_tokens_formula() -> None:
    expected = (3 + text_tokens(MESSAGES[0]["content"])) + (3 + 9) + 3
    assert prompt_tokens(MESSAGES) == expected == 3 + 4 + 3 + 9 + 3
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, image]}]
    assert prompt_tokens(parts) == 3 + 2 + 3
    assert prompt_tokens([{"role": "assistant", "content": None}]) == 6


def test_completion_text_pieces() -> None:
    assert completion_text(0) == ""
    for n in (1, 2, 9, 10, 37):
        text = completion_text(n)
        assert len(text) == TOKEN_CHARS * n
        assert text_tokens(text) == n
    assert completion_text(9).startswith("Hello from the keyplane simulator.")
    assert completion_text(20).startswith(completion_text(7))


# --- models ---------------------------------------------------------------------------------------


async def test_models_list_and_retrieve() -> None:
    async with _client() as client:
        response = await client.get("/v1/models")
        assert response.status_code == 200
        assert response.headers["x-simulator"] == "keyplane"
        body = response.json()
        assert body["object"] == "list"
        assert [m["id"] for m in body["data"]] == list(DEFAULT_MODELS)
        assert body["data"][0] == {
            "id": DEFAULT_MODELS[0],
            "object": "model",
            "created": 1700000000,
            "owned_by": "keyplane-simulator",
        }
        one = await client.get("/v1/models/gpt-4o-mini")
        assert one.status_code == 200
        assert one.json()["id"] == "gpt-4o-mini"
        _assert_error(await client.get("/v1/models/nope"), 404, "model_not_found")


async def test_custom_model_list() -> None:
    async with _client(SimulatorConfig(models=("only-one",))) as client:
        assert [m["id"] for m in (await client.get("/v1/models")).json()["data"]] == ["only-one"]
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}
        )
        _assert_error(response, 404, "model_not_found")


# --- chat completions -------------------------------------------------------------------------


async def test_a_content_part_typed_as_an_array_is_no_server_error() -> None:
    """(Its ``type`` was looked up in a set of text kinds: TypeError, unhashable, a 500, which
    keyplane's gateway passed on.) A part of no known type adds no text."""
    parts = [{"type": [], "text": "ignored"}, {"type": {}, "text": "ignored"}]
    async with _client() as client:
        for path, field in (("/v1/chat/completions", "messages"), ("/v1/responses", "input")):
            body = {"model": "gpt-4o-mini", field: [{"role": "user", "content": parts}]}
            response = await client.post(path, json=body)
            assert response.status_code == 200, response.text
            usage = response.json()["usage"]
            assert usage.get("prompt_tokens", usage.get("input_tokens")) == prompt_tokens(
                [{"role": "user", "content": ""}]
            )


async def test_chat_non_stream_usage_matches_formula() -> None:
    async with _client(SimulatorConfig(completion_tokens=12)) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES}
        )
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "keyplane"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-sim")
    assert body["model"] == "gpt-4o-mini"
    assert isinstance(body["created"], int)
    assert body["system_fingerprint"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == completion_text(12)
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens(MESSAGES),
        "completion_tokens": 12,
        "total_tokens": prompt_tokens(MESSAGES) + 12,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


@pytest.mark.parametrize(
    ("params", "n", "finish"),
    [
        ({"max_tokens": 5}, 5, "length"),
        ({"max_completion_tokens": 3}, 3, "length"),
        ({"max_tokens": 1}, 1, "length"),
        ({"max_tokens": 16}, 16, "stop"),
        ({"max_tokens": 1000}, 16, "stop"),
        ({"max_tokens": None}, 16, "stop"),
    ],
)
async def test_chat_max_tokens_caps(params: dict[str, Any], n: int, finish: str) -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "sim-chat", "messages": MESSAGES, **params}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == completion_text(n)
    assert body["choices"][0]["finish_reason"] == finish
    assert body["usage"]["completion_tokens"] == n


async def test_chat_stream_without_usage() -> None:
    async with _client(SimulatorConfig(completion_tokens=7)) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES, "stream": True},
        )
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "keyplane"
    events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) == 1 + 7 + 1
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert all(len(p) == TOKEN_CHARS for p in pieces)
    assert "".join(pieces) == completion_text(7)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }


async def test_chat_stream_with_usage_and_cap() -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 4,
            },
        )
    events = _events(response)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert len(chunks) == 1 + 4 + 1
    assert all(c["usage"] is None for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == completion_text(4)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == prompt_tokens(MESSAGES)
    assert usage_chunk["usage"]["completion_tokens"] == 4
    assert usage_chunk["usage"]["total_tokens"] == prompt_tokens(MESSAGES) + 4


AUDIO_IN = [{"role": "user", "content": [
    {"type": "text", "text": "What is said?"},
    {"type": "input_audio", "input_audio": {"data": base64.b64encode(bytes(6401)).decode(),
                                            "format": "wav"}},
]}]  # fmt: skip
SPEAK = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}


async def test_chat_hears_audio_parts_and_speaks_when_asked() -> None:
    heard = 3  # 6,401 bytes: ceil(6,401 / 3,200) tokens
    async with _client(SimulatorConfig(completion_tokens=12)) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "sim-audio", "messages": AUDIO_IN, **SPEAK}
        )
        plain = await client.post(
            "/v1/chat/completions", json={"model": "sim-audio", "messages": AUDIO_IN}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["audio"]["transcript"] == completion_text(2)
    assert base64.b64decode(message["audio"]["data"]) == bytes(10 * 8)  # 10 tokens of silence
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens(AUDIO_IN) + heard,
        "completion_tokens": 12,
        "total_tokens": prompt_tokens(AUDIO_IN) + heard + 12,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": heard},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 10},
    }
    # Heard but not asked to speak: text out, its audio tokens 0.
    assert plain.json()["choices"][0]["message"]["content"] == completion_text(12)
    assert plain.json()["usage"]["completion_tokens_details"]["audio_tokens"] == 0


async def test_a_chat_that_speaks_streams_its_transcript_then_its_audio() -> None:
    async with _client(SimulatorConfig(completion_tokens=12)) as client:
        response = await client.post("/v1/chat/completions", json={
            "model": "sim-audio", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}, **SPEAK,
        })  # fmt: skip
    *chunks, usage_chunk = _events(response)[:-1]
    audio = [
        c["choices"][0]["delta"]["audio"] for c in chunks if "audio" in c["choices"][0]["delta"]
    ]
    assert len({a["id"] for a in audio if "id" in a}) == 1 and "id" in audio[0]
    assert "".join(a.get("transcript", "") for a in audio) == completion_text(2)
    assert base64.b64decode("".join(a.get("data", "") for a in audio)) == bytes(80)
    assert "expires_at" in audio[-1]
    assert usage_chunk["usage"]["completion_tokens_details"]["audio_tokens"] == 10


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"modalities": ["audio"]}, "audio"),  # no voice nor format
        ({"modalities": "audio"}, "modalities"),
        ({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "not base64!"}}]}]},
         "messages[0].content[0].input_audio.data"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "messages[0].content[0].input_audio.data"),
    ],
)  # fmt: skip
async def test_bad_audio_requests_are_refused(extra: dict[str, Any], param: str) -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "sim-audio", "messages": MESSAGES, **extra}
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_stream_events_are_separate_asgi_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(replies, "_sleep", fake_sleep)
    app = create_app(SimulatorConfig(latency_ms=250, tokens_per_second=50, completion_tokens=3))
    body = orjson.dumps(
        {
            "model": "sim-chat",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    sent = await _asgi_messages(app, "POST", "/v1/chat/completions", body)

    assert sent[0]["type"] == "http.response.start"
    assert (b"x-simulator", b"keyplane") in sent[0]["headers"]
    bodies = sent[1:]
    assert all(m["type"] == "http.response.body" for m in bodies)
    assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    events = bodies[:-1]
    # role + 3 tokens + finish + usage + [DONE], each its own message
    assert len(events) == 7
    assert all(m["more_body"] is True for m in events)
    assert all(m["body"].startswith(b"data: ") for m in events)
    assert all(m["body"].count(b"\n\n") == 1 and m["body"].endswith(b"\n\n") for m in events)
    assert events[-1]["body"] == b"data: [DONE]\n\n"
    assert delays == [0.25, 0.02, 0.02, 0.02]


async def test_latency_applies_to_post_only(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(replies, "_sleep", fake_sleep)
    async with _client(SimulatorConfig(latency_ms=40, tokens_per_second=10)) as client:
        await client.get("/v1/models")
        assert delays == []
        await client.post("/v1/chat/completions", json={"model": "o4-mini", "messages": MESSAGES})
        assert delays == [0.04]  # no per-token delay when not streaming
        await client.post("/v1/embeddings", json={"model": "sim-embed", "input": "x"})
        assert delays == [0.04, 0.04]


# --- legacy completions -----------------------------------------------------------------------


async def test_legacy_completions() -> None:
    async with _client(SimulatorConfig(completion_tokens=6)) as client:
        response = await client.post(
            "/v1/completions",
            json={"model": "gpt-3.5-turbo", "prompt": ["abcdefgh", "abc"], "max_tokens": 5},
        )
        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "text_completion"
        assert body["id"].startswith("cmpl-sim")
        assert body["choices"][0]["text"] == completion_text(5)
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["prompt_tokens"] == 2 + 1
        assert body["usage"]["completion_tokens"] == 5
        assert body["usage"]["total_tokens"] == 8

        response = await client.post(
            "/v1/completions",
            json={
                "model": "gpt-3.5-turbo",
                "prompt": "hello",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    events = _events(response)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert all(c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == completion_text(6)
    assert len(chunks) == 6 + 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 2
    assert usage_chunk["usage"]["completion_tokens"] == 6


# --- embeddings --------------------------------------------------------------------------------


async def test_embeddings_float_and_base64_agree() -> None:
    inputs = ["hello world", "", "another text"]
    async with _client() as client:
        plain = await client.post(
            "/v1/embeddings", json={"model": "text-embedding-3-small", "input": inputs}
        )
        packed = await client.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": inputs, "encoding_format": "base64"},
        )
    assert plain.status_code == packed.status_code == 200
    assert plain.headers["x-simulator"] == "keyplane"
    floats, b64 = plain.json(), packed.json()
    assert floats["object"] == "list"
    assert floats["model"] == "text-embedding-3-small"
    expected_tokens = sum(text_tokens(t) for t in inputs)
    assert floats["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens}
    assert b64["usage"] == floats["usage"]
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    for f, b in zip(floats["data"], b64["data"], strict=True):
        assert f["object"] == b["object"] == "embedding"
        vector = f["embedding"]
        assert len(vector) == 8
        assert abs(sum(v * v for v in vector) - 1.0) < 1e-5
        raw = base64.b64decode(b["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == vector
    assert floats["data"][0]["embedding"] != floats["data"][2]["embedding"]


async def test_embeddings_deterministic_dimensions_and_token_arrays() -> None:
    async with _client() as client:
        first = await client.post("/v1/embeddings", json={"model": "sim-embed", "input": "same"})
        again = await client.post(
            "/v1/embeddings", json={"model": "sim-embed", "input": ["same"], "dimensions": 32}
        )
        tokens = await client.post(
            "/v1/embeddings", json={"model": "sim-embed", "input": [[1, 2, 3], [4, 5]]}
        )
        single = await client.post(
            "/v1/embeddings", json={"model": "sim-embed", "input": [7, 8, 9, 10]}
        )
        repeat = await client.post("/v1/embeddings", json={"model": "sim-embed", "input": "same"})
    assert first.json()["data"] == repeat.json()["data"]
    assert len(again.json()["data"][0]["embedding"]) == 32
    assert tokens.json()["usage"]["prompt_tokens"] == 5
    assert len(tokens.json()["data"]) == 2
    assert single.json()["usage"]["prompt_tokens"] == 4
    assert len(single.json()["data"]) == 1


# --- responses --------------------------------------------------------------------------------

INSTRUCTIONS = "Answer in one line."  # 19 chars: 5 tokens
RESPONSE_ITEMS: list[dict[str, Any]] = [
    {"role": "developer", "content": "Be brief."},  # 3 tokens
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Describe "},
            {"type": "input_image", "image_url": "http://x/y.png"},
            {"type": "input_file", "file_id": "file-1"},
            {"type": "input_text", "text": "this picture."},
        ],
    },  # "Describe this picture." = 22 chars: 6 tokens
    {"role": "assistant", "content": [{"type": "output_text", "text": "Done"}]},  # 1 token
    {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'},  # 3
]
RESPONSE_ITEMS_TOKENS = 5 + (3 + 3) + (3 + 6) + (3 + 1) + (3 + 3) + 3


def test_response_input_tokens_formula() -> None:
    assert response_input_tokens([]) == 3
    assert response_input_tokens([{"role": "user", "content": "abcdefgh"}]) == 3 + 2 + 3
    assert response_input_tokens(RESPONSE_ITEMS, INSTRUCTIONS) == RESPONSE_ITEMS_TOKENS
    # A chat-style {"type": "text"} part is not a Responses text part.
    chat_part = [{"role": "user", "content": [{"type": "text", "text": "abcd"}]}]
    assert response_input_tokens(chat_part) == 6


async def test_responses_create_string_input() -> None:
    async with _client(SimulatorConfig(completion_tokens=12)) as client:
        response = await client.post(
            "/v1/responses", json={"model": "gpt-4.1", "input": "Say hello, please."}
        )
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "keyplane"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    message = body["output"][0]
    input_tokens = 3 + text_tokens("Say hello, please.") + 3
    assert body["id"].startswith("resp_") and len(body["id"]) == len("resp_") + 32
    assert message["id"].startswith("msg_")
    assert isinstance(body["created_at"], int)
    assert body == {
        "id": body["id"],
        "object": "response",
        "created_at": body["created_at"],
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": "gpt-4.1",
        "instructions": None,
        "max_output_tokens": None,
        "previous_response_id": None,
        "store": True,
        "output": [
            {
                "id": message["id"],
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": completion_text(12), "annotations": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": 1.0,
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": {},
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 12,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + 12,
        },
    }


async def test_responses_items_and_instructions_count_by_the_formula() -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/responses",
            json={"model": "o4-mini", "input": RESPONSE_ITEMS, "instructions": INSTRUCTIONS},
        )
    body = response.json()
    assert body["instructions"] == INSTRUCTIONS
    assert body["usage"]["input_tokens"] == RESPONSE_ITEMS_TOKENS == 33
    assert body["usage"]["output_tokens"] == 16
    assert body["usage"]["total_tokens"] == 33 + 16


@pytest.mark.parametrize(
    ("cap", "n", "status"),
    [(1, 1, "incomplete"), (5, 5, "incomplete"), (8, 8, "completed"), (500, 8, "completed")],
)
async def test_responses_max_output_tokens(cap: int, n: int, status: str) -> None:
    async with _client(SimulatorConfig(completion_tokens=8)) as client:
        response = await client.post(
            "/v1/responses", json={"model": "sim-chat", "input": "hi", "max_output_tokens": cap}
        )
    body = response.json()
    assert body["status"] == body["output"][0]["status"] == status
    expected = {"reason": "max_output_tokens"} if status == "incomplete" else None
    assert body["incomplete_details"] == expected
    assert body["max_output_tokens"] == cap
    assert body["output"][0]["content"][0]["text"] == completion_text(n)
    assert body["usage"]["output_tokens"] == n


async def test_previous_response_id_carries_the_earlier_context() -> None:
    async with _client(SimulatorConfig(completion_tokens=4)) as client:
        first = await client.post("/v1/responses", json={"model": "gpt-4o", "input": "abcd"})
        first_body = first.json()
        assert first_body["usage"]["total_tokens"] == (3 + 1 + 3) + 4 == 11
        second = await client.post(
            "/v1/responses",
            json={"model": "gpt-4o", "input": "efgh", "previous_response_id": first_body["id"]},
        )
        second_body = second.json()
        assert second_body["previous_response_id"] == first_body["id"]
        assert second_body["usage"]["input_tokens"] == 7 + 11
        # Only a previous response, no new input: the items part is just the 3 closing tokens.
        third = await client.post(
            "/v1/responses",
            json={"model": "gpt-4o", "previous_response_id": second_body["id"]},
        )
        assert third.status_code == 200
        assert third.json()["usage"]["input_tokens"] == 3 + (18 + 4)

        unknown = await client.post(
            "/v1/responses",
            json={"model": "gpt-4o", "input": "x", "previous_response_id": "resp_nope"},
        )
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {
            "message": "Previous response with id 'resp_nope' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    }


async def test_stored_response_routes() -> None:
    async with _client() as client:
        created = await client.post(
            "/v1/responses",
            json={"model": "gpt-4o-mini", "input": RESPONSE_ITEMS, "instructions": INSTRUCTIONS},
        )
        response_id = created.json()["id"]
        retrieved = await client.get(f"/v1/responses/{response_id}")
        assert retrieved.status_code == 200
        assert retrieved.json() == created.json()

        items = (await client.get(f"/v1/responses/{response_id}/input_items")).json()
        data = items["data"]
        assert items["object"] == "list"
        assert items["has_more"] is False
        assert (items["first_id"], items["last_id"]) == (data[0]["id"], data[-1]["id"])
        assert len({item["id"] for item in data}) == 4
        assert data[0] == {
            "id": data[0]["id"],
            "type": "message",
            "role": "developer",
            "status": "completed",
            "content": [{"type": "input_text", "text": "Be brief."}],
        }
        assert data[0]["id"].startswith("msg_")
        assert data[1]["content"] == RESPONSE_ITEMS[1]["content"]
        assert data[2]["role"] == "assistant"
        assert {k: v for k, v in data[3].items() if k != "id"} == RESPONSE_ITEMS[3]

        cancel = await client.post(f"/v1/responses/{response_id}/cancel")
        assert cancel.status_code == 400
        assert cancel.json()["error"] == {
            "message": "Only responses created with background=true can be cancelled.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }

        deleted = await client.delete(f"/v1/responses/{response_id}")
        assert deleted.status_code == 200
        assert deleted.json() == {"id": response_id, "object": "response.deleted", "deleted": True}
        gone = [
            await client.get(f"/v1/responses/{response_id}"),
            await client.delete(f"/v1/responses/{response_id}"),
            await client.get(f"/v1/responses/{response_id}/input_items"),
            await client.post(f"/v1/responses/{response_id}/cancel"),
        ]
    for response in gone:
        assert response.status_code == 404
        assert response.json() == {
            "error": {
                "message": f"Response with id '{response_id}' not found.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }


async def test_string_input_is_listed_as_one_user_message() -> None:
    async with _client() as client:
        created = await client.post("/v1/responses", json={"model": "gpt-4o", "input": "hey"})
        response_id = created.json()["id"]
        items = (await client.get(f"/v1/responses/{response_id}/input_items")).json()
        _assert_error(await client.get(f"/v1/responses/{response_id}/other"), 404)
        _assert_error(await client.put(f"/v1/responses/{response_id}"), 404)
    [item] = items["data"]
    assert item["role"] == "user"
    assert item["content"] == [{"type": "input_text", "text": "hey"}]


async def test_store_false_is_not_kept() -> None:
    async with _client() as client:
        created = await client.post(
            "/v1/responses", json={"model": "gpt-4o", "input": "x", "store": False}
        )
        body = created.json()
        assert created.status_code == 200
        assert body["store"] is False
        _assert_error(await client.get(f"/v1/responses/{body['id']}"), 404)
        follow_up = await client.post(
            "/v1/responses",
            json={"model": "gpt-4o", "input": "y", "previous_response_id": body["id"]},
        )
        _assert_error(follow_up, 404, "previous_response_not_found")


async def test_store_keeps_only_the_most_recent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator_app, "MAX_STORED_RESPONSES", 2)
    async with _client() as client:
        ids = []
        for text in ("a", "b", "c"):
            created = await client.post("/v1/responses", json={"model": "gpt-4o", "input": text})
            ids.append(created.json()["id"])
        statuses = [(await client.get(f"/v1/responses/{i}")).status_code for i in ids]
    assert statuses == [404, 200, 200]


async def test_responses_are_kept_per_app() -> None:
    async with _client() as one, _client() as other:
        created = await one.post("/v1/responses", json={"model": "gpt-4o", "input": "x"})
        response_id = created.json()["id"]
        assert (await one.get(f"/v1/responses/{response_id}")).status_code == 200
        _assert_error(await other.get(f"/v1/responses/{response_id}"), 404)


RESPONSE_EVENT_HEAD = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
RESPONSE_EVENT_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


async def test_responses_stream_events() -> None:
    async with _client(SimulatorConfig(completion_tokens=5)) as client:
        response = await client.post(
            "/v1/responses",
            json={"model": "gpt-4o", "input": "hello", "instructions": "x", "stream": True},
        )
        events = _named_events(response)
        final = events[-1]["response"]
        stored = (await client.get(f"/v1/responses/{final['id']}")).json()
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "keyplane"
    assert "[DONE]" not in response.text
    types = [e["type"] for e in events]
    deltas = ["response.output_text.delta"] * 5
    assert types == [*RESPONSE_EVENT_HEAD, *deltas, *RESPONSE_EVENT_TAIL, "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))

    created, in_progress, item_added, part_added = events[:4]
    assert created["response"]["status"] == "in_progress"
    assert created["response"]["output"] == []
    assert created["response"]["usage"] is None
    assert created["response"]["id"] == final["id"]
    assert in_progress["response"] == created["response"]
    message = final["output"][0]
    assert item_added == {
        "type": "response.output_item.added",
        "sequence_number": 2,
        "output_index": 0,
        "item": {**message, "status": "in_progress", "content": []},
    }
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    empty_part = {"type": "output_text", "text": "", "annotations": []}
    assert part_added == {
        "type": "response.content_part.added",
        "sequence_number": 3,
        **where,
        "part": empty_part,
    }
    for event in events[4:9]:
        assert {k: event[k] for k in where} == where
        assert len(event["delta"]) == TOKEN_CHARS
    assert "".join(e["delta"] for e in events[4:9]) == completion_text(5)
    text_done, part_done, item_done = events[9:12]
    assert text_done["text"] == completion_text(5)
    assert part_done["part"] == message["content"][0]
    assert item_done["item"] == message
    assert final["status"] == message["status"] == "completed"
    assert final["usage"]["input_tokens"] == 1 + (3 + 2) + 3
    assert final["usage"]["output_tokens"] == 5
    assert stored == final


async def test_responses_stream_under_a_cap_ends_incomplete() -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/responses",
            json={"model": "gpt-4o", "input": "hi", "stream": True, "max_output_tokens": 2},
        )
    events = _named_events(response)
    assert [e["type"] for e in events][-4:] == [*RESPONSE_EVENT_TAIL, "response.incomplete"]
    assert len(events) == 4 + 2 + 4
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 2
    assert events[-2]["item"]["status"] == "incomplete"


async def _asgi_messages(
    app: simulator.ASGIApp,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> list[MutableMapping[str, Any]]:
    """Everything ``app`` sends for one request, message by message."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers or []}
    await app(scope, receive, send)
    return sent


async def test_responses_stream_events_are_separate_asgi_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(replies, "_sleep", fake_sleep)
    app = create_app(SimulatorConfig(latency_ms=100, tokens_per_second=20, completion_tokens=3))
    body = orjson.dumps({"model": "sim-chat", "input": "hi", "stream": True})
    sent = await _asgi_messages(app, "POST", "/v1/responses", body)

    assert sent[0]["type"] == "http.response.start"
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    bodies = sent[1:]
    assert all(m["type"] == "http.response.body" for m in bodies)
    assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    events = bodies[:-1]
    assert len(events) == 4 + 3 + 4  # no [DONE] message
    assert all(m["more_body"] is True for m in events)
    assert all(m["body"].startswith(b"event: response.") for m in events)
    assert all(m["body"].count(b"\n\n") == 1 and m["body"].endswith(b"\n\n") for m in events)
    assert events[-1]["body"].startswith(b"event: response.completed\ndata: {")
    assert delays == [0.1, 0.05, 0.05, 0.05]

    # GETs and DELETEs of stored responses are not delayed; the cancel POST is.
    response_id = orjson.loads(events[-1]["body"].split(b"data: ")[1])["response"]["id"]
    delays.clear()
    await _asgi_messages(app, "GET", f"/v1/responses/{response_id}")
    await _asgi_messages(app, "GET", f"/v1/responses/{response_id}/input_items")
    await _asgi_messages(app, "POST", f"/v1/responses/{response_id}/cancel")
    await _asgi_messages(app, "DELETE", f"/v1/responses/{response_id}")
    assert delays == [0.1]


async def test_responses_missing_input() -> None:
    async with _client() as client:
        response = await client.post("/v1/responses", json={"model": "gpt-4o"})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Missing required parameter: 'input'.",
            "type": "invalid_request_error",
            "param": "input",
            "code": "missing_required_parameter",
        }
    }


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"input": 3}, "input"),
        ({"input": {"role": "user"}}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": "x", "instructions": ["x"]}, "instructions"),
        ({"input": "x", "previous_response_id": 7}, "previous_response_id"),
        ({"input": "x", "store": "no"}, "store"),
        ({"input": "x", "max_output_tokens": "5"}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
    ],
)
async def test_responses_invalid_types(params: dict[str, Any], param: str) -> None:
    async with _client() as client:
        response = await client.post("/v1/responses", json={"model": "gpt-4o", **params})
    _assert_error(response, 400, "invalid_type")
    assert response.json()["error"]["param"] == param


# --- moderations -------------------------------------------------------------------------------


def _moderation_categories(**hits: bool) -> dict[str, bool]:
    names = simulator.MODERATION_CATEGORIES
    return {name: hits.get(name, False) for name in names}


async def test_moderations_flag_the_marker() -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/moderations", json={"input": ["a kind word", "a threat [flag] here"]}
        )
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "keyplane"
    body = response.json()
    assert body["id"].startswith("modr-")
    assert body["model"] == "omni-moderation-latest"
    calm, flagged = body["results"]
    assert calm["flagged"] is False
    assert calm["categories"] == _moderation_categories()
    assert set(calm["category_scores"].values()) == {0.0001}
    assert flagged["flagged"] is True
    assert flagged["categories"] == _moderation_categories(violence=True)
    assert flagged["category_scores"]["violence"] == 0.99
    assert flagged["category_scores"]["harassment"] == 0.0001
    assert len(flagged["categories"]) == 13
    assert "harassment/threatening" in flagged["categories"]
    for result in body["results"]:
        assert set(result["category_scores"]) == set(result["categories"])
        applied = result["category_applied_input_types"]
        assert applied == {name: ["text"] for name in result["categories"]}


async def test_moderations_of_parts_are_one_input() -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    parts = [{"type": "text", "text": "look [fl"}, {"type": "text", "text": "ag]"}, image]
    async with _client() as client:
        mixed = (await client.post("/v1/moderations", json={"input": parts})).json()
        only_image = await client.post(
            "/v1/moderations", json={"input": [image], "model": "text-moderation-latest"}
        )
    [result] = mixed["results"]
    assert result["flagged"] is True
    applied = result["category_applied_input_types"]
    assert applied["violence"] == applied["sexual"] == ["text", "image"]
    assert applied["self-harm/instructions"] == ["text", "image"]
    assert applied["harassment"] == applied["sexual/minors"] == ["text"]
    assert only_image.json()["model"] == "text-moderation-latest"
    [image_result] = only_image.json()["results"]
    assert image_result["flagged"] is False
    assert image_result["category_applied_input_types"]["violence/graphic"] == ["image"]
    assert image_result["category_applied_input_types"]["hate"] == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "missing"),
        ({"input": 4}, 400, "invalid_type"),
        ({"input": []}, 400, "invalid_type"),
        ({"input": ["a", {"type": "text", "text": "b"}]}, 400, "invalid_type"),
        ({"input": [{"type": "text"}]}, 400, "invalid_type"),
        ({"input": [{"type": "audio", "audio": {}}]}, 400, "invalid_type"),
        ({"input": "x", "model": 5}, 400, "invalid_type"),
        ({"input": "x", "model": "gpt-nope"}, 404, "model_not_found"),
    ],
)
async def test_moderations_errors(body: dict[str, Any], status: int, code: str) -> None:
    async with _client() as client:
        _assert_error(await client.post("/v1/moderations", json=body), status, code)


# --- image generation --------------------------------------------------------------------------

IMAGE_URL = re.compile(r"https://simulator\.keyplane\.invalid/images/[0-9a-f]{32}\.png")


def _assert_png_1x1(data: bytes) -> None:
    """``data`` is a well-formed PNG (every chunk's CRC right) of one 8-bit RGB pixel."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    chunks: list[tuple[bytes, bytes]] = []
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        at += 12 + length
    assert at == len(data)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", chunks[0][1]) == (1, 1, 8, 2, 0, 0, 0)
    assert len(zlib.decompress(chunks[1][1])) == 1 + 3  # filter byte + one RGB pixel


def test_png_constant_is_a_valid_png() -> None:
    _assert_png_1x1(simulator.PNG_1X1)


async def test_images_defaults() -> None:
    async with _client() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "a red fox"})
        again = await client.post("/v1/images/generations", json={"prompt": "a red fox"})
        other = await client.post(
            "/v1/images/generations", json={"prompt": "a red fox", "size": "256x256"}
        )
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "keyplane"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"created", "data"}  # no usage, as OpenAI's dall-e answers
    assert isinstance(body["created"], int)
    [image] = body["data"]
    assert set(image) == {"url"}  # dall-e-2: no revised_prompt
    assert IMAGE_URL.fullmatch(image["url"])
    assert again.json()["data"] == body["data"]  # deterministic
    assert other.json()["data"] != body["data"]


async def test_images_n_urls_are_distinct() -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/images/generations",
            json={"model": "dall-e-2", "prompt": "x", "n": 10, "size": "512x512"},
        )
    assert response.status_code == 200
    urls = [image["url"] for image in response.json()["data"]]
    assert len(urls) == len(set(urls)) == 10
    assert all(IMAGE_URL.fullmatch(url) for url in urls)


async def test_images_b64_json_decodes_to_a_png() -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/images/generations",
            json={"prompt": "x", "n": 2, "response_format": "b64_json", "quality": "standard"},
        )
    assert response.status_code == 200
    data = response.json()["data"]
    assert len(data) == 2
    for image in data:
        assert set(image) == {"b64_json"}
        _assert_png_1x1(base64.b64decode(image["b64_json"]))


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
async def test_images_dall_e_3_revises_the_prompt(response_format: str) -> None:
    prompt = "A lighthouse at dusk, oil on canvas."
    async with _client() as client:
        response = await client.post(
            "/v1/images/generations",
            json={
                "model": "dall-e-3",
                "prompt": prompt,
                "n": 1,
                "size": "1024x1792",
                "quality": "hd",
                "style": "natural",
                "response_format": response_format,
            },
        )
    assert response.status_code == 200
    [image] = response.json()["data"]
    assert set(image) == {response_format, "revised_prompt"}
    assert image["revised_prompt"] == prompt
    if response_format == "url":
        assert IMAGE_URL.fullmatch(image["url"])
    else:
        _assert_png_1x1(base64.b64decode(image["b64_json"]))


@pytest.mark.parametrize(
    ("model", "size"),
    [
        ("dall-e-2", "256x256"),
        ("dall-e-2", "512x512"),
        ("dall-e-2", "1024x1024"),
        ("dall-e-3", "1024x1024"),
        ("dall-e-3", "1792x1024"),
        ("dall-e-3", "1024x1792"),
    ],
)
async def test_images_sizes_each_model_draws(model: str, size: str) -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/images/generations", json={"model": model, "prompt": "x", "size": size}
        )
    assert response.status_code == 200
    assert len(response.json()["data"]) == 1


async def test_images_null_parameters_are_defaults() -> None:
    nulls = {"model": None, "n": None, "size": None, "quality": None, "response_format": None}
    async with _client() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x", **nulls})
        plain = await client.post("/v1/images/generations", json={"prompt": "x"})
    assert response.status_code == 200
    assert response.json()["data"] == plain.json()["data"]


async def test_images_missing_prompt() -> None:
    expected = {
        "error": {
            "message": "Missing required parameter: 'prompt'.",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "missing_required_parameter",
        }
    }
    async with _client() as client:
        for body in ({}, {"prompt": None}, {"prompt": ""}, {"model": "dall-e-3"}):
            response = await client.post("/v1/images/generations", json=body)
            assert response.status_code == 400
            assert response.headers["x-simulator"] == "keyplane"
            assert response.json() == expected


async def test_images_refuse_a_model_that_does_not_draw() -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/images/generations", json={"model": "gpt-4o-mini", "prompt": "x"}
        )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Invalid model 'gpt-4o-mini' for image generation.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "invalid_value",
        }
    }


async def test_images_dall_e_3_draws_one_at_a_time() -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/images/generations", json={"model": "dall-e-3", "prompt": "x", "n": 2}
        )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Invalid 'n': dall-e-3 only supports n=1.",
        "type": "invalid_request_error",
        "param": "n",
        "code": "invalid_value",
    }


@pytest.mark.parametrize(
    ("params", "status", "param", "code"),
    [
        ({"prompt": 5}, 400, "prompt", "invalid_type"),
        ({"prompt": ["x"]}, 400, "prompt", "invalid_type"),
        ({"model": 3}, 400, "model", "invalid_type"),
        ({"model": "dall-e-9"}, 404, None, "model_not_found"),
        ({"model": "text-embedding-3-small"}, 400, "model", "invalid_value"),
        ({"model": "omni-moderation-latest"}, 400, "model", "invalid_value"),
        ({"n": 0}, 400, "n", "integer_below_min_value"),
        ({"n": 11}, 400, "n", "integer_above_max_value"),
        ({"n": "2"}, 400, "n", "invalid_type"),
        ({"n": 1.5}, 400, "n", "invalid_type"),
        ({"n": True}, 400, "n", "invalid_type"),
        ({"model": "dall-e-3", "n": 10}, 400, "n", "invalid_value"),
        ({"size": "1792x1024"}, 400, "size", "invalid_value"),
        ({"size": "2048x2048"}, 400, "size", "invalid_value"),
        ({"size": 1024}, 400, "size", "invalid_type"),
        ({"model": "dall-e-3", "size": "256x256"}, 400, "size", "invalid_value"),
        ({"model": "dall-e-3", "size": "512x512"}, 400, "size", "invalid_value"),
        ({"quality": "hd"}, 400, "quality", "invalid_value"),
        ({"model": "dall-e-3", "quality": "ultra"}, 400, "quality", "invalid_value"),
        ({"quality": 1}, 400, "quality", "invalid_type"),
        ({"response_format": "png"}, 400, "response_format", "invalid_value"),
        ({"response_format": ["url"]}, 400, "response_format", "invalid_type"),
        ({"stream": True}, 400, "stream", "invalid_value"),
    ],
)
async def test_images_errors(params: dict[str, Any], status: int, param: str, code: str) -> None:
    async with _client() as client:
        response = await client.post("/v1/images/generations", json={"prompt": "x", **params})
    _assert_error(response, status, code)
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("quality", "size", "tokens"),
    [("low", "1024x1024", 272), ("high", "1024x1536", 6240), ("medium", "1536x1024", 1568),
     (None, None, 1056), ("auto", "auto", 1056), ("high", "auto", 4160)],
)  # fmt: skip
async def test_gpt_image_1_answers_base64_with_its_token_usage(
    quality: str | None, size: str | None, tokens: int
) -> None:
    prompt = "A lighthouse at dusk"
    body = {"model": "gpt-image-1", "prompt": prompt, "n": 3, "quality": quality, "size": size}
    async with _client() as client:
        response = await client.post("/v1/images/generations", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert len(answer["data"]) == 3
    for image in answer["data"]:
        assert set(image) == {"b64_json"}
        _assert_png_1x1(base64.b64decode(image["b64_json"]))
    text = simulator.text_tokens(prompt)
    assert answer["usage"] == {
        "total_tokens": text + 3 * tokens, "input_tokens": text, "output_tokens": 3 * tokens,
        "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
    }  # fmt: skip
    assert answer["quality"] in ("low", "medium", "high") and "x" in answer["size"]
    assert (answer["output_format"], answer["background"]) == ("png", "opaque")


@pytest.mark.parametrize(
    ("params", "param"),
    [({"response_format": "url"}, "response_format"), ({"quality": "hd"}, "quality"),
     ({"size": "256x256"}, "size"), ({"output_format": "gif"}, "output_format"),
     ({"background": "green"}, "background"), ({"n": 11}, "n")],
)  # fmt: skip
async def test_gpt_image_1_errors(params: dict[str, Any], param: str) -> None:
    body = {"model": "gpt-image-1", "prompt": "x", **params}
    async with _client() as client:
        response = await client.post("/v1/images/generations", json=body)
    _assert_error(response, 400)
    assert response.json()["error"]["param"] == param


async def test_images_model_must_be_served() -> None:
    async with _client(SimulatorConfig(models=("dall-e-2",))) as client:
        served = await client.post(
            "/v1/images/generations", json={"model": "dall-e-2", "prompt": "x"}
        )
        refused = await client.post(
            "/v1/images/generations", json={"model": "dall-e-3", "prompt": "x"}
        )
    assert served.status_code == 200
    _assert_error(refused, 404, "model_not_found")


async def test_images_bad_bodies() -> None:
    async with _client() as client:
        _assert_error(await client.post("/v1/images/generations", json=["x"]), 400)
        bad = await client.post(
            "/v1/images/generations",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        _assert_error(bad, 400)
        _assert_error(await client.get("/v1/images/generations"), 404)


async def test_images_latency_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(replies, "_sleep", fake_sleep)
    async with _client(SimulatorConfig(latency_ms=120, tokens_per_second=10)) as client:
        ok = await client.post("/v1/images/generations", json={"prompt": "x", "n": 3})
        assert ok.status_code == 200
        assert delays == [0.12]  # once per request, not per image
        refused = await client.post("/v1/images/generations", json={"prompt": ""})
        assert refused.status_code == 400
        assert delays == [0.12, 0.12]


# --- image edits and variations ----------------------------------------------------------------

PNG_FILE = ("key.png", simulator.PNG_1X1)


async def test_image_edits_answer_as_generations_with_urls_of_their_own() -> None:
    async with _client() as client:
        edit = await client.post(
            "/v1/images/edits", data={"prompt": "a red fox", "n": "2"},
            files={"image": PNG_FILE, "mask": PNG_FILE},
        )  # fmt: skip
        again = await client.post(
            "/v1/images/edits", data={"prompt": "a red fox", "n": "2"}, files={"image": PNG_FILE}
        )
        generated = await client.post(
            "/v1/images/generations", json={"prompt": "a red fox", "n": 2}
        )
        varied = await client.post(
            "/v1/images/variations", data={"response_format": "b64_json", "size": "256x256"},
            files={"image": PNG_FILE},
        )  # fmt: skip
    assert edit.status_code == 200, edit.text
    body = edit.json()
    assert set(body) == {"created", "data"}  # dall-e-2: no usage
    urls = [image["url"] for image in body["data"]]
    assert len(set(urls)) == 2 and all(IMAGE_URL.fullmatch(url) for url in urls)
    assert again.json()["data"] == body["data"]  # deterministic (the mask is not in the name)
    assert generated.json()["data"] != body["data"]  # an edit's images are its own
    assert varied.status_code == 200, varied.text
    [image] = varied.json()["data"]
    _assert_png_1x1(base64.b64decode(image["b64_json"]))


async def test_a_gpt_image_1_edit_reports_the_tokens_of_the_images_it_read() -> None:
    prompt = "put them on one ring"
    async with _client() as client:
        low = await client.post(
            "/v1/images/edits",
            data={"model": "gpt-image-1", "prompt": prompt, "quality": "low", "size": "1024x1536"},
            files=[("image[]", PNG_FILE), ("image[]", PNG_FILE), ("mask", PNG_FILE)],
        )
        high = await client.post(
            "/v1/images/edits",
            data={"model": "gpt-image-1", "prompt": prompt, "input_fidelity": "high"},
            files={"image": PNG_FILE},
        )
    assert low.status_code == 200, low.text
    text = text_tokens(prompt)
    assert low.json()["usage"] == {
        "total_tokens": text + 2 * 194 + 408, "input_tokens": text + 2 * 194,
        "output_tokens": 408,
        "input_tokens_details": {"text_tokens": text, "image_tokens": 2 * 194},
    }  # fmt: skip
    usage = high.json()["usage"]
    assert usage["input_tokens_details"]["image_tokens"] == 3_050
    assert usage["output_tokens"] == 1056  # auto: medium, 1024x1024


EDITS, VARIATIONS, ONE = "/v1/images/edits", "/v1/images/variations", {"image": PNG_FILE}
GPT_IMAGE_1 = {"prompt": "x", "model": "gpt-image-1"}
BIG_PNG = PNG_FILE[1] + bytes(4 << 20)  # dall-e-2 takes less than 4 MB


@pytest.mark.parametrize(
    ("path", "data", "files", "param", "code"),
    [
        (EDITS, {"prompt": "x"}, {}, "image", "missing_required_parameter"),
        (EDITS, {}, ONE, "prompt", "missing_required_parameter"),
        (EDITS, {"prompt": "x", "model": "dall-e-3"}, ONE, "model", "invalid_value"),
        (VARIATIONS, {"model": "gpt-image-1"}, ONE, "model", "invalid_value"),
        (VARIATIONS, {}, {"image": ("a.gif", b"GIF89a")}, "image", "invalid_image_format"),
        (VARIATIONS, {}, {"image": ("a.png", BIG_PNG)}, "image", "image_too_large"),
        (EDITS, {"prompt": "x"}, [("image[]", PNG_FILE)] * 2, "image", "invalid_value"),
        (VARIATIONS, {"n": "11"}, ONE, "n", "integer_above_max_value"),
        (VARIATIONS, {"n": "two"}, ONE, "n", "invalid_type"),
        (EDITS, {**GPT_IMAGE_1, "response_format": "url"}, ONE, "response_format", "invalid_value"),
    ],
)
async def test_image_edits_and_variations_errors(
    path: str, data: dict[str, str], files: Any, param: str, code: str
) -> None:
    async with _client() as client:
        response = await client.post(path, data=data, files=files or {"other": ("a", b"x")})
    _assert_error(response, 400, code)
    assert response.json()["error"]["param"] == param


async def test_image_edits_take_multipart_bodies_only() -> None:
    async with _client() as client:
        response = await client.post("/v1/images/edits", json={"prompt": "x"})
    _assert_error(response, 400)


# --- speech to text ----------------------------------------------------------------------------

SPEECH_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
SENTENCE = "Hello from the keyplane simulator."


async def _speech(
    client: httpx.AsyncClient,
    path: str = "/v1/audio/transcriptions",
    *,
    audio: bytes | None = b"x" * 40_000,
    **fields: str,
) -> httpx.Response:
    """A multipart request as the SDK sends it: ``file`` (unless None) and text fields."""
    files = {"file": ("speech.mp3", audio, "audio/mpeg")} if audio is not None else {}
    files.setdefault("other", ("other.txt", b"-", "text/plain"))  # multipart even without file
    return await client.post(path, files=files, data={"model": "whisper-1", **fields})


def test_audio_seconds_and_transcript_text() -> None:
    assert [audio_seconds(n) for n in (0, 1, 16_000, 16_001, 32_000, 40_000)] == [1, 1, 1, 2, 2, 3]
    assert transcript_text(1) == SENTENCE
    assert transcript_text(3) == " ".join([SENTENCE] * 3)
    assert "whisper-1" in DEFAULT_MODELS


@pytest.mark.parametrize("path", SPEECH_PATHS)
async def test_speech_json_by_default(path: str) -> None:
    async with _client() as client:
        response = await _speech(client, path)
        explicit = await _speech(
            client, path, response_format="json", language="fr", prompt="p", temperature="0.7"
        )
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "keyplane"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "text": f"{SENTENCE} {SENTENCE} {SENTENCE}",
        "usage": {"type": "duration", "seconds": 3},
    }
    assert explicit.json() == response.json()


@pytest.mark.parametrize(
    ("size", "seconds"), [(0, 1), (1, 1), (16_000, 1), (16_001, 2), (48_000, 3), (48_001, 4)]
)
async def test_speech_duration_follows_the_file_size(size: int, seconds: int) -> None:
    async with _client() as client:
        response = await _speech(client, audio=b"\x00" * size)
    assert response.status_code == 200
    assert response.json() == {
        "text": transcript_text(seconds),
        "usage": {"type": "duration", "seconds": seconds},
    }


@pytest.mark.parametrize(
    ("path", "task"),
    [("/v1/audio/transcriptions", "transcribe"), ("/v1/audio/translations", "translate")],
)
async def test_speech_verbose_json(path: str, task: str) -> None:
    async with _client() as client:
        response = await _speech(client, path, audio=b"x" * 20_000, response_format="verbose_json")
    assert response.status_code == 200
    text = transcript_text(2)
    assert response.json() == {
        "task": task,
        "language": "english",
        "duration": 2.0,
        "text": text,
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": 2.0,
                "text": text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
        ],
        "usage": {"type": "duration", "seconds": 2},
    }


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("text", f"{SENTENCE} {SENTENCE}"),
        ("srt", f"1\n00:00:00,000 --> 00:00:02,000\n{SENTENCE} {SENTENCE}\n\n"),
        ("vtt", f"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n{SENTENCE} {SENTENCE}\n\n"),
    ],
)
@pytest.mark.parametrize("path", SPEECH_PATHS)
async def test_speech_plain_text_formats(path: str, fmt: str, expected: str) -> None:
    async with _client() as client:
        response = await _speech(client, path, audio=b"x" * 32_000, response_format=fmt)
    assert response.status_code == 200
    assert response.headers["x-simulator"] == "keyplane"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == expected
    assert int(response.headers["content-length"]) == len(expected.encode())


async def test_subtitle_timestamps_count_minutes_and_hours() -> None:
    async with _client() as client:
        srt = await _speech(client, audio=b"x" * 16_000 * 3_725, response_format="srt")
        vtt = await _speech(client, audio=b"x" * 16_000 * 61, response_format="vtt")
    assert srt.text.split("\n")[1] == "00:00:00,000 --> 01:02:05,000"
    assert vtt.text.split("\n")[2] == "00:00:00.000 --> 00:01:01.000"


async def test_speech_text_answer_is_one_asgi_message() -> None:
    request = httpx.Request(
        "POST",
        "http://sim/v1/audio/transcriptions",
        files={"file": ("a.wav", b"x")},
        data={"model": "whisper-1", "response_format": "text"},
    )
    headers = [(b"Content-Type", request.headers["content-type"].encode())]
    sent = await _asgi_messages(
        create_app(), "POST", "/v1/audio/transcriptions", request.read(), headers
    )
    assert sent[0]["status"] == 200
    assert (b"content-type", b"text/plain; charset=utf-8") in sent[0]["headers"]
    assert (b"content-length", str(len(SENTENCE)).encode()) in sent[0]["headers"]
    assert (b"x-simulator", b"keyplane") in sent[0]["headers"]
    assert sent[1:] == [
        {"type": "http.response.body", "body": SENTENCE.encode(), "more_body": False}
    ]


@pytest.mark.parametrize("path", SPEECH_PATHS)
async def test_speech_missing_file(path: str) -> None:
    expected = {
        "error": {
            "message": "Missing required parameter: 'file'.",
            "type": "invalid_request_error",
            "param": "file",
            "code": "missing_required_parameter",
        }
    }
    async with _client() as client:
        absent = await _speech(client, path, audio=None)
        as_text = await _speech(client, path, audio=None, file="not a file part")
    for response in (absent, as_text):
        assert response.status_code == 400
        assert response.headers["x-simulator"] == "keyplane"
        assert response.json() == expected


@pytest.mark.parametrize("path", SPEECH_PATHS)
async def test_speech_missing_model(path: str) -> None:
    expected = {
        "error": {
            "message": "Missing required parameter: 'model'.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "missing_required_parameter",
        }
    }
    async with _client() as client:
        absent = await client.post(path, files={"file": ("a.mp3", b"x")})
        empty = await _speech(client, path, model="")
    for response in (absent, empty):
        assert response.status_code == 400
        assert response.json() == expected


@pytest.mark.parametrize("path", SPEECH_PATHS)
@pytest.mark.parametrize(
    ("fields", "status", "param", "code"),
    [
        ({"model": "gpt-4o-mini"}, 400, "model", "invalid_value"),
        ({"model": "dall-e-3"}, 400, "model", "invalid_value"),
        ({"model": "whisper-9"}, 404, None, "model_not_found"),
        ({"response_format": "mp3"}, 400, "response_format", "invalid_value"),
        ({"response_format": ""}, 400, "response_format", "invalid_value"),
        ({"response_format": "JSON"}, 400, "response_format", "invalid_value"),
    ],
)
async def test_speech_errors(
    path: str, fields: dict[str, str], status: int, param: str | None, code: str
) -> None:
    async with _client() as client:
        response = await client.post(
            path, files={"file": ("a.mp3", b"x")}, data={"model": "whisper-1", **fields}
        )
    _assert_error(response, status, code)
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("model", ["gpt-4o-transcribe", "gpt-4o-mini-transcribe"])
async def test_token_transcription_models_answer_their_token_usage(model: str) -> None:
    prompt = "Keyplane, a gateway."
    async with _client() as client:
        response = await _speech(client, model=model, audio=b"x" * 40_000, prompt=prompt)
        text = await _speech(client, model=model, response_format="text")
    assert response.status_code == 200
    transcript = transcript_text(3)
    audio, said = 3 * simulator.AUDIO_TOKENS_PER_SECOND, simulator.text_tokens(prompt)
    output = simulator.text_tokens(transcript)
    assert response.json() == {
        "text": transcript,
        "usage": {
            "type": "tokens", "input_tokens": audio + said, "output_tokens": output,
            "total_tokens": audio + said + output,
            "input_token_details": {"text_tokens": said, "audio_tokens": audio},
        },
    }  # fmt: skip
    assert text.status_code == 200 and text.text == transcript
    assert text.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_token_transcription_streams_its_text_and_usage_in_openais_events(fmt: str) -> None:
    """One delta a token, then the whole text and the usage its json answer carries, then
    [DONE]; whisper-1 ignores stream, as OpenAI's does."""
    prompt = "Keyplane."
    async with _client() as client:
        whole = await _speech(client, model="gpt-4o-transcribe", prompt=prompt)
        streamed = await _speech(
            client, model="gpt-4o-transcribe", prompt=prompt, stream="true", response_format=fmt
        )
        whisper = await _speech(client, stream="true")
    *deltas, done, end = _events(streamed)
    transcript = transcript_text(3)
    assert deltas == [
        {"type": "transcript.text.delta", "delta": transcript[i : i + 4]}
        for i in range(0, len(transcript), 4)
    ]
    assert len(deltas) == whole.json()["usage"]["output_tokens"]
    assert done == {"type": "transcript.text.done", **whole.json()} and end == "[DONE]"
    assert whisper.headers["content-type"] == "application/json"
    assert whisper.json()["text"] == transcript


async def test_token_transcription_is_bounded_by_the_model() -> None:
    """The transcript stops at 2,000 tokens; more audio than 16,000 tokens is refused."""
    most = simulator.TRANSCRIBE_CONTEXT // simulator.AUDIO_TOKENS_PER_SECOND * 16_000
    async with _client() as client:
        longest = await _speech(client, model="gpt-4o-transcribe", audio=b"x" * most)
        too_long = await _speech(client, model="gpt-4o-transcribe", audio=b"x" * (most + 1))
    assert longest.status_code == 200
    usage = longest.json()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (16_000, 2_000)
    _assert_error(too_long, 400, "invalid_value")
    assert too_long.json()["error"]["param"] == "file"


@pytest.mark.parametrize("fmt", ["verbose_json", "srt", "vtt"])
async def test_token_transcription_models_refuse_other_formats(fmt: str) -> None:
    async with _client() as client:
        response = await _speech(client, model="gpt-4o-transcribe", response_format=fmt)
        translation = await _speech(client, "/v1/audio/translations", model="gpt-4o-transcribe")
    _assert_error(response, 400, "unsupported_value")
    assert response.json()["error"]["param"] == "response_format"
    assert response.json()["error"]["message"] == (
        f"response_format '{fmt}' is not compatible with model 'gpt-4o-transcribe'. Use 'json' "
        "or 'text' instead."
    )
    _assert_error(translation, 400, "invalid_value")
    assert translation.json()["error"]["message"] == (
        "Invalid model 'gpt-4o-transcribe' for translation."
    )


async def test_speech_invalid_model_message() -> None:
    async with _client() as client:
        transcribe = await _speech(client, model="gpt-4o")
        translate = await _speech(client, "/v1/audio/translations", model="gpt-4o")
    assert transcribe.json()["error"]["message"] == "Invalid model 'gpt-4o' for transcription."
    assert translate.json()["error"]["message"] == "Invalid model 'gpt-4o' for translation."


async def test_speech_model_must_be_served() -> None:
    async with _client(SimulatorConfig(models=("gpt-4o",))) as client:
        _assert_error(await _speech(client), 404, "model_not_found")


@pytest.mark.parametrize("path", SPEECH_PATHS)
async def test_speech_needs_a_multipart_body(path: str) -> None:
    expected = {
        "error": {
            "message": "Expected a multipart/form-data body.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    async with _client() as client:
        refused = [
            await client.post(path, json={"model": "whisper-1", "file": "x"}),
            await client.post(path, data={"model": "whisper-1"}),  # urlencoded
            await client.post(path, content=b"x"),  # no content-type at all
            await client.post(
                path, content=b"x", headers={"content-type": "multipart/form-data"}
            ),  # no boundary
            await client.post(
                path, content=b"x", headers={"content-type": "multipart/mixed; boundary=b"}
            ),
        ]
        malformed = [
            await client.post(
                path,
                content=body,
                headers={"content-type": "multipart/form-data; boundary=b"},
            )
            for body in (
                b"not multipart at all",
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxx',
                b"",
            )
        ]
    for response in refused:
        assert response.status_code == 400
        assert response.headers["x-simulator"] == "keyplane"
        assert response.json() == expected
    for response in malformed:
        _assert_error(response, 400)
        assert response.json()["error"]["param"] is None
        assert "multipart/form-data" in response.json()["error"]["message"]


async def test_speech_routes_are_post_only() -> None:
    async with _client() as client:
        for path in SPEECH_PATHS:
            _assert_error(await client.get(path), 404)


async def test_speech_latency_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(replies, "_sleep", fake_sleep)
    async with _client(SimulatorConfig(latency_ms=80, tokens_per_second=10)) as client:
        ok = await _speech(client, audio=b"x" * 100_000, response_format="text")
        assert ok.status_code == 200
        assert delays == [0.08]  # once per request, whatever the duration
        refused = await _speech(client, "/v1/audio/translations", audio=None)
        assert refused.status_code == 400
        assert delays == [0.08, 0.08]


# --- text to speech ----------------------------------------------------------------------------

SAY = {"model": "tts-1", "voice": "alloy", "input": "Hello"}


def test_speech_audio_is_a_header_then_64_bytes_a_character() -> None:
    hello = speech_audio("Hello")
    assert SPEECH_HEADER == b"ID3\x04\x00\x00\x00\x00\x00\x00"
    assert hello.startswith(SPEECH_HEADER) and len(hello) == 10 + 5 * 64
    assert len(speech_audio("Grüße 👋")) == 10 + 7 * 64  # characters, not bytes
    assert speech_audio("Hello") == hello and speech_audio("Hellp") != hello
    assert speech_audio("Hello world").startswith(SPEECH_HEADER)
    assert {"tts-1", "tts-1-hd"} <= set(DEFAULT_MODELS)


async def test_speech_is_sent_in_chunks_as_it_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(replies, "_sleep", fake_sleep)
    app = create_app(SimulatorConfig(latency_ms=100, tokens_per_second=10))
    text = "0123456789" * 4
    sent = await _asgi_messages(
        app, "POST", "/v1/audio/speech", orjson.dumps({**SAY, "input": text})
    )
    assert sent[0]["status"] == 200
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"audio/mpeg" and headers[b"x-simulator"] == b"keyplane"
    assert b"content-length" not in headers  # chunked: sent as it is made
    bodies = [m["body"] for m in sent[1:]]
    assert [len(b) for b in bodies] == [10, 1024, 1024, 512, 0]  # 40 × 64 bytes after the header
    assert all(m["more_body"] for m in sent[1:-1]) and sent[-1]["more_body"] is False
    assert b"".join(bodies) == speech_audio(text)
    assert delays == [0.1, 0.1, 0.1, 0.1]  # the latency, then before each piece after the header


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("mp3", "audio/mpeg"), ("opus", "audio/opus"), ("aac", "audio/aac"), ("flac", "audio/flac"),
     ("wav", "audio/wav"), ("pcm", "audio/pcm")],
)  # fmt: skip
async def test_speech_formats_and_options(fmt: str, content_type: str) -> None:
    options = {"response_format": fmt, "speed": 0.25, "instructions": "Calm.", "voice": "verse"}
    async with _client() as client:
        response = await client.post(
            "/v1/audio/speech",
            json={**SAY, **options, "model": "tts-1-hd", "stream_format": "audio"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == speech_audio("Hello")


@pytest.mark.parametrize(
    ("changes", "status", "param", "code"),
    [
        ({"model": None}, 400, "model", "missing_required_parameter"),
        ({"model": 7}, 400, "model", "invalid_type"),
        ({"model": "gpt-4o"}, 400, "model", "invalid_value"),
        ({"model": "whisper-1"}, 400, "model", "invalid_value"),
        ({"model": "tts-9"}, 404, None, "model_not_found"),
        ({"input": None}, 400, "input", "missing_required_parameter"),
        ({"input": 3}, 400, "input", "invalid_type"),
        ({"input": ["Hello"]}, 400, "input", "invalid_type"),
        ({"input": ""}, 400, "input", "string_below_min_length"),
        ({"input": "x" * 4097}, 400, "input", "string_above_max_length"),
        ({"voice": None}, 400, "voice", "missing_required_parameter"),
        ({"voice": "nobody"}, 400, "voice", "invalid_value"),
        ({"voice": {"id": "voice_1234"}}, 400, "voice", "invalid_type"),
        ({"response_format": "ogg"}, 400, "response_format", "invalid_value"),
        ({"stream_format": "sse"}, 400, "stream_format", "unsupported_value"),
        ({"stream_format": "video"}, 400, "stream_format", "invalid_value"),
        ({"speed": 4.5}, 400, "speed", "invalid_value"),
        ({"speed": 0.2}, 400, "speed", "invalid_value"),
        ({"speed": "fast"}, 400, "speed", "invalid_value"),
        ({"speed": True}, 400, "speed", "invalid_value"),
        ({"instructions": 5}, 400, "instructions", "invalid_type"),
    ],
)
async def test_speech_is_validated_as_openai_does(
    changes: dict[str, Any], status: int, param: str | None, code: str
) -> None:
    body = {k: v for k, v in {**SAY, **changes}.items() if v is not None}
    async with _client() as client:
        response = await client.post("/v1/audio/speech", json=body)
    _assert_error(response, status, code)
    assert response.json()["error"]["param"] == param


async def test_speech_input_may_be_4096_characters() -> None:
    async with _client() as client:
        response = await client.post("/v1/audio/speech", json={**SAY, "input": "y" * 4096})
        not_json = await client.post("/v1/audio/speech", content=b"{nope")
    assert response.status_code == 200 and len(response.content) == 10 + 4096 * 64
    _assert_error(not_json, 400)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": MESSAGES}, 404, "model_not_found"),
        ("/v1/chat/completions", {"messages": MESSAGES}, 400, None),
        ("/v1/chat/completions", {"model": 3, "messages": MESSAGES}, 400, None),
        ("/v1/chat/completions", {"model": "gpt-4o"}, 400, None),
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": "hi"}, 400, None),
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": []}, 400, None),
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": ["hi"]}, 400, None),
        ("/v1/chat/completions", [1, 2], 400, None),
        ("/v1/embeddings", {"model": "sim-embed"}, 400, None),
        ("/v1/embeddings", {"model": "sim-embed", "input": [1, "a"]}, 400, None),
        ("/v1/embeddings", {"model": "sim-embed", "input": []}, 400, None),
        ("/v1/embeddings", {"model": "sim-embed", "input": "a", "dimensions": 0}, 400, None),
        ("/v1/embeddings", {"model": "sim-embed", "input": "a", "encoding_format": "x"}, 400, None),
        ("/v1/embeddings", {"model": "unknown", "input": "a"}, 404, "model_not_found"),
        ("/v1/completions", {"model": "gpt-4o"}, 400, None),
        ("/v1/nothing-here", {}, 404, None),
    ],
)
async def test_error_envelopes(path: str, body: Any, status: int, code: str | None) -> None:
    async with _client() as client:
        _assert_error(await client.post(path, json=body), status, code)


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 0},
        {"max_tokens": -3},
        {"max_tokens": "5"},
        {"max_tokens": 2.5},
        {"max_tokens": True},
        {"max_completion_tokens": 0},
        {"stream_options": {"include_usage": True}},  # without stream
    ],
)
async def test_invalid_chat_parameters(params: dict[str, Any]) -> None:
    async with _client() as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES, **params}
        )
    _assert_error(response, 400)
    assert response.json()["error"]["param"] in params


async def test_malformed_json_and_unknown_routes() -> None:
    async with _client() as client:
        bad = await client.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        _assert_error(bad, 400)
        _assert_error(await client.get("/v1/chat/completions"), 404)
        _assert_error(await client.get("/"), 404)
        _assert_error(await client.delete("/v1/models/gpt-4o"), 404)


# --- the official SDK against a real server ----------------------------------------------------


@contextmanager
def _running_server(config: SimulatorConfig) -> Iterator[str]:
    server = ServerThread(create_app(config)).start()
    try:
        yield server.url + "/v1"
    finally:
        server.stop()


def test_official_openai_sdk_against_real_server() -> None:
    openai = pytest.importorskip("openai")
    config = SimulatorConfig(completion_tokens=10)
    with (
        _running_server(config) as base_url,
        openai.OpenAI(
            base_url=base_url, api_key="sk-sim", max_retries=0, timeout=kphttp.TIMEOUT
        ) as client,
    ):
        chat = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert chat.choices[0].message.content == completion_text(10)
        assert chat.usage is not None
        assert chat.usage.prompt_tokens == prompt_tokens(MESSAGES)
        assert chat.usage.completion_tokens == 10

        raw = client.chat.completions.with_raw_response.create(model="sim-chat", messages=MESSAGES)
        assert raw.headers["x-simulator"] == "keyplane"

        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=6,
        )
        content, usage, finish = "", None, None
        for chunk in stream:
            if chunk.choices:
                content += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        assert content == completion_text(6)
        assert finish == "length"
        assert usage is not None
        assert usage.completion_tokens == 6
        assert usage.total_tokens == prompt_tokens(MESSAGES) + 6

        # The SDK asks for base64 by default and decodes it to floats itself.
        embedded = client.embeddings.create(model="text-embedding-3-small", input=["a", "bb"])
        as_floats = client.embeddings.create(
            model="text-embedding-3-small", input=["a", "bb"], encoding_format="float"
        )
        assert [d.embedding for d in embedded.data] == [d.embedding for d in as_floats.data]
        assert len(embedded.data[0].embedding) == 8
        assert embedded.usage.prompt_tokens == 2

        models = client.models.list()
        assert {m.id for m in models} == set(DEFAULT_MODELS)


def test_official_openai_sdk_responses_and_moderations_against_real_server() -> None:
    openai = pytest.importorskip("openai")
    config = SimulatorConfig(completion_tokens=10)
    with (
        _running_server(config) as base_url,
        openai.OpenAI(
            base_url=base_url, api_key="sk-sim", max_retries=0, timeout=kphttp.TIMEOUT
        ) as client,
    ):
        created = client.responses.create(
            model="gpt-4o-mini", input=RESPONSE_ITEMS, instructions=INSTRUCTIONS
        )
        assert created.output_text == completion_text(10)
        assert created.status == "completed"
        assert created.usage is not None
        assert created.usage.input_tokens == RESPONSE_ITEMS_TOKENS
        assert created.usage.output_tokens == 10
        assert created.usage.total_tokens == RESPONSE_ITEMS_TOKENS + 10

        stream = client.responses.create(
            model="gpt-4o-mini",
            input="hello",
            previous_response_id=created.id,
            max_output_tokens=3,
            stream=True,
        )
        events = list(stream)
        assert [e.sequence_number for e in events] == list(range(len(events)))
        deltas = [
            e.delta for e in events if isinstance(e, openai.types.responses.ResponseTextDeltaEvent)
        ]
        assert "".join(deltas) == completion_text(3)
        last = events[-1]
        assert isinstance(last, openai.types.responses.ResponseIncompleteEvent)
        assert last.response.usage is not None
        assert last.response.usage.input_tokens == (3 + 2 + 3) + RESPONSE_ITEMS_TOKENS + 10
        assert last.response.usage.output_tokens == 3

        streamed = client.responses.create(model="sim-chat", input="x", stream=True)
        done = list(streamed)[-1]
        assert isinstance(done, openai.types.responses.ResponseCompletedEvent)
        assert done.response.output_text == completion_text(10)
        assert done.response.usage is not None
        assert done.response.usage.total_tokens == (3 + 1 + 3) + 10

        retrieved = client.responses.retrieve(created.id)
        assert retrieved.id == created.id
        assert retrieved.output_text == completion_text(10)
        items = client.responses.input_items.list(created.id)
        assert [item.type for item in items.data] == [
            "message",
            "message",
            "message",
            "function_call_output",
        ]
        assert items.data[0].content[0].text == "Be brief."

        client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(created.id)

        moderation = client.moderations.create(
            model="omni-moderation-latest", input=["fine", "not fine [flag]"]
        )
        assert moderation.model == "omni-moderation-latest"
        assert [r.flagged for r in moderation.results] == [False, True]
        assert moderation.results[1].categories.violence is True
        assert moderation.results[1].category_scores.violence == 0.99
        assert moderation.results[0].categories.harassment_threatening is False


def test_official_openai_sdk_images_against_real_server() -> None:
    openai = pytest.importorskip("openai")
    with (
        _running_server(SimulatorConfig()) as base_url,
        openai.OpenAI(
            base_url=base_url, api_key="sk-sim", max_retries=0, timeout=kphttp.TIMEOUT
        ) as client,
    ):
        drawn = client.images.generate(
            model="dall-e-3",
            prompt="x",
            size="1792x1024",
            quality="hd",
            response_format="b64_json",
        )
        assert isinstance(drawn.created, int)
        assert drawn.usage is None
        assert drawn.data is not None
        [image] = drawn.data
        assert image.b64_json is not None
        assert base64.b64decode(image.b64_json).startswith(b"\x89PNG")
        _assert_png_1x1(base64.b64decode(image.b64_json))
        assert image.revised_prompt == "x"
        assert image.url is None

        several = client.images.generate(model="dall-e-2", prompt="three foxes", n=3)
        assert several.data is not None
        urls = [image.url for image in several.data]
        assert len(set(urls)) == 3
        assert all(url is not None and IMAGE_URL.fullmatch(url) for url in urls)
        assert all(image.revised_prompt is None for image in several.data)

        with pytest.raises(openai.BadRequestError) as refused:
            client.images.generate(model="gpt-4o-mini", prompt="x")
        assert refused.value.code == "invalid_value"
        assert refused.value.param == "model"


def test_official_openai_sdk_audio_against_real_server() -> None:
    openai = pytest.importorskip("openai")
    with (
        _running_server(SimulatorConfig()) as base_url,
        openai.OpenAI(
            base_url=base_url, api_key="sk-sim", max_retries=0, timeout=kphttp.TIMEOUT
        ) as client,
    ):
        audio = ("a.mp3", b"x" * 40_000)
        heard = client.audio.transcriptions.create(model="whisper-1", file=audio)
        assert heard.text == transcript_text(3)
        assert heard.usage is not None
        assert heard.usage.type == "duration"
        assert heard.usage.seconds == 3

        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json", language="en"
        )
        assert verbose.duration == 3
        assert verbose.text == transcript_text(3)
        assert verbose.segments is not None
        assert verbose.segments[0].end == 3.0

        text = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="text"
        )
        assert text == transcript_text(3)

        srt = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="srt"
        )
        assert srt == f"1\n00:00:00,000 --> 00:00:03,000\n{transcript_text(3)}\n\n"

        # The SDK marks translations deprecated (a DeprecationWarning); the endpoint still answers.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            translated = client.audio.translations.create(model="whisper-1", file=("b.wav", b"y"))
            translated_verbose = client.audio.translations.create(
                model="whisper-1", file=("b.wav", b"y" * 16_001), response_format="verbose_json"
            )
        assert translated.text == transcript_text(1)
        assert translated_verbose.duration == 2
        assert translated_verbose.text == transcript_text(2)

        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.transcriptions.create(model="gpt-4o-mini", file=audio)
        assert refused.value.code == "invalid_value"
        assert refused.value.param == "model"


def test_official_openai_sdk_speech_against_real_server() -> None:
    openai = pytest.importorskip("openai")
    with (
        _running_server(SimulatorConfig()) as base_url,
        openai.OpenAI(
            base_url=base_url, api_key="sk-sim", max_retries=0, timeout=kphttp.TIMEOUT
        ) as client,
    ):
        spoken = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
        assert spoken.content == speech_audio("Hello")
        assert spoken.response.headers["content-type"] == "audio/mpeg"

        streamed = client.audio.speech.with_streaming_response
        text = "x" * 100  # the header and 7 pieces
        with streamed.create(model="tts-1-hd", voice="nova", input=text) as response:
            assert b"".join(response.iter_bytes()) == speech_audio(text)

        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
        assert refused.value.code == "string_above_max_length"
        assert refused.value.param == "input"
