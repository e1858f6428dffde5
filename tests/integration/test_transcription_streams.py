"""Streamed transcriptions (``stream=true`` on gpt-4o-transcribe and its mini) through keyplane with
the official SDK: their events relayed as they come, held as an unstreamed transcription is, billed
to the micro-dollar on the usage of their last event (``transcript.text.done``), and billed the hold
when that usage never comes (the client left, the upstream broke, it reported none). whisper-1
ignores ``stream``, as at OpenAI."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from test_gpt_transcribe_api import CONTEXT, MAX_OUTPUT, MODELS, cost, hold
from test_sdk import _close_clients, client, kp  # noqa: F401

import kphttp
from conftest import Keyplane, Start
from keyplane import simulator as sim
from keyplane.usage.records import Outcome
from kptest import ServerThread, answer_models, watch_disconnect

AUDIO = ("a.mp3", b"x" * 40_000)  # 3 s to the simulator: 30 audio tokens
DELTA = b'data: {"type":"transcript.text.delta","delta":"Hello "}\n\n'
USAGE = {
    "type": "tokens", "input_tokens": 100, "output_tokens": 50, "total_tokens": 150,
    "input_token_details": {"text_tokens": 20, "audio_tokens": 80},
}  # fmt: skip


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_transcript_is_the_unstreamed_one_billed_the_same(
    kp: Keyplane, model: str
) -> None:
    c = client(kp)
    prompt = "Keyplane, a gateway."
    whole = c.audio.transcriptions.create(model=model, file=AUDIO, prompt=prompt)
    events = list(
        c.audio.transcriptions.create(model=model, file=AUDIO, prompt=prompt, stream=True)
    )

    *deltas, done = events
    assert deltas and all(e.type == "transcript.text.delta" for e in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == done.text == whole.text == sim.transcript_text(3)
    assert done.usage is not None and whole.usage is not None
    assert done.usage.model_dump() == whole.usage.model_dump()

    text = -(-len(prompt) // 4)
    out = done.usage.output_tokens
    assert done.usage.input_tokens == 30 + text
    records = kp.usage(expect=2)
    for record in records:
        assert (record.endpoint, record.status, record.outcome) == (
            "audio.transcriptions", 200, Outcome.COMPLETED,
        )  # fmt: skip
        assert (record.input_tokens, record.output_tokens) == (30 + text, out)
        assert not record.tokens_estimated and record.audio_seconds == 0
        # The prompt's text tokens at the text price, 30 audio tokens at the audio price.
        assert record.cost_micro_usd == cost(model, text, 30, out)
    assert sorted(r.stream for r in records) == [False, True]
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.spent == 2 * cost(model, text, 30, out)


def test_the_cost_is_the_done_events_usage_to_the_micro_dollar(kp: Keyplane) -> None:
    """gpt-4o-transcribe: $2.50 per 1M text tokens, $6 audio, $10 output."""
    stream = client(kp).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("b.mp3", b"y" * 16_001), stream=True
    )
    done = list(stream)[-1]
    assert done.type == "transcript.text.done" and done.usage is not None
    out = done.usage.output_tokens
    assert out == sim.text_tokens(sim.transcript_text(2))
    [record] = kp.usage(expect=1)
    assert record.stream and (record.input_tokens, record.output_tokens) == (20, out)
    assert record.cost_micro_usd == cost("gpt-4o-transcribe", 0, 20, out) == 120 + 10 * out


class Transcriber:
    """A gpt-4o-transcribe upstream streaming ``deltas`` delta events, each when the test opens the
    gate, then (past one more opening) a ``transcript.text.done`` event with ``usage`` (None: no
    usage) and ``data: [DONE]``; or, ``break_after`` deltas in, dying."""

    def __init__(
        self, *, deltas: int = 5, usage: Any = USAGE, break_after: int | None = None
    ) -> None:
        self.deltas, self.usage, self.break_after = deltas, usage, break_after
        self.gate = threading.Semaphore(0)
        self.sent = 0
        self.client_left = threading.Event()  # keyplane closed the upstream connection

    def open_all(self) -> None:
        for _ in range(self.deltas + 1):
            self.gate.release()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":
            await answer_models(send, "gpt-4o-transcribe")
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        watcher = watch_disconnect(receive, self.client_left)
        try:
            for _ in range(self.deltas):
                await asyncio.to_thread(self.gate.acquire)
                if self.break_after is not None and self.sent >= self.break_after:
                    raise RuntimeError("the upstream dies mid-stream")
                self.sent += 1
                await send({"type": "http.response.body", "body": DELTA, "more_body": True})
            await asyncio.to_thread(self.gate.acquire)
            done: dict[str, Any] = {"type": "transcript.text.done", "text": "Hello " * self.deltas}
            if self.usage is not None:
                done["usage"] = self.usage
            last = b"data: " + orjson.dumps(done) + b"\n\ndata: [DONE]\n\n"
            await send({"type": "http.response.body", "body": last})
        finally:
            await asyncio.sleep(0)
            if self.client_left.is_set():
                watcher.cancel()


@pytest.fixture
def transcribing(start: Start) -> Iterator[Any]:
    """Starts keyplane (with credit for several holds) in front of a ``Transcriber``."""
    made: list[tuple[Transcriber, ServerThread]] = []

    def make(upstream: Transcriber) -> Keyplane:
        server = ServerThread(upstream).start()
        made.append((upstream, server))
        return start(credit=1_000_000, upstream=server.url + "/v1")

    yield make
    for upstream, server in made:
        for _ in range(upstream.deltas + 2):
            upstream.gate.release()
        server.stop()


def _stream(kp: Keyplane) -> Any:
    return kphttp.stream(
        "POST", kp.base_url + "/audio/transcriptions",
        data={"model": "gpt-4o-transcribe", "stream": "true"}, files={"file": AUDIO},
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip


def test_each_event_is_relayed_before_the_upstream_sends_the_next(transcribing: Any) -> None:
    upstream = Transcriber()
    kp = transcribing(upstream)
    with _stream(kp) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = resp.iter_raw()
        for i in range(3):
            upstream.gate.release()  # the upstream transcribes exactly one more delta
            assert next(events) == DELTA, f"delta {i} was held back"
            assert upstream.sent == i + 1
        for _ in range(3):
            upstream.gate.release()
        rest = b"".join(events)
    assert rest.count(DELTA) == 2 and rest.endswith(b"data: [DONE]\n\n")
    assert b'"transcript.text.done"' in rest
    [record] = kp.usage(expect=1)
    assert record.stream and record.outcome is Outcome.COMPLETED and not record.tokens_estimated
    assert (record.input_tokens, record.output_tokens) == (100, 50)
    # 20 text tokens at $2.50, 80 audio tokens at $6 and 50 output tokens at $10 per 1M.
    assert record.cost_micro_usd == cost("gpt-4o-transcribe", 20, 80, 50) == 50 + 480 + 500


def test_a_client_that_leaves_mid_stream_is_billed_the_hold(transcribing: Any) -> None:
    """The upstream heard the whole file and may write the whole transcript: the stream's usage
    never came, so the hold is billed (its window of audio, its whole output), as an unanswered
    transcription is."""
    upstream = Transcriber()
    kp = transcribing(upstream)
    stream = client(kp).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=AUDIO, stream=True
    )
    events = iter(stream)
    for _ in range(2):
        upstream.gate.release()
        assert next(events).type == "transcript.text.delta"
    stream.close()
    [record] = kp.usage(expect=1)
    assert record.outcome is Outcome.CLIENT_DISCONNECTED and record.tokens_estimated
    assert (record.input_tokens, record.output_tokens) == (CONTEXT, MAX_OUTPUT)
    assert record.cost_micro_usd == hold("gpt-4o-transcribe") == 116_000
    assert upstream.client_left.wait(10), "keyplane kept reading the upstream"
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.spent == 116_000
    kp.flush()
    assert len(kp.usage()) == 1


def test_an_upstream_that_breaks_before_done_is_reported_and_billed_the_hold(
    transcribing: Any,
) -> None:
    upstream = Transcriber(break_after=2)
    kp = transcribing(upstream)
    upstream.open_all()
    stream = client(kp).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=AUDIO, stream=True
    )
    events = iter(stream)
    assert [next(events).type for _ in range(2)] == ["transcript.text.delta"] * 2
    with pytest.raises(openai.APIError, match="upstream stream broke"):
        next(events)
    [record] = kp.usage(expect=1)
    assert record.outcome is Outcome.UPSTREAM_BROKEN and record.tokens_estimated
    assert (record.input_tokens, record.output_tokens) == (CONTEXT, MAX_OUTPUT)
    assert record.cost_micro_usd == hold("gpt-4o-transcribe")


@pytest.mark.parametrize(
    "usage",
    [None, {"type": "duration", "seconds": 3}, {**USAGE, "output_tokens": -1}],
)
def test_a_done_event_without_usable_usage_is_billed_the_hold(
    transcribing: Any, usage: Any
) -> None:
    upstream = Transcriber(usage=usage)
    kp = transcribing(upstream)
    upstream.open_all()
    events = list(
        client(kp).audio.transcriptions.create(model="gpt-4o-transcribe", file=AUDIO, stream=True)
    )
    assert events[-1].type == "transcript.text.done" and events[-1].text == "Hello " * 5
    [record] = kp.usage(expect=1)
    assert record.outcome is Outcome.COMPLETED and record.tokens_estimated
    assert (record.input_tokens, record.output_tokens) == (CONTEXT, MAX_OUTPUT)
    assert record.cost_micro_usd == hold("gpt-4o-transcribe")


def test_a_stream_is_held_as_the_unstreamed_transcription_is(start: Start) -> None:
    worst = hold("gpt-4o-mini-transcribe")
    short = start(credit=worst - 1)
    with pytest.raises(openai.RateLimitError) as refused:
        client(short).audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=AUDIO, stream=True
        )
    assert refused.value.code == "insufficient_quota"
    assert short.usage() == []
    enough = start(credit=worst)
    done = list(
        client(enough).audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=AUDIO, stream=True
        )
    )[-1]
    assert done.usage is not None
    [record] = enough.usage(expect=1)
    assert record.cost_micro_usd == cost("gpt-4o-mini-transcribe", 0, 30, done.usage.output_tokens)


def test_whisper_1_ignores_stream_as_openai_does(kp: Keyplane) -> None:
    """OpenAI: "Streaming is not supported for the whisper-1 model and will be ignored." The
    answer comes whole, as JSON, billed per second of audio."""
    r = kphttp.post(
        kp.base_url + "/audio/transcriptions", data={"model": "whisper-1", "stream": "true"},
        files={"file": AUDIO}, headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {
        "text": sim.transcript_text(3), "usage": {"type": "duration", "seconds": 3},
    }  # fmt: skip
    # The SDK reads that JSON as a stream with no events, as it does OpenAI's.
    sdk = client(kp).audio.transcriptions.create(model="whisper-1", file=AUDIO, stream=True)
    assert list(sdk) == []
    for record in kp.usage(expect=2):
        assert (record.model, record.audio_seconds, record.stream) == ("whisper-1", 3, False)
        assert record.cost_micro_usd == 300 and not record.tokens_estimated  # $0.006 a minute


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/audio/translations", {"model": "whisper-1", "stream": "true"}),
        ("/audio/transcriptions", {"model": "gpt-4o-transcribe", "stream": "yes"}),
        ("/audio/transcriptions", {"model": "whisper-1", "stream": "on"}),
    ],
)
def test_a_stream_keyplane_cannot_serve_is_refused(
    kp: Keyplane, path: str, fields: dict[str, str]
) -> None:
    r = kphttp.post(
        kp.base_url + path, data=fields, files={"file": AUDIO},
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["type"]) == ("stream", "invalid_request_error")
    assert kp.usage() == []
