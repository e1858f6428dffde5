"""Chat completions (``POST /v1/chat/completions``) and legacy text completions
(``POST /v1/completions``), answered whole or streamed; their tokens count as ``tokens`` says.
A chat may send audio (``input_audio`` parts) and ask for it (``modalities`` with "audio"), as
OpenAI's audio models take it, on any model the simulator serves: the answer's audio is silence,
``SILENCE_BYTES_PER_TOKEN`` bytes a token (not to scale), with its transcript."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any

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
from keyplane.simulator.tokens import (
    audio_tokens,
    completion_text,
    pieces,
    prompt_tokens,
    spoken_tokens,
)

SYSTEM_FINGERPRINT = "fp_keyplane_sim"
SILENCE_BYTES_PER_TOKEN = 8


def _usage(prompt: int, completion: int, heard: int = 0, said: int | None = None) -> JSON:
    """The usage of an answer; with the audio tokens among them when it heard or spoke audio
    (``said`` None: it was not asked to speak)."""
    prompt_details: JSON = {"cached_tokens": 0}
    completion_details: JSON = {"reasoning_tokens": 0}
    if heard or said is not None:
        prompt_details["audio_tokens"] = heard
        completion_details["audio_tokens"] = said or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": completion_details,
    }


def _heard(messages: list[Any]) -> int:
    """Audio tokens of a chat's ``input_audio`` parts (``tokens.audio_tokens`` each); a 400 for
    one whose data is not base64."""
    total = 0
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "input_audio":
                continue
            param = f"messages[{i}].content[{j}].input_audio.data"
            audio = part.get("input_audio")
            data = audio.get("data") if isinstance(audio, dict) else None
            if not isinstance(data, str):
                raise invalid_type(param, "a string", data)
            try:
                decoded = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                message = f"Invalid '{param}': the audio data must be base64-encoded."
                raise RequestError(400, message, param, "invalid_value") from None
            total += audio_tokens(len(decoded))
    return total


def _speaks(body: JSON) -> bool:
    """Whether a chat asks for audio: ``modalities`` naming "audio", which needs ``audio`` (its
    voice and format)."""
    modalities = body.get("modalities")
    if modalities is None:
        return False
    if not isinstance(modalities, list) or not all(m in ("text", "audio") for m in modalities):
        message = "Invalid 'modalities': expected an array of 'text' and 'audio'."
        raise RequestError(400, message, "modalities", "invalid_value")
    if "audio" not in modalities:
        return False
    if not isinstance(body.get("audio"), dict):
        message = "The 'audio' parameter (voice and format) is required for audio output."
        raise RequestError(400, message, "audio", "missing_required_parameter")
    return True


def _spoken(text: str, said: int) -> JSON:
    """A message's ``audio``: its id, its data (silence for ``said`` tokens), when it expires
    (an hour on), its ``text`` transcript."""
    return {
        "id": "audio_sim" + uuid.uuid4().hex[:24],
        "data": base64.b64encode(bytes(said * SILENCE_BYTES_PER_TOKEN)).decode(),
        "expires_at": int(time.time()) + 3600,
        "transcript": text,
    }


def _spoken_deltas(spoken: JSON, transcript: list[str]) -> list[JSON]:
    """``spoken`` streamed as OpenAI streams audio: its id with the first piece of transcript,
    the other pieces, its data, and last when it expires."""
    deltas = [{"audio": {"transcript": piece}} for piece in transcript] or [{"audio": {}}]
    deltas[0]["audio"]["id"] = spoken["id"]
    deltas.append({"audio": {"data": spoken["data"]}})
    deltas.append({"audio": {"expires_at": spoken["expires_at"]}})
    return deltas


def _chat_prompt(body: JSON) -> tuple[int, int]:
    """(prompt tokens, of which audio) of a chat."""
    messages = body.get("messages")
    if messages is None:
        raise RequestError(400, "Missing required parameter: 'messages'.", "messages", "missing")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        message = "Invalid 'messages': empty array. Expected an array with minimum length 1."
        raise RequestError(400, message, "messages", "empty_array")
    check_items(messages, "messages")
    heard = _heard(messages)
    return prompt_tokens(messages) + heard, heard


def completion(body: JSON, config: SimulatorConfig, *, chat: bool) -> Reply:
    """Chat (``chat=True``) or legacy text completion, streamed or not."""
    model = known_model(body, config)
    heard = 0
    if chat:
        prompt, heard = _chat_prompt(body)
    else:
        prompt = sum(t for _, t in text_inputs(body.get("prompt"), "prompt"))
    speaks = chat and _speaks(body)
    limits = [positive_int(body, "max_tokens")]
    if chat:
        limits.append(positive_int(body, "max_completion_tokens"))
    limit = min((x for x in limits if x is not None), default=None)
    budget = max(config.completion_tokens, 0)
    n = budget if limit is None else min(limit, budget)
    finish = "length" if limit is not None and limit < budget else "stop"
    said = spoken_tokens(n) if speaks else None  # (transcript, audio) tokens
    usage = _usage(prompt, n, heard, said[1] if said is not None else None)
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
        if said is not None:
            spoken = _spoken(completion_text(said[0]), said[1])
            choice["message"] = {"role": "assistant", "content": None, "refusal": None,
                                 "audio": spoken}  # fmt: skip
        elif chat:
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
    if said is not None:
        head = [chunk({"role": "assistant", "content": None}, None)]
        spoken = _spoken(completion_text(said[0]), said[1])
        tokens = [chunk(delta, None) for delta in _spoken_deltas(spoken, pieces(said[0]))]
    else:
        tokens = [chunk({"content": piece}, None) for piece in pieces(n)]
    tail = [chunk({}, finish)]
    if include_usage:
        tail.append({**base, "choices": [], "usage": usage})
    return Stream(head, tokens, tail)
