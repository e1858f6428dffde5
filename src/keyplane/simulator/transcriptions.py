"""Speech to text (``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``), which
hears no audio.

The body is ``multipart/form-data``; a ``file`` of ``size`` bytes lasts
``audio_seconds(size) = max(1, ceil(size / AUDIO_BYTES_PER_SECOND))`` seconds (16000 bytes a
second, as 128 kbit/s), and its transcript is ``transcript_text(seconds)``: ``TRANSCRIPT_SENTENCE``
(``"Hello from the keyplane simulator."``) once per second, joined by spaces. With ``whisper-1``,
``json`` (the default) answers ``{"text", "usage": {"type": "duration", "seconds"}}``;
``verbose_json`` adds the task, ``language`` ``"english"``, the ``duration`` and one segment
spanning it; ``text``, ``srt`` and ``vtt`` answer the transcript as ``text/plain`` (a subtitle
document of one cue for the last two), without usage, as OpenAI. ``language``, ``prompt`` and
``temperature`` are ignored.

``gpt-4o-transcribe`` and ``gpt-4o-mini-transcribe`` transcribe only (translations are
whisper-1's, as at OpenAI) and answer ``json`` or ``text`` (the others are refused with OpenAI's
message); their ``json`` answer's ``usage`` is ``{"type": "tokens"}``: ``audio_tokens =
AUDIO_TOKENS_PER_SECOND × audio_seconds(size)`` (10 a second, the simulator's own figure: OpenAI
publishes none), ``text_tokens = text_tokens(prompt)``, ``output_tokens = text_tokens(transcript)``.
The transcript stops at ``TRANSCRIBE_MAX_OUTPUT`` (2,000) tokens; a file whose tokens would pass
``TRANSCRIBE_CONTEXT`` (16,000) is refused with 400, as too long for the model.

With ``stream`` (``true`` or ``1``) these two answer server-sent events, in either format, as
OpenAI's do: one ``{"type": "transcript.text.delta", "delta"}`` per output token (the transcript
in pieces of ``TOKEN_CHARS`` characters), then ``{"type": "transcript.text.done", "text", "usage"}``
with the whole transcript and the usage its ``json`` answer carries, then ``data: [DONE]``.
whisper-1 ignores ``stream`` and answers whole, as OpenAI's does.
"""

from __future__ import annotations

from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.forms import Form, read_form
from keyplane.simulator.params import RequestError, known_model
from keyplane.simulator.replies import Reply, Stream, Text
from keyplane.simulator.tokens import TOKEN_CHARS, text_tokens

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


def audio_seconds(size: int) -> int:
    """Seconds of audio in a file of ``size`` bytes: ``max(1, ceil(size / 16000))``."""
    return max(1, -(-size // AUDIO_BYTES_PER_SECOND))


def transcript_text(seconds: int) -> str:
    """The transcript of ``seconds`` of audio: ``TRANSCRIPT_SENTENCE`` once per second."""
    return " ".join([TRANSCRIPT_SENTENCE] * seconds)


def _timestamp(seconds: int, separator: str) -> str:
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{second:02d}{separator}000"


def _subtitles(text: str, seconds: int, fmt: str) -> str:
    """An SRT or WebVTT document of one cue: ``text`` from 0 to ``seconds``."""
    if fmt == "srt":
        return f"1\n{_timestamp(0, ',')} --> {_timestamp(seconds, ',')}\n{text}\n\n"
    return f"WEBVTT\n\n{_timestamp(0, '.')} --> {_timestamp(seconds, '.')}\n{text}\n\n"


def speech_to_text(raw: bytes, content_type: str, config: SimulatorConfig, task: str) -> Reply:
    """POST /v1/audio/transcriptions (``task="transcribe"``) or /v1/audio/translations
    (``"translate"``): ``transcript_text`` of the ``file``'s ``audio_seconds``."""
    form = read_form(raw, content_type)
    audio = form.files.get("file")
    if audio is None:
        message = "Missing required parameter: 'file'."
        raise RequestError(400, message, "file", "missing_required_parameter")
    if not form.fields.get("model"):
        message = "Missing required parameter: 'model'."
        raise RequestError(400, message, "model", "missing_required_parameter")
    model = known_model(form.fields, config)
    if model not in (TRANSCRIPTION_MODELS if task == "transcribe" else TRANSLATION_MODELS):
        purpose = "transcription" if task == "transcribe" else "translation"
        message = f"Invalid model '{model}' for {purpose}."
        raise RequestError(400, message, "model", "invalid_value")
    fmt = form.fields.get("response_format", "json")
    if model != "whisper-1":
        return _token_transcription(form, model, fmt, len(audio))
    if fmt not in TRANSCRIPTION_FORMATS:
        supported = ", ".join(f"'{f}'" for f in TRANSCRIPTION_FORMATS)
        message = f"Invalid 'response_format': expected one of {supported}, but got {fmt!r}."
        raise RequestError(400, message, "response_format", "invalid_value")
    seconds = audio_seconds(len(audio))
    text = transcript_text(seconds)
    if fmt == "text":
        return Text(text)
    if fmt in ("srt", "vtt"):
        return Text(_subtitles(text, seconds, fmt))
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


def _token_transcription(form: Form, model: str, fmt: str, size: int) -> Reply:
    """gpt-4o-transcribe's (or its mini's) answer: the transcript, and in json its tokens."""
    if fmt not in TOKEN_TRANSCRIPTION_FORMATS:
        message = (
            f"response_format '{fmt}' is not compatible with model '{model}'. Use 'json' or "
            "'text' instead."
        )
        raise RequestError(400, message, "response_format", "unsupported_value")
    audio = AUDIO_TOKENS_PER_SECOND * audio_seconds(size)
    prompt = text_tokens(form.fields.get("prompt", ""))
    if audio + prompt > TRANSCRIBE_CONTEXT:
        message = f"Audio file is too long for {model}: {audio + prompt} tokens, the most is 16000."
        raise RequestError(400, message, "file", "invalid_value")
    text = transcript_text(audio_seconds(size))[: TRANSCRIBE_MAX_OUTPUT * TOKEN_CHARS]
    output = text_tokens(text)
    usage = {
        "type": "tokens", "input_tokens": audio + prompt, "output_tokens": output,
        "total_tokens": audio + prompt + output,
        "input_token_details": {"text_tokens": prompt, "audio_tokens": audio},
    }  # fmt: skip
    if form.fields.get("stream", "").strip().lower() in ("true", "1"):
        deltas = [
            {"type": "transcript.text.delta", "delta": text[i : i + TOKEN_CHARS]}
            for i in range(0, len(text), TOKEN_CHARS)
        ]
        return Stream([], deltas, [{"type": "transcript.text.done", "text": text, "usage": usage}])
    if fmt == "text":
        return Text(text)
    return 200, {"text": text, "usage": usage}
