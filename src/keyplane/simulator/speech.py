"""Text to speech (``POST /v1/audio/speech``, ``tts-1`` and ``tts-1-hd``), which says nothing.

The audio of an ``input`` of ``n`` characters is ``speech_audio(input)``, ``SPEECH_HEADER`` (an
empty ID3v2.4 tag, as MP3 files begin) then ``SPEECH_BYTES_PER_CHAR`` (64) bytes a character (a
SHAKE-256 digest of the input's UTF-8), whatever the ``voice``, ``speed`` or format. It is sent
chunked, the header first and then pieces of at most ``SPEECH_CHUNK_BYTES`` (1,024) bytes, each
one a message of its own, as ``audio/mpeg`` (or the ``response_format``'s type: ``opus``,
``aac``, ``flac``, ``wav``, ``pcm``), with no usage, as OpenAI's. ``model``, ``input`` (a string
of 1 to ``MAX_SPEECH_CHARS``, 4096, characters) and ``voice`` (one of ``SPEECH_VOICES``) are
required; ``speed`` is a number from 0.25 to 4; ``instructions`` a string (ignored);
``stream_format`` ``"audio"`` (``"sse"`` is refused, as for these models at OpenAI). Errors are
OpenAI-style 400s.
"""

from __future__ import annotations

import hashlib

from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.params import (
    JSON,
    RequestError,
    choice,
    invalid_type,
    known_model,
    optional_str,
)
from keyplane.simulator.replies import Audio, Reply

# fmt: off
SPEECH_VOICES: tuple[str, ...] = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
)
# Text to speech's formats and the content type of each.
SPEECH_FORMATS: dict[str, bytes] = {
    "mp3": b"audio/mpeg", "opus": b"audio/opus", "aac": b"audio/aac", "flac": b"audio/flac",
    "wav": b"audio/wav", "pcm": b"audio/pcm",
}
# fmt: on
SPEECH_MODELS = frozenset({"tts-1", "tts-1-hd"})
MAX_SPEECH_CHARS = 4096
SPEECH_HEADER = b"ID3\x04\x00\x00\x00\x00\x00\x00"  # an empty ID3v2.4 tag
SPEECH_BYTES_PER_CHAR = 64
SPEECH_CHUNK_BYTES = 1024


def speech_audio(text: str) -> bytes:
    """The audio of ``text``: ``SPEECH_HEADER``, then ``SPEECH_BYTES_PER_CHAR`` bytes a character."""
    body = hashlib.shake_256(text.encode()).digest(SPEECH_BYTES_PER_CHAR * len(text))
    return SPEECH_HEADER + body


def text_to_speech(body: JSON, config: SimulatorConfig) -> Reply:
    """POST /v1/audio/speech: ``speech_audio(input)``, chunked."""
    if body.get("model") is None:
        message = "Missing required parameter: 'model'."
        raise RequestError(400, message, "model", "missing_required_parameter")
    model = known_model(body, config)
    if model not in SPEECH_MODELS:
        raise RequestError(400, f"Invalid model '{model}' for speech.", "model", "invalid_value")
    text = body.get("input")
    if text is None:
        message = "Missing required parameter: 'input'."
        raise RequestError(400, message, "input", "missing_required_parameter")
    if not isinstance(text, str):
        raise invalid_type("input", "a string", text)
    if not text:
        message = "Invalid 'input': string too short. Expected a string with minimum length 1."
        raise RequestError(400, message, "input", "string_below_min_length")
    if len(text) > MAX_SPEECH_CHARS:
        message = (
            f"Invalid 'input': string too long. Expected a string with maximum length "
            f"{MAX_SPEECH_CHARS}, but got a string with length {len(text)} instead."
        )
        raise RequestError(400, message, "input", "string_above_max_length")
    choice(body, "voice", SPEECH_VOICES, None)
    fmt = choice(body, "response_format", tuple(SPEECH_FORMATS), "mp3")
    if choice(body, "stream_format", ("audio", "sse"), "audio") == "sse":
        message = f"Unsupported value: 'stream_format' does not support 'sse' with {model}."
        raise RequestError(400, message, "stream_format", "unsupported_value")
    speed = body.get("speed")
    if speed is not None and (
        isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4
    ):
        message = "Invalid 'speed': expected a number from 0.25 to 4.0."
        raise RequestError(400, message, "speed", "invalid_value")
    optional_str(body, "instructions")
    audio = speech_audio(text)
    rest = audio[len(SPEECH_HEADER) :]
    pieces = [rest[i : i + SPEECH_CHUNK_BYTES] for i in range(0, len(rest), SPEECH_CHUNK_BYTES)]
    return Audio(SPEECH_FORMATS[fmt], [SPEECH_HEADER, *pieces])
