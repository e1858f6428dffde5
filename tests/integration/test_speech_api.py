"""Text to speech through keyplane with the official SDK: held and billed per character of the
text it asks to speak, exactly once, and its audio passed on as it arrives."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from test_sdk import _close_clients, client, kp  # noqa: F401

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.keys.format import KeyKind
from keyplane.simulator import speech_audio
from keyplane.usage.records import Outcome
from kptest import ServerThread, Upstream, answer_models, watch_disconnect

TTS_1 = 15  # micro-dollars a character: $15.00 per 1M
TTS_1_HD = 30
DAY = 86400
SAY = {"model": "tts-1", "voice": "alloy", "input": "Hello"}


def test_speech_is_billed_per_character_of_its_input(kp: Keyplane) -> None:
    c = client(kp)
    hello = c.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    assert hello.content == speech_audio("Hello")  # the simulator's audio, byte for byte
    assert hello.response.headers["content-type"] == "audio/mpeg"
    # Characters, not bytes: "Grüße 👋" is 7 characters (and 12 bytes of UTF-8).
    hd = c.audio.speech.create(model="tts-1-hd", voice="nova", input="Grüße 👋")
    assert hd.content == speech_audio("Grüße 👋")
    records = sorted(kp.usage(expect=2), key=lambda r: r.model)
    assert [(r.endpoint, r.model, r.characters, r.cost_micro_usd) for r in records] == [
        ("audio.speech", "tts-1", 5, 5 * TTS_1),
        ("audio.speech", "tts-1-hd", 7, 7 * TTS_1_HD),
    ]
    assert all(r.status == 200 and r.outcome is Outcome.COMPLETED for r in records)
    assert all((r.input_tokens, r.output_tokens, r.tokens_estimated) == (0, 0, False)
               for r in records)  # fmt: skip
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.spent == 75 + 210


def test_the_usage_api_counts_the_characters_spoken(kp: Keyplane) -> None:
    c = client(kp)
    for text in ("Hello", "Hello there"):
        c.audio.speech.create(model="tts-1", voice="alloy", input=text)
    c.audio.speech.create(model="tts-1-hd", voice="alloy", input="Hi")
    c.embeddings.create(model="text-embedding-3-small", input="not speech")
    records = kp.usage(expect=4)
    _, admin = kp.container.keys.create(
        kind=KeyKind.ADMIN, org_id=kp.org.id, project_id=None, name="admin", owner_type="user",
        owner_id=kp.owner.id, created_by=kp.owner.id,
    )  # fmt: skip
    # From the day of the first request as stored (the wall clock's "today" may be the next).
    since = min(r.created_at for r in records) // DAY * DAY
    r = kphttp.get(
        f"{kp.server.url}/v1/organization/usage/audio_speeches",
        params={"start_time": since, "group_by": "model"},
        headers={"authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 200, r.text
    results = [x for b in r.json()["data"] for x in b["results"]]
    assert all(
        x.keys() == {"object", "characters", "num_model_requests", "project_id", "user_id",
                     "api_key_id", "model"}
        and x["object"] == "organization.usage.audio_speeches.result"
        and x["project_id"] is x["user_id"] is x["api_key_id"] is None
        for x in results
    )  # fmt: skip
    # Summed over the days: midnight may have fallen among the requests, one result a day then.
    spoken: dict[str, tuple[int, int]] = {}
    for x in results:
        chars, requests = spoken.get(x["model"], (0, 0))
        spoken[x["model"]] = (chars + x["characters"], requests + x["num_model_requests"])
    assert spoken == {"tts-1": (16, 2), "tts-1-hd": (2, 1)}


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"input": None}, "input"),
        ({"input": 42}, "input"),
        ({"input": ["Hello", "world"]}, "input"),
        ({"input": {"text": "Hello"}}, "input"),
        ({"model": "gpt-4o-mini"}, "model"),  # priced by tokens: nothing to bill per character
        ({"model": "whisper-1"}, "model"),  # priced per audio minute
    ],
)
def test_what_keyplane_cannot_bill_is_refused_before_forwarding(
    kp: Keyplane, changes: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(kp).post("/audio/speech", body={**SAY, **changes}, cast_to=httpx.Response)
    assert refused.value.param == param, refused.value.message
    if param == "model":
        assert refused.value.code == "unsupported_value"
    missing = {k: v for k, v in SAY.items() if k != "input"}
    with pytest.raises(openai.BadRequestError) as no_input:
        client(kp).post("/audio/speech", body=missing, cast_to=httpx.Response)
    assert no_input.value.param == "input"
    assert kp.usage() == []  # nothing was forwarded, nothing billed


def test_a_model_an_operator_prices_by_tokens_is_refused(
    tmp_path: Path, simulator: ServerThread
) -> None:
    """The binary answer reports no usage: a model priced by tokens only could not be billed."""
    by_tokens = tmp_path / "tokens.toml"
    by_tokens.write_text(
        '[[price]]\nmodel = "tts-1"\neffective_from = "2025-01-01"\ninput = "0.60"\n'
        'output = "12.00"\n'
    )
    kp = start_keyplane(tmp_path, simulator.url + "/v1", price_files=[by_tokens])
    try:
        with pytest.raises(openai.BadRequestError) as refused:
            client(kp).audio.speech.create(model="tts-1", voice="alloy", input="Hello")
        assert (refused.value.param, refused.value.code) == ("model", "unsupported_value")
        assert "per character" in refused.value.message
        assert kp.usage() == []
    finally:
        kp.server.stop()
        kp.container.close()


def test_a_key_without_the_audio_permission_is_refused(kp: Keyplane) -> None:
    _, chat_only = kp.new_key("chat only", scopes=["chat.write"])
    with pytest.raises(openai.AuthenticationError) as refused:
        client(kp, chat_only).audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    assert "Missing scopes: audio.write" in refused.value.message
    _, reader = kp.new_key("audio reader", scopes=["audio.read"])
    with pytest.raises(openai.AuthenticationError):  # speaking is a write
        client(kp, reader).audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    _, speaker = kp.new_key("speaker", scopes=["audio.write"])
    client(kp, speaker).audio.speech.create(model="tts-1", voice="alloy", input="Hello")
    [record] = kp.usage(expect=1)
    assert (record.characters, record.cost_micro_usd) == (5, 75)


def test_speech_beyond_the_balance_is_refused_and_the_hold_is_exact(
    tmp_path: Path, simulator: ServerThread
) -> None:
    """90 micro-dollars pay for exactly 6 characters of tts-1: 7 are refused, 6 are spoken."""
    kp = start_keyplane(tmp_path, simulator.url + "/v1", credit=90)
    try:
        c = client(kp)
        with pytest.raises(openai.RateLimitError) as refused:
            c.audio.speech.create(model="tts-1", voice="alloy", input="x" * 7)
        assert refused.value.code == "insufficient_quota"
        c.audio.speech.create(model="tts-1", voice="alloy", input="x" * 6)
        [record] = kp.usage(expect=1)
        assert (record.characters, record.cost_micro_usd) == (6, 90)
        balance = kp.container.billing.balance(kp.org.id)
        assert (balance.available, balance.held, balance.spent) == (0, 0, 90)
    finally:
        kp.server.stop()
        kp.container.close()


def test_an_upstream_error_is_passed_on_and_billed_nothing(kp: Keyplane) -> None:
    with pytest.raises(openai.BadRequestError) as refused:  # the simulator knows no such voice
        client(kp).audio.speech.create(model="tts-1", voice="nobody", input="Hello")
    assert refused.value.param == "voice"
    [record] = kp.usage(expect=1)
    assert (record.status, record.characters, record.cost_micro_usd) == (400, 0, 0)


HEADER = b"ID3\x04\x00\x00\x00\x00\x00\x00"
REST = bytes(range(256)) * 8


class Speaker:
    """A text-to-speech upstream that sends the first piece of its audio at once and the rest only
    when the test releases it (or, ``breaks``, breaks off then; or, ``silent``, sends nothing
    until then)."""

    def __init__(self, *, breaks: bool = False, silent: bool = False) -> None:
        self.released = threading.Event()
        self.client_left = threading.Event()  # keyplane closed the upstream connection
        self.rest_sent = False
        self.breaks, self.silent = breaks, silent

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":
            await answer_models(send, "tts-1")
            return
        watcher = watch_disconnect(receive, self.client_left)
        try:
            if self.silent:
                await asyncio.to_thread(self.released.wait, 10)
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"audio/mpeg")]})  # fmt: skip
            await send({"type": "http.response.body", "body": HEADER, "more_body": True})
            await asyncio.to_thread(self.released.wait, 10)
            if self.breaks:
                raise RuntimeError("the upstream dies mid-audio")
            self.rest_sent = True
            await send({"type": "http.response.body", "body": REST, "more_body": False})
        finally:
            watcher.cancel()


@contextlib.contextmanager
def behind(tmp_path: Path, upstream: Any, **options: Any) -> Iterator[Keyplane]:
    """keyplane in front of ``upstream``, served on sockets, both stopped afterwards."""
    server = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, server.url + "/v1", **options)
    try:
        yield kp
    finally:
        if isinstance(upstream, Speaker):
            upstream.released.set()
        kp.server.stop()
        server.stop()
        kp.container.close()


def _say(kp: Keyplane) -> Any:
    return kphttp.stream(
        "POST", kp.base_url + "/audio/speech", json=SAY,
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip


def test_audio_reaches_the_client_before_the_upstream_has_sent_it_all(tmp_path: Path) -> None:
    """What TTS users play while it is generated (the SDK's with_streaming_response)."""
    upstream = Speaker()
    with behind(tmp_path, upstream) as kp:
        speech = client(kp).audio.speech.with_streaming_response
        with speech.create(model="tts-1", voice="alloy", input="Hello") as response:
            assert response.headers["content-type"] == "audio/mpeg"
            chunks = response.iter_bytes()
            first = next(chunks)
            assert first == HEADER and not upstream.rest_sent
            upstream.released.set()
            assert first + b"".join(chunks) == HEADER + REST
        [record] = kp.usage(expect=1)
        assert (record.characters, record.cost_micro_usd, record.outcome) == (
            5, 75, Outcome.COMPLETED,
        )  # fmt: skip


def test_a_client_that_stops_listening_is_billed_the_characters(tmp_path: Path) -> None:
    """As OpenAI bills the input whether or not the client reads all the audio; keyplane stops
    reading the upstream at once."""
    upstream = Speaker()
    with behind(tmp_path, upstream) as kp:
        with _say(kp) as response:
            assert next(response.iter_raw()) == HEADER
        [record] = kp.usage(expect=1)
        assert record.outcome is Outcome.CLIENT_DISCONNECTED
        assert (record.characters, record.cost_micro_usd) == (5, 75)
        assert upstream.client_left.wait(10), "keyplane kept reading the upstream"
        assert not upstream.rest_sent


def test_audio_that_breaks_off_is_cut_short_for_the_client_and_billed(tmp_path: Path) -> None:
    """Audio has no in-band error: the client's answer ends without its last chunk, so no client
    takes a truncated file for a whole one."""
    upstream = Speaker(breaks=True)
    with behind(tmp_path, upstream) as kp:
        with _say(kp) as response:
            chunks = response.iter_raw()
            assert next(chunks) == HEADER
            upstream.released.set()
            with pytest.raises(httpx.RemoteProtocolError):
                next(chunks)
        [record] = kp.usage(expect=1)
        assert record.outcome is Outcome.UPSTREAM_BROKEN
        assert (record.characters, record.cost_micro_usd) == (5, 75)


def test_an_upstream_that_never_answers_is_billed_the_characters(tmp_path: Path) -> None:
    """It received the text and may be speaking it (and billing it) still."""
    upstream = Speaker(silent=True)
    with behind(tmp_path, upstream, upstream_read_timeout_s=0.5) as kp:
        with pytest.raises(openai.APIStatusError) as timed_out:
            client(kp).audio.speech.create(model="tts-1", voice="alloy", input="Hello")
        assert timed_out.value.status_code == 504
        [record] = kp.usage(expect=1)
        assert (record.status, record.characters, record.cost_micro_usd) == (504, 5, 75)
        assert record.tokens_estimated


class JsonSpeaker(Upstream):
    """Answers 200 with JSON instead of audio."""

    models = ("tts-1",)

    def answer(self, body: dict[str, Any]) -> bytes:
        return orjson.dumps({"note": "no audio today"})


def test_json_instead_of_audio_is_passed_on_and_billed(tmp_path: Path) -> None:
    with behind(tmp_path, JsonSpeaker()) as kp:
        r = kphttp.post(
            kp.base_url + "/audio/speech", json=SAY, headers={"authorization": f"Bearer {kp.key}"}
        )
        assert r.status_code == 200 and r.json() == {"note": "no audio today"}
        assert r.headers["content-type"] == "application/json"
        [record] = kp.usage(expect=1)
        assert (record.characters, record.cost_micro_usd) == (5, 75)
