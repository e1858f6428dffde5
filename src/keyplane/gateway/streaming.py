"""Server-sent events passed through chunk by chunk, with the accounting a bill needs.

keyplane asks the upstream for ``stream_options.include_usage`` so the last event carries exact
token counts. Until then it counts the generated text itself, so a stream cut short by the client
or the upstream is still billed for what was produced (estimated at four characters a token).

Text to speech's answer, the audio itself, goes through the same pump unread (``AudioRelay``),
and a streamed transcription's events through it with their own accounting
(``TranscriptAccounting``).
"""

from __future__ import annotations

from typing import Any, TypeGuard

import orjson

from keyplane.usage.tokens import estimate_chars, generated_chars

_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
_PENDING_MAX = 64 * 1024  # bytes of chunks kept unparsed per stream before they are counted


Tokens = tuple[int, int, int]  # input (the cached ones included), cached input, output tokens
Audio = tuple[int, int]  # of those, the input and the output tokens that are audio
NO_AUDIO: Audio = (0, 0)


def parse_usage(obj: Any) -> Tokens | None:
    """Returns (input, cached input, output) tokens from an OpenAI ``usage`` object, if valid."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    # null means "not reported" (0); anything else that is not a count makes the usage unusable,
    # so the caller falls back to its own estimate instead of billing an exact zero.
    cached = 0 if cached is None else cached
    out = 0 if out is None else out
    if _count(inp) and _count(cached) and _count(out):
        return inp, cached, out
    return None


def parse_audio(obj: dict[str, Any], used: Tokens) -> Audio:
    """(input, output) audio tokens among ``used``, the counts ``parse_usage(obj)`` read: the
    ``audio_tokens`` of its ``prompt_tokens_details`` and ``completion_tokens_details`` (chat
    completions of an audio model), or of ``input_tokens_details`` and ``output_tokens_details``.
    Shown in usage, not billed apart: one missing, null or not a count is 0, and one larger than
    the tokens it is part of is cut to them."""
    usage = obj["usage"]
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    heard = details.get("audio_tokens") if type(details) is dict else None
    details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    said = details.get("audio_tokens") if type(details) is dict else None
    if heard is None and said is None:  # (the usual: a text model)
        return NO_AUDIO
    return (
        min(heard, used[0]) if _count(heard) else 0,
        min(said, used[2]) if _count(said) else 0,
    )


def reported_usage(obj: Any) -> tuple[Tokens, Audio] | None:
    """``parse_usage(obj)`` and the audio tokens among them (``parse_audio``)."""
    used = parse_usage(obj)
    return None if used is None else (used, parse_audio(obj, used))


def answer_usage(content: bytes) -> tuple[Tokens, Audio] | None:
    """``reported_usage`` of a whole JSON answer, parsing only its end when it can: from the last
    ``"usage"`` key on, wrapped in a brace, is a valid JSON object only when that key is one of the
    answer's own (top-level) keys (one nested deeper leaves its containers' closing brackets over),
    and then holds the same usage as the whole answer, as the last of that name. OpenAI and
    the servers that copy it put ``usage`` after ``choices``, so most of the bytes are not parsed
    (a full parse was ~5% of a request's instructions, bench/RESULTS.md). No such key, a nested
    one, or one after a backslash: the whole answer is parsed."""
    at = content.rfind(b'"usage"')
    if at > 0 and content[at - 1] != 0x5C:  # (0x5C: a backslash, as in a string's \"usage")
        try:
            tail = orjson.loads(b"{" + content[at:])
        except orjson.JSONDecodeError:
            pass
        else:
            return reported_usage(tail)
    try:
        return reported_usage(orjson.loads(content))
    except orjson.JSONDecodeError:
        return None


def estimated_output(content: bytes) -> int:
    """Output tokens of a whole answer that reported no usable ``usage``, estimated from the text
    it carries (the whole body, if it is not JSON: the upstream produced it)."""
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        return estimate_chars(len(content))
    return estimate_chars(generated_chars(answer))


def usage_object(payload: bytes) -> bool:
    """Whether a data line may carry token counts: a ``"usage"`` key whose value is an object,
    i.e. ``"usage"``, optional whitespace, a colon, optional whitespace, ``{`` anywhere in it,
    unless the line ends with ``,"usage":null}``. A false match only costs a parse; a key spelt
    with escapes would be missed, and the stream billed on the estimate.

    OpenAI sends ``"usage":null`` last in every chunk before the last once include_usage is set.
    A JSON object ending that way has a null usage of its own: whatever comes before, that key is
    the object's own (top-level), and the last of its name, the one a parse keeps. Those chunks
    are answered by one comparison of their end. The others are scanned from each ``"usage"``
    found. (The regular expression ``rb'"usage"\\s*:\\s*\\{'`` took ~3,600 instructions a chunk,
    7 % of a streamed request's, bench/RESULTS.md; a ``bytes.find`` call costs ~1,000 of its own.)
    tests/unit/test_streaming.py checks this against the regular expression."""
    if payload.endswith(b',"usage":null}'):
        return False
    n = len(payload)
    at = payload.find(b'"usage"')
    while at >= 0:
        i = _skip_space(payload, at + 7, n)
        if i < n and payload[i] == 0x3A:  # :
            i = _skip_space(payload, i + 1, n)
            if i < n and payload[i] == 0x7B:  # {
                return True
        at = payload.find(b'"usage"', at + 1)
    return False


def _skip_space(data: bytes, i: int, n: int) -> int:
    """The index of the first byte at or after ``i`` that is not ASCII whitespace (as ``\\s`` in a
    bytes pattern: space, \\t, \\n, \\v, \\f, \\r)."""
    while i < n:
        c = data[i]
        if c != 0x20 and not 0x09 <= c <= 0x0D:
            break
        i += 1
    return i


MAX_COUNT = 10**12  # tokens no request reports: a larger figure is an upstream's error


def _count(value: Any) -> TypeGuard[int]:
    # (not bool, nor another int subclass; and storable: an upstream's 2**63 would fail every
    # settlement batch it is in, on SQLite and PostgreSQL alike)
    return type(value) is int and 0 <= value <= MAX_COUNT


class SseAccounting:
    """Splits upstream bytes into events, notes usage and generated text, drops what the client
    did not ask for (the usage-only event, and each chunk's null usage, when it did not set
    include_usage).

    ``responses``: a Responses API stream, whose events carry the response (its id from the first,
    ``response.created``, and its usage in the last, ``response.completed``, ``…incomplete`` or
    ``…failed``) and whose text comes in ``….delta`` events; nothing is dropped."""

    def __init__(self, *, client_wants_usage: bool, responses: bool = False) -> None:
        self._strip_usage = not client_wants_usage and not responses
        self._responses = responses
        self.response_id: str | None = None  # a Responses API stream's response id
        self._buf = b""
        self._chars = 0
        # Chunks without usage, not parsed yet: their text matters only if the stream ends before
        # the usage arrives (client or upstream gone), so they are counted then, or every 64 KiB.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.usage: Tokens | None = None
        self.audio = NO_AUDIO  # (of ``usage``)
        self.events = 0

    def feed(self, data: bytes) -> bytes:
        """Returns the complete events in ``data`` (plus what was held back) to forward now. When
        the client did not ask for usage, the ``"usage":null`` that every chunk carries once
        keyplane asked for it is taken out, as OpenAI leaves the field out then. (Inside a JSON
        string a quote is escaped, so the bytes ``,"usage":null`` can only be that field.)"""
        out = self._events(data)
        if self._strip_usage and out.find(b'"usage"') >= 0:
            out = out.replace(b',"usage":null', b"").replace(b', "usage": null', b"")
        return out

    def _events(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        # (find, not `in`: `bytes in bytes` first tries its operand as an integer and formats a
        # TypeError; this runs for every chunk and event of every stream)
        if buf.find(b"\r") >= 0:  # events may end with CRLF CRLF (rare): the general path
            return self._feed_any(buf)
        *events, self._buf = buf.split(b"\n\n")
        # Whether every event is one line, in one search instead of one per event (a ``bytes``
        # method call costs ~1,000 instructions; ``count`` goes byte by byte, ``find`` does not).
        one_line = b"".join(events).find(b"\n") < 0
        kept = [self._keep(event, one_line) for event in events]
        if all(kept):
            return buf[: len(buf) - len(self._buf)]
        return b"".join(e + b"\n\n" for e, keep in zip(events, kept, strict=True) if keep)

    def _feed_any(self, buf: bytes) -> bytes:
        out: list[bytes] = []
        start = 0
        while True:
            ends = [i + len(sep) for sep in _EVENT_ENDS if (i := buf.find(sep, start)) >= 0]
            if not ends:
                break
            end = min(ends)
            if self._keep(buf[start:end], False):
                out.append(buf[start:end])
            start = end
        self._buf = buf[start:]
        return b"".join(out)

    def rest(self) -> bytes:
        """Whatever the upstream sent after its last complete event."""
        rest, self._buf = self._buf, b""
        return rest

    def _keep(self, event: bytes, one_line: bool) -> bool:
        self.events += 1
        # The usual: one data line.
        if event.startswith(b"data: ") and (one_line or event.find(b"\n") < 0):
            return self._data(event[6:])
        keep = True
        for line in event.splitlines():
            if line.startswith(b"data:"):
                keep = self._data(line[5:]) and keep
        return keep

    def _data(self, payload: bytes) -> bool:
        """Notes what one data line says; False for the usage-only chunk the client did not ask
        for. ``[DONE]`` and anything that is not JSON pass through unread."""
        if payload == b"[DONE]":
            return True  # (not parsed: orjson's JSONDecodeError costs more than the rest)
        if self._responses:
            return self._response_event(payload)
        if not usage_object(payload):  # the usual chunk: counted later if needed
            self._hold_back(payload)
            return True
        obj = json_object(payload)
        if obj is None:
            return True
        if obj.get("usage") is not None:
            usage = parse_usage(obj)
            if usage is not None:
                self.usage, self.audio = usage, parse_audio(obj, usage)
                if self._strip_usage and obj.get("choices") == []:
                    return False
        self._chars += generated_chars(obj)
        return True

    def _response_event(self, payload: bytes) -> bool:
        """A Responses API event: the response's id (first seen), its usage (the last event's),
        or generated text (counted later, if the usage never comes)."""
        if self.response_id is not None and not usage_object(payload):
            self._hold_back(payload)
            return True
        obj = json_object(payload)
        response = obj.get("response") if obj is not None else None
        if type(response) is dict:
            if self.response_id is None and type(response.get("id")) is str:
                self.response_id = response["id"]
            if response.get("usage") is not None:
                usage = parse_usage(response)
                if usage is not None:
                    self.usage, self.audio = usage, parse_audio(response, usage)
        elif obj is not None:
            self._chars += generated_chars(obj)
        return True

    def _hold_back(self, payload: bytes) -> None:
        """Keeps an event with no usage unparsed: its text is counted only if the usage never
        comes (or every 64 KiB, to bound what is kept)."""
        self._pending.append(payload)
        self._pending_bytes += len(payload)
        if self._pending_bytes > _PENDING_MAX:
            self._count_pending()

    def _count_pending(self) -> None:
        for payload in self._pending:
            obj = json_object(payload)
            if obj is not None:
                self._chars += generated_chars(obj)
        self._pending, self._pending_bytes = [], 0

    @property
    def estimated_output_tokens(self) -> int:
        """Tokens of the text streamed so far, estimated (counting the chunks not parsed yet)."""
        self._count_pending()
        return estimate_chars(self._chars)


class AudioRelay(SseAccounting):
    """A binary answer (text to speech's audio, or whatever its upstream sent instead) passed on
    byte for byte as it arrives: nothing parsed, nothing held back, no usage in it (its request is
    billed on the text it asked to speak). An ``SseAccounting`` so the pipeline pumps both alike:
    the client's disconnect, the upstream's break and their bills are handled in one place."""

    def __init__(self) -> None:
        super().__init__(client_wants_usage=True)

    def feed(self, data: bytes) -> bytes:
        return data


class TranscriptAccounting(SseAccounting):
    """A streamed transcription (gpt-4o-transcribe's ``transcript.text.delta`` events, then one
    ``transcript.text.done`` with the whole text and its ``usage``), passed on event by event as
    it arrives, nothing dropped: the usage read from that last event (``transcript_usage``), and
    of its input the audio tokens (``heard``), which are priced apart. Its text is not counted: a
    stream that ends without that usage is billed its hold."""

    def __init__(self) -> None:
        super().__init__(client_wants_usage=True)
        self.heard = 0  # of ``usage``'s input tokens, those of audio

    def _data(self, payload: bytes) -> bool:
        if not usage_object(payload):  # (a delta: passed on unread)
            return True
        obj = json_object(payload)
        if obj is not None and obj.get("type") == "transcript.text.done":
            reported = transcript_usage(obj)
            if reported is not None:
                inp, self.heard, out = reported
                self.usage = (inp, 0, out)
        return True


def transcript_usage(answer: dict[str, Any] | None) -> tuple[int, int, int] | None:
    """The tokens a transcription reports (its JSON answer, or its stream's
    ``transcript.text.done`` event), (input, of which audio, output), on a model priced by tokens;
    None when it reports none usable (no ``usage``, or one of another ``type``: a duration)."""
    usage = answer.get("usage") if answer is not None else None
    if not isinstance(usage, dict) or usage.get("type", "tokens") != "tokens":
        return None
    # (No details: all of its input counted as audio, the dearer.)
    return token_usage(usage, "input_token_details", "audio_tokens", True)


def token_usage(
    usage: Any, details_name: str, part: str, unsaid_is_all: bool
) -> tuple[int, int, int] | None:
    """(input, of which ``part`` tokens, output) from a ``usage`` object reporting
    ``input_tokens`` and ``output_tokens``, the ``part`` tokens in its ``details_name`` object
    (all of the input when ``unsaid_is_all`` and it says none, else none); None when unusable."""
    if not isinstance(usage, dict):
        return None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    details = usage.get(details_name)
    media = details.get(part) if isinstance(details, dict) else None
    if media is None:
        media = inp if unsaid_is_all else 0
    if not (_count(inp) and _count(out) and _count(media)):
        return None
    return inp, min(media, inp), out


def json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(payload)  # (whitespace around it is fine)
    except orjson.JSONDecodeError:
        return None
    return obj if type(obj) is dict else None


def error_event(message: str) -> bytes:
    """An in-stream error as OpenAI sends one (the SDK raises APIError when it reads it)."""
    body = {
        "error": {
            "message": message,
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"
