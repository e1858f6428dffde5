"""Server-sent events passed through chunk by chunk: framing, usage capture and stripping."""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.gateway.streaming import (
    NO_AUDIO,
    SseAccounting,
    TranscriptAccounting,
    answer_usage,
    error_event,
    parse_usage,
    reported_usage,
    usage_object,
)

TEXTS = ["", "Hello", ", wor", "ld! ", "How can I help?"]
USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 7,
    "total_tokens": 26,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def chunk(choices: list[Any], usage: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1_800_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_1",
        "choices": choices,
        "usage": usage,
    }


def event(obj: Any, sep: bytes = b"\n\n") -> bytes:
    return b"data: " + orjson.dumps(obj) + sep


def content_events(sep: bytes = b"\n\n") -> list[bytes]:
    first = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    out = [event(chunk(first), sep)]
    for text in TEXTS[1:]:
        out.append(event(chunk([{"index": 0, "delta": {"content": text}}]), sep))
    out.append(event(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]), sep))
    return out


def usage_event(sep: bytes = b"\n\n") -> bytes:
    return event(chunk([], USAGE), sep)


def done(sep: bytes = b"\n\n") -> bytes:
    return b"data: [DONE]" + sep


def without_null_usage(data: bytes) -> bytes:
    """The chunks as OpenAI streams them when include_usage is not set: no usage field."""
    return data.replace(b',"usage":null', b"")


def run(data: bytes, cuts: list[int], *, wants_usage: bool) -> tuple[bytes, SseAccounting]:
    acc = SseAccounting(client_wants_usage=wants_usage)
    bounds = [0, *sorted(set(cuts)), len(data)]
    out = b"".join(acc.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    return out + acc.rest(), acc


def cut_points(max_len: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, max_len), max_size=40)


STREAM_LEN = len(b"".join([*content_events(b"\r\n\r\n"), usage_event(b"\r\n\r\n"), done()]))
fuzz = settings(max_examples=300, deadline=None, database=None)
seps = st.sampled_from([b"\n\n", b"\r\n\r\n"])


@fuzz
@given(sep=seps, cuts=cut_points(STREAM_LEN), end=st.integers(0, STREAM_LEN))
def test_everything_is_forwarded_when_the_client_wants_usage(
    sep: bytes, cuts: list[int], end: int
) -> None:
    full = b"".join([*content_events(sep), usage_event(sep), done(sep)])
    data = full[:end]  # possibly cut short, even mid-event
    out, _ = run(data, [c for c in cuts if c <= len(data)], wants_usage=True)
    assert out == data


@fuzz
@given(sep=seps, cuts=cut_points(STREAM_LEN))
def test_only_the_usage_event_is_removed_when_the_client_did_not_ask(
    sep: bytes, cuts: list[int]
) -> None:
    events = content_events(sep)
    full = b"".join([*events, usage_event(sep), done(sep)])
    out, acc = run(full, [c for c in cuts if c <= len(full)], wants_usage=False)

    # As OpenAI streams without include_usage: no usage event, and no usage field in the chunks.
    assert out == without_null_usage(b"".join([*events, done(sep)]))
    assert b'"usage"' not in out
    assert acc.usage == (19, 4, 7)  # still billed exactly
    assert acc.events == len(events) + 2


@fuzz
@given(cuts=cut_points(STREAM_LEN))
def test_usage_and_estimate_do_not_depend_on_where_the_bytes_are_cut(cuts: list[int]) -> None:
    full = b"".join([*content_events(), usage_event(), done()])
    _, acc = run(full, [c for c in cuts if c <= len(full)], wants_usage=True)
    assert acc.usage == (19, 4, 7)
    assert acc.estimated_output_tokens == math.ceil(len("".join(TEXTS)) / 4)


def test_usage_is_taken_from_the_last_chunk_that_carries_it() -> None:
    acc = SseAccounting(client_wants_usage=True)
    early = {"prompt_tokens": 19, "completion_tokens": 1}
    acc.feed(event(chunk([{"index": 0, "delta": {"content": "a"}}], early)))
    assert acc.usage == (19, 0, 1)
    acc.feed(usage_event())
    assert acc.usage == (19, 4, 7)


def test_final_chunk_with_choices_and_usage_is_counted_and_forwarded() -> None:
    last = event(
        chunk([{"index": 0, "delta": {"content": "Bye!"}, "finish_reason": "stop"}], USAGE)
    )
    data = b"".join([*content_events(), last, done()])
    out, acc = run(data, [], wants_usage=False)

    assert out == without_null_usage(data)
    assert acc.usage == (19, 4, 7)
    assert acc.estimated_output_tokens == math.ceil(len("".join(TEXTS) + "Bye!") / 4)


def test_crlf_separated_events_are_split() -> None:
    acc = SseAccounting(client_wants_usage=False)
    first, second = content_events(b"\r\n\r\n")[1:3]
    assert acc.feed(first + second[:10]) == without_null_usage(first)
    assert acc.feed(second[10:] + usage_event(b"\r\n\r\n")) == without_null_usage(second)
    assert acc.usage == (19, 4, 7)
    assert acc.rest() == b""


def test_an_incomplete_event_is_held_back_until_rest() -> None:
    acc = SseAccounting(client_wants_usage=True)
    partial = content_events()[1][:-1]
    assert acc.feed(partial) == b""
    assert acc.rest() == partial
    assert acc.rest() == b""


def test_estimated_output_tokens_is_ceil_of_streamed_characters_over_four() -> None:
    acc = SseAccounting(client_wants_usage=True)
    assert acc.estimated_output_tokens == 0
    acc.feed(event(chunk([{"index": 0, "delta": {"content": "abcde"}}])))
    assert acc.estimated_output_tokens == 2
    acc.feed(event(chunk([{"index": 0, "delta": {"content": "fgh"}}])))
    assert acc.estimated_output_tokens == 2
    acc.feed(event(chunk([{"index": 0, "delta": {"content": "i"}}])))
    assert acc.estimated_output_tokens == 3
    assert acc.usage is None


@pytest.mark.parametrize(
    "raw",
    [
        b"data: {not json\n\n",
        b'data: {"choices": [], "usage": \n\n',
        b"data: \xff\xfe\n\n",
        b": keep-alive\n\n",
        b"event: ping\ndata: \n\n",
    ],
)
def test_unparseable_events_are_forwarded_untouched(raw: bytes) -> None:
    acc = SseAccounting(client_wants_usage=False)
    data = raw + usage_event() + done()
    assert acc.feed(data) == raw + done()
    assert acc.usage == (19, 4, 7)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (USAGE, (19, 4, 7)),
        ({"prompt_tokens": 5, "completion_tokens": 0}, (5, 0, 0)),
        ({"prompt_tokens": 5}, (5, 0, 0)),  # embeddings report no completion tokens
        ({"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": None}, (5, 0, 2)),
        (
            {"input_tokens": 30, "output_tokens": 9, "input_tokens_details": {"cached_tokens": 8}},
            (30, 8, 9),
        ),
    ],
)
def test_parse_usage_reads_chat_and_responses_shapes(
    usage: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    assert parse_usage({"usage": usage}) == expected


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        {},
        {"usage": None},
        {"usage": "19"},
        {"usage": {"completion_tokens": 3}},
        {"usage": {"prompt_tokens": -1, "completion_tokens": 3}},
        {"usage": {"prompt_tokens": 1, "completion_tokens": -3}},
        {"usage": {"prompt_tokens": True, "completion_tokens": 3}},
        {"usage": {"prompt_tokens": 1, "completion_tokens": True}},
        {"usage": {"prompt_tokens": "19", "completion_tokens": 3}},
        {"usage": {"prompt_tokens": 1, "completion_tokens": "3"}},
        {"usage": {"prompt_tokens": 1.5, "completion_tokens": 3}},
        {"usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": "4"}}},
        {"usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": -4}}},
    ],
)
def test_parse_usage_rejects_invalid_counts(obj: Any) -> None:
    assert parse_usage(obj) is None


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 9, "completion_tokens": False},
        {"prompt_tokens": 9, "completion_tokens": ""},
        {
            "prompt_tokens": 9,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": ""},
        },
    ],
)
def test_parse_usage_rejects_falsy_non_integer_counts(usage: dict[str, Any]) -> None:
    assert parse_usage({"usage": usage}) is None


def test_error_event_is_one_openai_style_sse_event() -> None:
    message = 'The upstream "broke"\n\nbefore it finished.'
    raw = error_event(message)

    assert raw.startswith(b"data: ")
    assert raw.endswith(b"\n\n")
    assert raw.count(b"\n\n") == 1  # the message cannot end the event early
    body = orjson.loads(raw[len(b"data: ") :])
    assert body["error"]["message"] == message
    assert body["error"]["type"] == "server_error"


def test_error_event_passes_through_the_accounting_unchanged() -> None:
    raw = error_event("The upstream stream broke before it finished.")
    acc = SseAccounting(client_wants_usage=False)
    assert acc.feed(raw) == raw
    assert acc.usage is None


def test_a_long_stream_cut_short_is_estimated_on_all_its_text() -> None:
    # More than the 64 KiB of chunks kept unparsed: counted as they pile up, then at the end.
    acc = SseAccounting(client_wants_usage=False)
    texts = [f"{i:05d}" + "x" * 95 for i in range(1500)]
    for text in texts:
        acc.feed(event(chunk([{"index": 0, "delta": {"content": text}}])))
    assert acc.usage is None
    assert acc.estimated_output_tokens == math.ceil(sum(map(len, texts)) / 4)


def test_usage_is_found_in_an_event_of_several_lines() -> None:
    """A data line followed by another field (``id:``) in the same event: its line is parsed
    alone, also when the other events in the same bytes are single data lines."""
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
    for raw in (usage + b"\nid: 7\n\n", event(chunk([])) + usage + b"\nid: 7\n\n"):
        acc = SseAccounting(client_wants_usage=True)
        assert acc.feed(raw) == raw
        assert acc.usage == (3, 0, 2)


def test_usage_is_found_however_its_json_is_spaced() -> None:
    raw = b'data: {"choices": [], "usage" :\t {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    acc = SseAccounting(client_wants_usage=False)
    assert acc.feed(raw) == b""  # the usage-only chunk the client did not ask for
    assert acc.usage == (3, 0, 2)


# What usage_object answers, as a regular expression (what the gateway ran before; slower),
# except for a line ending with a null usage of its own.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_NULL_LAST = b',"usage":null}'
_PIECES = st.sampled_from(
    [b'"usage"', b'"usage', b'usage"', b":", b"{", b"null", b" ", b"\t", b"\n", b"\r", b"\x0b",
     b"\x0c", b"\x1c", b"\xa0", b'"', b"}", b"x", b",", _NULL_LAST]
)  # fmt: skip


@fuzz
@given(st.lists(_PIECES | st.binary(max_size=4), max_size=12))
def test_a_usage_object_is_found_exactly_where_the_regular_expression_finds_one(
    pieces: list[bytes],
) -> None:
    payload = b"".join(pieces)
    expected = _USAGE_OBJECT.search(payload) is not None and not payload.endswith(_NULL_LAST)
    assert usage_object(payload) == expected, payload


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        (b'{"choices":[],"usage":{"prompt_tokens":1}}', True),
        (b'{"choices":[],"usage" \t:\r\n {"prompt_tokens":1}}', True),
        (b'{"choices":[{"delta":{}}],"usage":null}', False),
        (b'{"usage":{"x":1},"choices":[]}', True),  # not last
        (b'{"choices":[],"usage":{"x":1},"usage": null}', True),  # (a spaced null: parsed)
        (b'{"a":{"usage":{"x":1}},"usage":null}', False),  # its own usage, last, is null
        (b'{"usage":null}', False),
        (b'"usage"usage":{', True),  # sharing its quote with the one before it
        (b'"usage":', False),
        (b'"usage"\x0b:\x0c{', True),  # (\s: space, \t, \n, \v, \f, \r)
        (b'"usage"\x1c:{', False),  # (a space to str.isspace, not to \s in a bytes pattern)
        (b'"usage" \xa0: {', False),  # (nor is a non-ASCII one)
        (b"", False),
    ],
)
def test_usage_object_examples(payload: bytes, found: bool) -> None:
    assert usage_object(payload) is found


def test_usage_written_inside_the_generated_text_is_only_text() -> None:
    text = 'He said "usage": {"prompt_tokens": 1, "completion_tokens": 1}'
    raw = event(chunk([{"index": 0, "delta": {"content": text}}]))
    acc = SseAccounting(client_wants_usage=False)
    out = acc.feed(raw)
    assert out == without_null_usage(raw) and orjson.dumps(text) in out  # the text is untouched
    assert acc.usage is None
    assert acc.estimated_output_tokens == math.ceil(len(text) / 4)


# Answers whose text tries to pass for a usage block: in the generated content, in a nested object,
# in a key ending in \"usage, before or after the real one.
_BAIT = '"usage": {"prompt_tokens": 1, "completion_tokens": 1}'
_KEYS = st.sampled_from(["usage", "choices", "model", 'x"usage', "usage\\", "id", "u"])
_STRINGS = st.sampled_from(["", "usage", _BAIT, '\\"usage"', '"}', "}", "\\", "héllo"]) | st.text()
AUDIO_USAGE = {  # gpt-4o-audio-preview's, hearing and speaking
    "prompt_tokens": 40,
    "completion_tokens": 90,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 25},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 80},
}
_USAGES = st.sampled_from(
    [USAGE, AUDIO_USAGE, {"prompt_tokens": 3, "completion_tokens": 4}, None, {}, "x", 5]
)
_VALUES = st.recursive(
    st.none() | st.integers() | _STRINGS | _USAGES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=12,
)


@fuzz
@given(
    st.dictionaries(_KEYS, _VALUES, max_size=5),
    st.sampled_from([None, 0, 2]),
    st.booleans(),
)
def test_the_usage_read_from_an_answers_end_is_the_whole_answers(
    answer: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    content = json.dumps(answer, indent=indent, ensure_ascii=ascii_only).encode()
    assert answer_usage(content) == reported_usage(answer)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # The usual order: usage after the choices, whatever the content says.
        (
            b'{"choices":[{"message":{"content":"' + _BAIT.replace('"', '\\"').encode() + b'"}}],'
            b'"usage":{"prompt_tokens":9,"completion_tokens":2}}',
            (9, 0, 2),
        ),
        # Usage first, a nested usage later: the nested one is not the answer's.
        (
            b'{"usage":{"prompt_tokens":9,"completion_tokens":2},"x":{"usage":'
            b'{"prompt_tokens":1,"completion_tokens":1}}}',
            (9, 0, 2),
        ),
        # Two usage keys (one spelt with an escape): the last, as a full parse reads it.
        (
            b'{"usage":{"prompt_tokens":1,"completion_tokens":1},'
            b'"\\u0075sage":{"prompt_tokens":9,"completion_tokens":2}}',
            (9, 0, 2),
        ),
        (
            b'{"\\u0075sage":{"prompt_tokens":1,"completion_tokens":1},'
            b'"usage":{"prompt_tokens":9,"completion_tokens":2}}',
            (9, 0, 2),
        ),
        # An array, not an answer object; no usage; not JSON.
        (b'[{"usage":{"prompt_tokens":9,"completion_tokens":2}}]', None),
        (b'{"choices":[]}', None),
        (b'{"usage":', None),
        (b"", None),
    ],
)
def test_answer_usage_reads_what_a_full_parse_reads(
    content: bytes, expected: tuple[int, int, int] | None
) -> None:
    assert answer_usage(content) == (None if expected is None else (expected, NO_AUDIO))


@pytest.mark.parametrize(
    ("usage", "audio"),
    [
        (AUDIO_USAGE, (25, 80)),
        (USAGE, (0, 0)),  # a text model's: audio_tokens 0, or not reported at all
        ({"prompt_tokens": 5, "completion_tokens": 2}, (0, 0)),
        ({**AUDIO_USAGE, "completion_tokens_details": None}, (25, 0)),
        ({**AUDIO_USAGE, "prompt_tokens_details": {"audio_tokens": "25"}}, (0, 80)),
        ({**AUDIO_USAGE, "prompt_tokens_details": {"audio_tokens": True}}, (0, 80)),
        ({**AUDIO_USAGE, "completion_tokens_details": {"audio_tokens": -1}}, (25, 0)),
        ({**AUDIO_USAGE, "prompt_tokens_details": [25]}, (0, 80)),
        # More audio than tokens (an upstream's error): at most the tokens it is part of.
        ({**AUDIO_USAGE, "prompt_tokens_details": {"audio_tokens": 41}}, (40, 80)),
        # The Responses API's names.
        (
            {
                "input_tokens": 30, "output_tokens": 9,
                "input_tokens_details": {"cached_tokens": 8, "audio_tokens": 6},
                "output_tokens_details": {"audio_tokens": 9},
            },
            (6, 9),
        ),
    ],
)  # fmt: skip
def test_the_audio_tokens_among_the_reported_ones(
    usage: dict[str, Any], audio: tuple[int, int]
) -> None:
    """Audio tokens are shown in usage, not billed apart: a bad count is 0, not a bad usage."""
    used = parse_usage({"usage": usage})
    assert used is not None
    assert reported_usage({"usage": usage}) == (used, audio)
    answer = {"id": "chatcmpl-1", "choices": [], "usage": usage}
    assert answer_usage(orjson.dumps(answer)) == (used, audio)


@pytest.mark.parametrize("responses", [False, True])
def test_a_stream_notes_the_audio_tokens_of_its_usage(responses: bool) -> None:
    if responses:
        usage = {"input_tokens": 40, "output_tokens": 90, "input_tokens_details":
                 {"audio_tokens": 25}, "output_tokens_details": {"audio_tokens": 80}}  # fmt: skip
        last = {"type": "response.completed", "response": {"id": "resp_1", "usage": usage}}
        data = event({"type": "response.created", "response": {"id": "resp_1"}}) + event(last)
    else:
        data = b"".join(content_events()) + event(chunk([], AUDIO_USAGE)) + done()
    acc = SseAccounting(client_wants_usage=False, responses=responses)
    acc.feed(data)
    assert acc.usage == (40, 0, 90) and acc.audio == (25, 80)
    plain = SseAccounting(client_wants_usage=False)
    plain.feed(b"".join(content_events()) + usage_event() + done())
    assert plain.usage == (19, 4, 7) and plain.audio == NO_AUDIO


def responses_stream(text: list[str], usage: dict[str, Any] | None) -> bytes:
    """A Responses API stream as OpenAI sends it: named events, the response first and last."""
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": {"id": "resp_1", "status": "in_progress", "usage": None}})
    ]
    events += [("response.output_text.delta", {"item_id": "msg_1", "delta": t}) for t in text]
    if usage is not None:
        done = {"response": {"id": "resp_1", "status": "completed", "usage": usage}}
        events.append(("response.completed", done))
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps({"type": kind, **data}))
        for kind, data in events
    )


RESPONSES_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 2},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 1},
    "total_tokens": 17,
}


@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=6))
def test_a_responses_stream_passes_whole_and_yields_its_id_and_usage(cuts: list[int]) -> None:
    raw = responses_stream(TEXTS, RESPONSES_USAGE)
    acc = SseAccounting(client_wants_usage=False, responses=True)
    out = b"".join(acc.feed(raw[a:b]) for a, b in itertools.pairwise([0, *sorted(cuts), len(raw)]))
    assert out + acc.rest() == raw  # nothing dropped, whatever the client asked
    assert acc.response_id == "resp_1"
    assert acc.usage == (12, 2, 5)


def test_a_responses_stream_cut_short_is_estimated_from_its_deltas() -> None:
    acc = SseAccounting(client_wants_usage=True, responses=True)
    acc.feed(responses_stream(TEXTS, None))
    assert acc.usage is None and acc.response_id == "resp_1"
    assert acc.estimated_output_tokens == math.ceil(len("".join(TEXTS)) / 4)


@pytest.mark.parametrize("count", [2**63, 10**12 + 1, -1])
def test_a_count_no_request_reports_makes_the_usage_unusable(count: int) -> None:
    """An upstream's 2**63 would fail every settlement batch it is stored in: billed on the
    estimate instead."""
    assert parse_usage({"usage": {"prompt_tokens": count, "completion_tokens": 1}}) is None
    assert parse_usage({"usage": {"prompt_tokens": 5, "completion_tokens": count}}) is None
    assert parse_usage({"usage": {"prompt_tokens": 10**12, "completion_tokens": 1}}) is not None


def transcript_stream(usage: Any, sep: bytes = b"\n\n") -> bytes:
    deltas = [event({"type": "transcript.text.delta", "delta": t}, sep) for t in TEXTS]
    last: dict[str, Any] = {"type": "transcript.text.done", "text": "".join(TEXTS)}
    if usage is not None:
        last["usage"] = usage
    return b"".join([*deltas, event(last, sep), done(sep)])


TRANSCRIPT_USAGE = {
    "type": "tokens", "input_tokens": 40, "output_tokens": 9, "total_tokens": 49,
    "input_token_details": {"text_tokens": 10, "audio_tokens": 30},
}  # fmt: skip


@fuzz
@given(sep=seps, cuts=cut_points(2000))
def test_a_transcript_stream_passes_whole_and_yields_its_usage_and_audio_tokens(
    sep: bytes, cuts: list[int]
) -> None:
    raw = transcript_stream(TRANSCRIPT_USAGE, sep)
    acc = TranscriptAccounting()
    bounds = [0, *sorted(c for c in set(cuts) if c <= len(raw)), len(raw)]
    out = b"".join(acc.feed(raw[a:b]) for a, b in itertools.pairwise(bounds))
    assert out + acc.rest() == raw  # every event, as it came
    assert (acc.usage, acc.heard) == ((40, 0, 9), 30)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {k: v for k, v in TRANSCRIPT_USAGE.items() if k != "input_token_details"},
            ((40, 0, 9), 40),
        ),
        ({"type": "duration", "seconds": 3}, (None, 0)),  # not what the model is priced by
        ({**TRANSCRIPT_USAGE, "output_tokens": 2.5}, (None, 0)),
        (None, (None, 0)),
    ],
)
def test_a_transcript_streams_usage_is_read_as_an_unstreamed_answers(
    usage: Any, expected: tuple[Any, int]
) -> None:
    """No details: all of the input counted as audio (the dearer); no usable usage: none."""
    acc = TranscriptAccounting()
    acc.feed(transcript_stream(usage))
    assert (acc.usage, acc.heard) == expected
