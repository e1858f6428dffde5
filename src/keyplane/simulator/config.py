"""``SimulatorConfig``: how long the simulator waits, how much it writes, which models it serves."""

from __future__ import annotations

from dataclasses import dataclass

# fmt: off
DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-3.5-turbo",
    "gpt-3.5-turbo-instruct", "davinci-002", "babbage-002",  # what OpenAI serves on /v1/completions
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
    "omni-moderation-latest", "text-moderation-latest", "dall-e-2", "dall-e-3", "gpt-image-1",
    "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "tts-1", "tts-1-hd", "sim-chat",
    "sim-embed", "gpt-4o-audio-preview", "gpt-4o-mini-audio-preview", "gpt-audio", "sim-audio",
)
# fmt: on


@dataclass(frozen=True)
class SimulatorConfig:
    latency_ms: float = 0.0  # delay before the first byte of every answer to a POST
    tokens_per_second: float = 0.0  # 0 = no delay between streamed chunks; else 1/tps
    completion_tokens: int = 16  # output tokens unless max_tokens is lower
    models: tuple[str, ...] = DEFAULT_MODELS
