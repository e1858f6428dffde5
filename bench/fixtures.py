"""The fixed bodies of the benchmark: what wrk sends and what the upstream stub answers.

Everything is generated deterministically here (no files to keep in sync), shaped like OpenAI's
answers so keyplane does its real work on them: parse the request, forward it, read the ``usage``
block (or the usage chunk of a stream), price it and write a usage record.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass

CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"
EMBEDDING_DIMENSIONS = 1536


@dataclass(frozen=True)
class Usage:
    """What the stub reports, so the accounting check knows what every record must say."""

    input_tokens: int
    cached_input_tokens: int
    output_tokens: int


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --- requests (what wrk sends) -------------------------------------------------------------------

CHAT_REQUEST = _dumps(
    {
        "model": CHAT_MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello to the benchmark in five words."},
        ],
        "max_tokens": 32,
    }
)

CHAT_STREAM_REQUEST = _dumps({**json.loads(CHAT_REQUEST), "stream": True})


def _embedding_input(size: int) -> str:
    sentence = (
        "keyplane meters every request it forwards, prices it in integer micro-dollars and "
        "writes one usage record per request. "
    )
    return (sentence * (size // len(sentence) + 1))[:size]


# ~17 KB on the wire, as the issue asks (one long document to embed). The OpenAI SDK asks for
# base64 by default, so the stub answers in base64 too.
EMBEDDINGS_REQUEST = _dumps(
    {"model": EMBEDDING_MODEL, "input": _embedding_input(16_900), "encoding_format": "base64"}
)

# --- upstream answers (what the nginx stub returns) -----------------------------------------------

CHAT_USAGE = Usage(input_tokens=27, cached_input_tokens=0, output_tokens=10)

CHAT_RESPONSE = _dumps(
    {
        "id": "chatcmpl-BenchBenchBenchBenchBenchBench",
        "object": "chat.completion",
        "created": 1764100000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello there, dear benchmark friend!",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": CHAT_USAGE.input_tokens,
            "completion_tokens": CHAT_USAGE.output_tokens,
            "total_tokens": CHAT_USAGE.input_tokens + CHAT_USAGE.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
    }
)


def _chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-BenchBenchBenchBenchBenchBench",
        "object": "chat.completion.chunk",
        "created": 1764100000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def _sse(events: list[dict[str, object]]) -> bytes:
    return b"".join(b"data: " + _dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


_WORDS = ["Hello", " there,", " dear", " benchmark", " friend!"]
CHAT_STREAM_RESPONSE = _sse(
    [
        _chunk({"role": "assistant", "content": "", "refusal": None}),
        *(_chunk({"content": w}) for w in _WORDS),
        _chunk({}, finish="stop"),
        {
            **_chunk({}),
            "choices": [],
            "usage": {
                "prompt_tokens": CHAT_USAGE.input_tokens,
                "completion_tokens": CHAT_USAGE.output_tokens,
                "total_tokens": CHAT_USAGE.input_tokens + CHAT_USAGE.output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
        },
    ]
)

EMBEDDINGS_USAGE = Usage(input_tokens=3380, cached_input_tokens=0, output_tokens=0)


def _embedding_vector() -> str:
    values = [math.sin(i * 0.37) * 0.05 for i in range(EMBEDDING_DIMENSIONS)]
    return base64.b64encode(struct.pack(f"<{EMBEDDING_DIMENSIONS}f", *values)).decode()


EMBEDDINGS_RESPONSE = _dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": _embedding_vector()}],
        "model": EMBEDDING_MODEL,
        "usage": {
            "prompt_tokens": EMBEDDINGS_USAGE.input_tokens,
            "total_tokens": EMBEDDINGS_USAGE.input_tokens,
        },
    }
)

MODELS_RESPONSE = _dumps(
    {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
            for m in (CHAT_MODEL, EMBEDDING_MODEL)
        ],
    }
)
