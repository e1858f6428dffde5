"""Chat completions (``POST /v1/chat/completions``) and legacy text completions
(``POST /v1/completions``), answered whole or streamed; their tokens count as ``tokens`` says."""

from __future__ import annotations

import time
import uuid

from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.params import (
    JSON,
    RequestError,
    check_items,
    invalid_type,
    known_model,
    positive_int,
    text_inputs,
)
from keyplane.simulator.replies import Reply, Stream
from keyplane.simulator.tokens import completion_text, pieces, prompt_tokens

SYSTEM_FINGERPRINT = "fp_keyplane_sim"


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
        raise RequestError(400, "Missing required parameter: 'messages'.", "messages", "missing")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        message = "Invalid 'messages': empty array. Expected an array with minimum length 1."
        raise RequestError(400, message, "messages", "empty_array")
    check_items(messages, "messages")
    return prompt_tokens(messages)


def completion(body: JSON, config: SimulatorConfig, *, chat: bool) -> Reply:
    """Chat (``chat=True``) or legacy text completion, streamed or not."""
    model = known_model(body, config)
    prompt = (
        _chat_prompt(body) if chat else sum(t for _, t in text_inputs(body.get("prompt"), "prompt"))
    )
    limits = [positive_int(body, "max_tokens")]
    if chat:
        limits.append(positive_int(body, "max_completion_tokens"))
    limit = min((x for x in limits if x is not None), default=None)
    budget = max(config.completion_tokens, 0)
    n = budget if limit is None else min(limit, budget)
    finish = "length" if limit is not None and limit < budget else "stop"
    usage = _usage(prompt, n)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise RequestError(400, message, "stream_options", "invalid_value")
    if options is not None and not isinstance(options, dict):
        raise invalid_type("stream_options", "an object", options)
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
    tokens = [chunk({"content": piece}, None) for piece in pieces(n)]
    tail = [chunk({}, finish)]
    if include_usage:
        tail.append({**base, "choices": [], "usage": usage})
    return Stream(head, tokens, tail)
