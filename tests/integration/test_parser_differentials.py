"""The upstream serves the request keyplane read, held money for and billed: never a body another
parser could read differently (a key given twice, a field name in another case, a form field or
a boundary given twice, a form field's name another parser decodes or shortens into one keyplane
reads, a JSON body sent as another type, two Content-Type headers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.simulator.images import PNG_1X1
from kptest import ServerThread, Upstream

CHAT = "/chat/completions"


class Recorder(Upstream):
    """An OpenAI-compatible upstream that keeps every request's raw body and headers as it
    received them, and answers chat (a stream too), embeddings and images with their usage."""

    models = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "dall-e-2", "whisper-1")

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[bytes, list[bytes]], bytes]] = []

    def raw_bodies(self) -> list[bytes]:
        return [body for _, _, body in self.requests]

    def respond(
        self, path: str, headers: list[tuple[bytes, bytes]], raw: bytes
    ) -> tuple[int, bytes, bytes]:
        received: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            received.setdefault(name, []).append(value)
        self.requests.append((path, received, raw))
        return (200, *self.answer_to(path, raw))

    def answer_to(self, path: str, body: bytes) -> tuple[bytes, bytes]:
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if path.startswith("/v1/images/"):
            return b"application/json", orjson.dumps({"created": 1, "data": [{"url": "u"}]})
        if path.startswith("/v1/audio/"):
            heard = {"text": "hi", "usage": {"type": "duration", "seconds": 2}}
            return b"application/json", orjson.dumps(heard)
        request = orjson.loads(body)
        if path == "/v1/embeddings":
            usage = {"prompt_tokens": 3, "total_tokens": 3}
            data = [{"object": "embedding", "index": 0, "embedding": [0.5]}]
            answer = {"object": "list", "data": data, "model": request["model"], "usage": usage}
            return b"application/json", orjson.dumps(answer)
        chunk = {"id": "c", "object": "chat.completion", "created": 1, "model": request["model"]}
        if request.get("stream"):
            delta = {"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}
            events = [{**chunk, "choices": [delta]}, {**chunk, "choices": [], "usage": usage}]
            sse = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
            return b"text/event-stream", sse + b"data: [DONE]\n\n"
        message = {"role": "assistant", "content": "hi"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return b"application/json", orjson.dumps({**chunk, "choices": [choice], "usage": usage})


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, ServerThread]]:
    upstream = Recorder()
    server = ServerThread(upstream).start()
    yield upstream, server
    server.stop()


@pytest.fixture
def kp(tmp_path: Path, recorder: tuple[Recorder, ServerThread]) -> Iterator[Keyplane]:
    upstream, server = recorder
    upstream.requests.clear()
    instance = start_keyplane(tmp_path, server.url + "/v1")
    yield instance
    instance.server.stop()
    instance.container.close()


def post(kp: Keyplane, path: str, body: bytes, **headers: str) -> httpx.Response:
    sent = {"authorization": f"Bearer {kp.key}", "content-type": "application/json", **headers}
    return kphttp.post(kp.base_url + path, content=body, headers=sent)


def pairs_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: fails on a key given twice, or two that differ only in case."""
    folded = [key.casefold() for key, _ in pairs]
    assert len(set(folded)) == len(folded), f"ambiguous keys: {[key for key, _ in pairs]}"
    return dict(pairs)


def received(upstream: Recorder) -> dict[str, Any]:
    """The one body the upstream received, read strictly: every key once, at every depth."""
    (body,) = upstream.raw_bodies()
    result: dict[str, Any] = json.loads(body, object_pairs_hook=pairs_once)
    return result


def assert_refused(kp: Keyplane, upstream: Recorder, resp: httpx.Response) -> dict[str, Any]:
    """A 400 in OpenAI's envelope, nothing forwarded, held or billed; returns the error."""
    assert resp.status_code == 400, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert upstream.requests == []
    assert kp.gateway.pipeline.money.in_flight == 0
    assert kp.usage() == []
    return error


# --- a key given twice: the upstream gets one, the value keyplane read -------------------------


def test_a_key_given_twice_reaches_the_upstream_once_as_keyplane_read_it(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread]
) -> None:
    upstream, _ = recorder
    # (orjson keeps the last of two; a parser keeping the first would serve gpt-4o-mini with 5.)
    body = (
        b'{"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", '
        b'"content": "a", "content": "the prompt keyplane counted"}], "model": "gpt-4o", '
        b'"max_tokens": 50}'
    )
    resp = post(kp, CHAT, body)
    assert resp.status_code == 200, resp.text
    got = received(upstream)
    assert got["model"] == "gpt-4o" and got["max_tokens"] == 50
    assert got["messages"] == [{"role": "user", "content": "the prompt keyplane counted"}]
    (record,) = kp.usage(1)
    assert record.model == "gpt-4o" and record.input_tokens == 3


def test_an_escaped_key_is_the_same_key_and_reaches_the_upstream_once(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread]
) -> None:
    upstream, _ = recorder
    body = b'{"mod\\u0065l": "gpt-4o", "input": "hi", "model": "text-embedding-3-small"}'
    resp = post(kp, "/embeddings", body)
    assert resp.status_code == 200, resp.text
    assert received(upstream) == {"model": "text-embedding-3-small", "input": "hi"}
    (record,) = kp.usage(1)
    assert record.model == "text-embedding-3-small"


def test_a_stream_whose_options_are_given_twice_is_streamed_with_its_usage(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread]
) -> None:
    """stream and stream_options decide whether keyplane reads a stream and asks for its usage:
    the upstream reads the ones keyplane did."""
    upstream, _ = recorder
    body = (
        b'{"model": "gpt-4o-mini", "stream": false, "messages": [{"role": "user", "content": '
        b'"hi"}], "stream_options": {"include_usage": true, "include_usage": false}, '
        b'"stream": true}'
    )
    resp = post(kp, CHAT, body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    got = received(upstream)
    assert got["stream"] is True and got["stream_options"] == {"include_usage": True}
    # The client asked for no usage chunk (its last include_usage): it gets none, and is billed.
    assert b'"usage"' not in resp.content
    (record,) = kp.usage(1)
    assert record.stream and record.output_tokens == 2 and not record.tokens_estimated


# --- field names in another case: refused, as an upstream may read them as the field -----------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"MODEL": "gpt-4o"}, "MODEL"),
        ({"Max_Tokens": 100_000}, "Max_Tokens"),
        ({"max_completion_TOKENS": 100_000}, "max_completion_TOKENS"),
        ({"N": 128}, "N"),
        ({"\u017ftream": True}, "\u017ftream"),  # Go folds the long s into s
        ({"max_to\u212aens": 100_000}, "max_to\u212aens"),  # and the Kelvin sign into k
        ({"stream": True, "stream_options": {"include_usage": True, "Include_Usage": False}},
         "stream_options.Include_Usage"),
    ],
)  # fmt: skip
def test_a_field_keyplane_reads_in_another_case_is_refused_before_any_hold(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread], extra: dict[str, Any], param: str
) -> None:
    upstream, _ = recorder
    sdk = openai.OpenAI(base_url=kp.base_url, api_key=kp.key, max_retries=0)
    with sdk, pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            extra_body=extra,
        )  # fmt: skip
    assert caught.value.param == param
    assert "only in letter case" in caught.value.message
    assert upstream.requests == []
    assert kp.gateway.pipeline.money.in_flight == 0
    assert kp.usage() == []


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        (CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi",
                "Content": "x" * 5000}]}, "messages[0].Content"),
        (CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
                {"type": "text", "TEXT": "x"}]}]}, "messages[0].content[0].TEXT"),
        ("/embeddings", {"model": "text-embedding-3-small", "input": "a", "Input": "b"}, "Input"),
        ("/responses", {"model": "gpt-4o-mini", "input": "hi", "Background": True},
         "Background"),
        ("/responses", {"model": "gpt-4o-mini", "input": "hi", "tools": [
                {"type": "function", "name": "f", "Type": "web_search"}]}, "tools[0].Type"),
        ("/responses", {"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
                {"type": "input_image", "Image_Url": "data:x"}]}]},
         "input[0].content[0].Image_Url"),
    ],
)  # fmt: skip
def test_a_nested_field_keyplane_reads_in_another_case_is_refused(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread], path: str, payload: dict[str, Any],
    param: str,
) -> None:  # fmt: skip
    upstream, _ = recorder
    error = assert_refused(kp, upstream, post(kp, path, orjson.dumps(payload)))
    assert error["param"] == param


def test_names_keyplane_does_not_read_are_forwarded_whatever_their_case(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread]
) -> None:
    """A tool's JSON schema may name its properties anything ("Content", "Model"...)."""
    upstream, _ = recorder
    schema = {"type": "object", "properties": {"Content": {"type": "string"},
              "Model": {"type": "string"}}}  # fmt: skip
    tool = {"type": "function", "function": {"name": "save", "parameters": schema}}
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
               "tools": [tool], "metadata": {"Stream": "yes"}}  # fmt: skip
    resp = post(kp, CHAT, orjson.dumps(payload))
    assert resp.status_code == 200, resp.text
    assert received(upstream) == payload


# --- multipart forms ------------------------------------------------------------------------


def form(*parts: tuple[bytes, bytes], boundary: bytes = b"B") -> bytes:
    """A multipart body of (headers, content) parts."""
    body = b"".join(b"--%s\r\n%s\r\n\r\n%s\r\n" % (boundary, head, data) for head, data in parts)
    return body + b"--%s--\r\n" % boundary


def field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="%s"' % name, value


IMAGE = (b'Content-Disposition: form-data; name="image"; filename="k.png"\r\n'
         b"Content-Type: image/png", PNG_1X1)  # fmt: skip
FORM = "multipart/form-data; boundary=B"


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        (FORM, form(IMAGE, field(b"prompt", b"a key"), field(b"model", b"dall-e-2"),
                    field(b"model", b"gpt-image-1")), "'model' appears more than once"),
        (FORM, form(IMAGE, field(b"prompt", b"a key"), field(b"n", b"1"), field(b"n", b"10")),
         "'n' appears more than once"),
        ("multipart/form-data; boundary=B; boundary=C",
         form(IMAGE, field(b"prompt", b"a key")), "'boundary' more than once"),
        ("multipart/form-data; boundary=B; BOUNDARY=C",
         form(IMAGE, field(b"prompt", b"a key")), "'boundary' more than once"),
        ("multipart/form-data; boundary=B; boundary*=utf-8''C",
         form(IMAGE, field(b"prompt", b"a key")), "'boundary*'"),
        (FORM, form(IMAGE, field(b"prompt", b"a key"),
                    (b"Content-Disposition: form-data; name=\"x\"; name*=utf-8''model",
                     b"gpt-image-1")), "'name*'"),
        (FORM, form(IMAGE, field(b"prompt", b"a key"),
                    (b'Content-Disposition: form-data; name="x"\r\n'
                     b'Content-Disposition: form-data; name="model"', b"gpt-image-1")),
         "more than one Content-Disposition"),
        (FORM, form(IMAGE, field(b"prompt", b"a key"),
                    (b'Content-Disposition: attachment; name="model"', b"gpt-image-1")),
         "must be form-data"),
    ],
)  # fmt: skip
def test_an_ambiguous_upload_is_refused_before_any_hold(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread], content_type: str, body: bytes,
    says: str,
) -> None:  # fmt: skip
    upstream, _ = recorder
    resp = post(kp, "/images/edits", body, **{"content-type": content_type})
    error = assert_refused(kp, upstream, resp)
    assert says in error["message"]


def test_images_listed_under_one_name_are_still_served(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread]
) -> None:
    """``image[]`` repeats by design (gpt-image-1's several images); forwarded as it came."""
    upstream, _ = recorder
    listed = (IMAGE[0].replace(b'name="image"', b'name="image[]"'), PNG_1X1)
    body = form(listed, listed, field(b"prompt", b"a key"), field(b"model", b"dall-e-2"))
    resp = post(kp, "/images/edits", body, **{"content-type": FORM})
    assert resp.status_code == 200, resp.text
    assert upstream.raw_bodies() == [body]
    (record,) = kp.usage(1)
    assert record.images == 1 and record.model == "dall-e-2"


AUDIO = (b'Content-Disposition: form-data; name="file"; filename="a.mp3"\r\n'
         b"Content-Type: audio/mpeg", b"\xff\xfb" * 2000)  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "param", "meant"),
    [  # (a percent-decoding upstream, Rack's and PHP's brackets, PHP's underscores)
        ("/images/edits", form(IMAGE, field(b"prompt", b"a key"), field(b"mod%65l",
         b"gpt-image-1")), "mod%65l", "model"),
        ("/images/edits", form(IMAGE, field(b"prompt", b"a key"), field(b"model", b"dall-e-2"),
         field(b"model[]", b"gpt-image-1")), "model[]", "model"),
        ("/images/edits", form(IMAGE, field(b"prompt", b"a key"), field(b"n[x]", b"10")), "n[x]",
         "n"),
        ("/images/edits", form(IMAGE, field(b"prompt", b"a key"), field(b"[size]", b"1792x1024")),
         "[size]", "size"),
        ("/images/edits", form(IMAGE, field(b"prompt", b"a key"), field(b"quality%5B%5D", b"hd")),
         "quality%5B%5D", "quality"),
        ("/images/edits", form(IMAGE, (IMAGE[0].replace(b'name="image"', b'name="image[0]"'),
         PNG_1X1), field(b"prompt", b"a key")), "image[0]", "image"),
        ("/images/edits", form(IMAGE, field(b"prompt", b"a key"),
         (IMAGE[0].replace(b'name="image"', b'name="image%5B%5D"'), PNG_1X1)),
         "image%5B%5D", "image[]"),
        ("/audio/transcriptions", form(AUDIO, field(b"model", b"whisper-1"),
         field(b"response.format", b"text")), "response.format", "response_format"),
        ("/audio/transcriptions", form(AUDIO, field(b"model", b"whisper-1"),
         field(b"response[format", b"text")), "response[format", "response_format"),
        ("/audio/transcriptions", form(AUDIO, field(b"model", b"whisper-1"),
         (AUDIO[0].replace(b'name="file"', b'name="fil%65"'), AUDIO[1])), "fil%65", "file"),
    ],
)  # fmt: skip
def test_a_form_field_another_parser_reads_as_one_keyplane_reads_is_refused_before_any_hold(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread], path: str, body: bytes, param: str,
    meant: str,
) -> None:  # fmt: skip
    """keyplane holds and bills what it reads under a field's exact name; an upstream that
    percent-decodes names or reads ``model[]`` as ``model`` would serve another model, n, size or
    answer format (or other files) than the ones held for."""
    upstream, _ = recorder
    resp = post(kp, path, body, **{"content-type": FORM})
    error = assert_refused(kp, upstream, resp)
    assert error["param"] == param
    assert f"may be read as '{meant}'" in error["message"]


def test_a_text_field_keyplane_reads_sent_as_a_file_is_refused(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread]
) -> None:
    """keyplane reads text fields only: a ``model`` part with a filename was left unread (the
    default model held and added), and some parsers read a file's content as the field's value."""
    upstream, _ = recorder
    as_file = (b'Content-Disposition: form-data; name="model"; filename="m.txt"', b"gpt-image-1")
    resp = post(kp, "/images/edits", form(IMAGE, field(b"prompt", b"a key"), as_file),
                **{"content-type": FORM})  # fmt: skip
    error = assert_refused(kp, upstream, resp)
    assert error["param"] == "model" and "not a file" in error["message"]


def test_the_sdks_lists_are_served_and_a_misnamed_field_keyplane_reads_is_not(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread]
) -> None:
    """The SDKs send a list as ``name[]`` parts (``timestamp_granularities[]``): forwarded as
    they came. Only a name read as one keyplane reads is refused."""
    upstream, _ = recorder
    sdk = openai.OpenAI(base_url=kp.base_url, api_key=kp.key, max_retries=0)
    asked: dict[str, Any] = {"model": "whisper-1", "file": ("a.mp3", AUDIO[1]),
                             "response_format": "verbose_json",
                             "timestamp_granularities": ["word", "segment"]}  # fmt: skip
    with sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.audio.transcriptions.create(**asked, extra_body={"response.format": "text"})
        assert caught.value.param == "response.format" and upstream.requests == []
        sdk.audio.transcriptions.create(**asked)
    ((_, _, body),) = upstream.requests
    assert body.count(b'name="timestamp_granularities[]"') == 2
    (record,) = kp.usage(1)
    assert record.model == "whisper-1" and record.audio_seconds == 2


# --- a JSON body sent as another type ---------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=B",
     "application/jsonx", "application/json; charset=latin-1", "application/vnd.api+json"],
)  # fmt: skip
def test_a_json_body_sent_as_another_type_is_refused_as_openai_does(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread], kind: str
) -> None:
    """An upstream could read it as a form, or refuse it otherwise than keyplane billed; OpenAI
    answers it 400 unsupported_content_type."""
    upstream, _ = recorder
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    error = assert_refused(kp, upstream, post(kp, CHAT, body, **{"content-type": kind}))
    assert error["code"] == "unsupported_content_type" and error["param"] is None
    assert error["message"].startswith(f"Unsupported content type: '{kind}'.")


def test_a_json_body_with_no_type_is_forwarded_as_json(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread]
) -> None:
    """With no Content-Type the upstream is told the body is JSON (the body keyplane read as
    JSON); JSON named in any case, in UTF-8, is served and forwarded as named."""
    upstream, _ = recorder
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    for kind, sent in ((None, b"application/json"),
                       ("Application/JSON; charset=UTF-8", b"Application/JSON; charset=UTF-8")):  # fmt: skip
        upstream.requests.clear()
        headers = [("authorization", f"Bearer {kp.key}")]
        if kind is not None:
            headers.append(("content-type", kind))
        resp = kphttp.post(kp.base_url + CHAT, content=body, headers=headers)
        assert resp.status_code == 200, resp.text
        ((_, received_headers, _),) = upstream.requests
        assert received_headers[b"content-type"] == [sent]


# --- two Content-Type headers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "types"),
    [
        (CHAT, b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
         ["application/json", "application/x-www-form-urlencoded"]),
        ("/images/edits", form(IMAGE, field(b"prompt", b"a key")),
         [FORM, "multipart/form-data; boundary=C"]),
    ],
)  # fmt: skip
def test_two_content_type_headers_are_refused(
    kp: Keyplane, recorder: tuple[Recorder, ServerThread], path: str, body: bytes,
    types: list[str],
) -> None:  # fmt: skip
    upstream, _ = recorder
    headers = [("authorization", f"Bearer {kp.key}"), *(("content-type", t) for t in types)]
    resp = kphttp.post(kp.base_url + path, content=body, headers=headers)
    error = assert_refused(kp, upstream, resp)
    assert "more than one Content-Type" in error["message"]
    assert error["param"] == "Content-Type"
