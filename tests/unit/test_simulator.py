"""Tests for the built-in OpenAI-compatible upstream simulator."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import orjson
import pytest

from keyplane import simulator
from keyplane.simulator import (
    DEFAULT_MODELS,
    TOKEN_CHARS,
    SimulatorConfig,
    completion_text,
    create_app,
    prompt_tokens,
    text_tokens,
)
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


async def test_stream_events_are_separate_asgi_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(simulator, "_sleep", fake_sleep)
    app = create_app(SimulatorConfig(latency_ms=250, tokens_per_second=50, completion_tokens=3))
    body = orjson.dumps(
        {
            "model": "sim-chat",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    await app(scope, receive, send)

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

    monkeypatch.setattr(simulator, "_sleep", fake_sleep)
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
        openai.OpenAI(base_url=base_url, api_key="sk-sim", max_retries=0, timeout=10) as client,
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
