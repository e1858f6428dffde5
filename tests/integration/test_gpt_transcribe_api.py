"""gpt-4o-transcribe and gpt-4o-mini-transcribe through keyplane: priced by tokens, not per minute.
Held at the worst case (the whole context window at the audio price, and the whole output), billed
on the usage a json answer reports, to the micro-dollar; an answer that reports none (text) is
billed the hold."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

import warnings
from typing import Any

import httpx
import openai
import orjson
import pytest
from test_sdk import _close_clients, client, kp  # noqa: F401

import kphttp
from conftest import Keyplane, Start
from kptest import ServerThread

# OpenAI's prices, in micro-dollars per 1M tokens (text input, audio input, output), and the
# models' context window and most output tokens: written out here, not read from keyplane's table.
PRICES = {
    "gpt-4o-transcribe": (2_500_000, 6_000_000, 10_000_000),
    "gpt-4o-mini-transcribe": (1_250_000, 3_000_000, 5_000_000),
}
CONTEXT, MAX_OUTPUT = 16_000, 2_000
MODELS = sorted(PRICES)


def cost(model: str, text: int, audio: int, output: int) -> int:
    """Micro-dollars for these tokens, rounded up once."""
    text_in, audio_in, out = PRICES[model]
    return -(-(text * text_in + audio * audio_in + output * out) // 1_000_000)


def hold(model: str) -> int:
    """What a request holds: its whole context window as audio, and its whole output."""
    return cost(model, 0, CONTEXT, MAX_OUTPUT)


def post(kp: Keyplane, path: str, data: dict[str, str]) -> httpx.Response:
    return kphttp.post(
        kp.base_url + path, data=data, files={"file": ("a.mp3", b"x" * 16_000)},
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip


def test_a_transcription_is_billed_from_its_usage_to_the_micro_dollar(kp: Keyplane) -> None:
    c = client(kp)
    plain = c.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.mp3", b"x" * 40_000))
    prompt = "Keyplane, a gateway."
    mini = c.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("b.mp3", b"y" * 16_001), prompt=prompt
    )
    assert plain.text and mini.text
    # The simulator hears 3 s in 40,000 bytes and 2 s in 16,001, 10 audio tokens a second.
    reported = {}
    for model, answer, audio in (("gpt-4o-transcribe", plain, 30), ("gpt-4o-mini-transcribe", mini, 20)):  # fmt: skip
        usage = answer.usage
        assert usage is not None and usage.type == "tokens"
        assert usage.input_token_details is not None
        assert usage.input_token_details.audio_tokens == audio
        text = usage.input_token_details.text_tokens or 0
        assert usage.input_tokens == audio + text and usage.output_tokens > 0
        reported[model] = (usage.input_tokens, text, audio, usage.output_tokens)
    assert reported["gpt-4o-transcribe"][1] == 0
    assert reported["gpt-4o-mini-transcribe"][1] == -(-len(prompt) // 4)

    records = {r.model: r for r in kp.usage(expect=2)}
    for model, (inp, text, audio, out) in reported.items():
        r = records[model]
        assert (r.endpoint, r.status, r.input_tokens, r.output_tokens) == (
            "audio.transcriptions", 200, inp, out,
        )  # fmt: skip
        assert r.cost_micro_usd == cost(model, text, audio, out)
        assert not r.tokens_estimated and r.audio_seconds == 0
    # $6 per 1M audio tokens and $10 per 1M output tokens: 30 x 6 + out x 10, rounded up.
    out = reported["gpt-4o-transcribe"][3]
    assert records["gpt-4o-transcribe"].cost_micro_usd == -(-(30 * 6 + out * 10) // 1)
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0
    assert balance.spent == sum(r.cost_micro_usd for r in records.values())


@pytest.mark.parametrize("model", MODELS)
def test_the_hold_is_the_worst_case_the_model_may_cost(start: Start, model: str) -> None:
    worst = hold(model)
    assert worst == {"gpt-4o-transcribe": 116_000, "gpt-4o-mini-transcribe": 58_000}[model]

    short = start(credit=worst - 1)
    with pytest.raises(openai.RateLimitError) as refused:
        client(short).audio.transcriptions.create(model=model, file=("a.mp3", b"x" * 16_000))
    assert refused.value.code == "insufficient_quota"
    assert f"${worst / 1_000_000:.3f} held" in refused.value.message
    assert "all it may read and write" in refused.value.message
    assert short.usage() == []
    assert short.container.billing.balance(short.org.id).held == 0

    enough = start(credit=worst)
    answer = client(enough).audio.transcriptions.create(model=model, file=("a.mp3", b"x" * 16_000))
    assert answer.usage is not None and answer.usage.type == "tokens"
    [record] = enough.usage(expect=1)
    assert (record.input_tokens, record.output_tokens) == (
        answer.usage.input_tokens,
        answer.usage.output_tokens,
    )
    assert record.cost_micro_usd == cost(model, 0, 10, answer.usage.output_tokens)
    assert 0 < record.cost_micro_usd < worst
    balance = enough.container.billing.balance(enough.org.id)
    assert balance.held == 0 and balance.available == worst - record.cost_micro_usd


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/audio/transcriptions", {"response_format": "verbose_json"}, "response_format"),
        ("/audio/transcriptions", {"response_format": "srt"}, "response_format"),
        ("/audio/transcriptions", {"response_format": "vtt"}, "response_format"),
        ("/audio/transcriptions", {"response_format": "diarized_json"}, "response_format"),
        ("/audio/translations", {}, "model"),  # OpenAI translates with whisper-1 only
    ],
)
@pytest.mark.parametrize("model", MODELS)
def test_what_keyplane_cannot_bill_is_refused_in_openais_format(
    kp: Keyplane, model: str, path: str, fields: dict[str, str], param: str
) -> None:
    r = post(kp, path, {"model": model, **fields})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    if param == "response_format":
        assert "Use 'json'" in error["message"] and fields["response_format"] in error["message"]
    assert kp.usage() == []


def test_translations_still_serve_whisper_1(kp: Keyplane) -> None:
    with warnings.catch_warnings():  # (the SDK marks translations deprecated; OpenAI serves them)
        warnings.simplefilter("ignore", DeprecationWarning)
        client(kp).audio.translations.create(model="whisper-1", file=("a.mp3", b"x" * 16_000))
    [record] = kp.usage(expect=1)
    assert (record.endpoint, record.audio_seconds, record.cost_micro_usd) == (
        "audio.translations", 1, 100,
    )  # fmt: skip


@pytest.mark.parametrize("model", MODELS)
def test_a_text_answer_reports_no_usage_and_is_billed_the_hold(kp: Keyplane, model: str) -> None:
    text = client(kp).audio.transcriptions.create(
        model=model, file=("a.mp3", b"x" * 16_000), response_format="text"
    )
    assert isinstance(text, str) and text
    [record] = kp.usage(expect=1)
    assert record.tokens_estimated and record.status == 200
    assert (record.input_tokens, record.output_tokens) == (CONTEXT, MAX_OUTPUT)
    assert record.cost_micro_usd == hold(model)


class Reporting:
    """A speech-to-text server answering gpt-4o-transcribe with a transcript and the ``usage`` it
    is given (None: no usage)."""

    def __init__(self, usage: Any) -> None:
        self.usage = usage

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":
            body = orjson.dumps({"data": [{"id": "gpt-4o-transcribe"}]})
        else:
            answer: dict[str, Any] = {"text": "hello"}
            if self.usage is not None:
                answer["usage"] = self.usage
            body = orjson.dumps(answer)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


NO_USAGE = [
    None,
    {"type": "duration", "seconds": 3},  # whisper-1's kind: not what the model is priced by
    {"type": "tokens", "input_tokens": 30, "output_tokens": "many"},
    {"type": "tokens", "input_tokens": -1, "output_tokens": 5},
    {"type": "tokens", "input_tokens": 30, "output_tokens": 5,
     "input_token_details": {"audio_tokens": 2.5}},
]  # fmt: skip


@pytest.mark.parametrize("usage", NO_USAGE)
def test_an_answer_without_usable_usage_is_billed_the_hold(start: Start, usage: Any) -> None:
    upstream = ServerThread(Reporting(usage)).start()
    try:
        kp = start(credit=1_000_000, upstream=upstream.url + "/v1")
        answer = client(kp).audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.mp3", b"x" * 16_000)
        )
        assert answer.text == "hello"
        [record] = kp.usage(expect=1)
        assert record.tokens_estimated and record.audio_seconds == 0
        assert (record.input_tokens, record.output_tokens) == (CONTEXT, MAX_OUTPUT)
        assert record.cost_micro_usd == hold("gpt-4o-transcribe") == 116_000
    finally:
        upstream.stop()


@pytest.mark.parametrize(
    ("details", "text", "audio"),
    [
        ({"text_tokens": 20, "audio_tokens": 80}, 20, 80),
        (None, 0, 100),  # no details: all of it counted as audio, the dearer
    ],
)
def test_text_and_audio_input_are_billed_at_their_own_prices(
    start: Start, details: dict[str, int] | None, text: int, audio: int
) -> None:
    usage: dict[str, Any] = {
        "type": "tokens", "input_tokens": 100, "output_tokens": 50, "total_tokens": 150,
    }  # fmt: skip
    if details is not None:
        usage["input_token_details"] = details
    upstream = ServerThread(Reporting(usage)).start()
    try:
        kp = start(credit=1_000_000, upstream=upstream.url + "/v1")
        client(kp).audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.mp3", b"x" * 16_000)
        )
        [record] = kp.usage(expect=1)
        assert (record.input_tokens, record.output_tokens) == (100, 50)
        assert not record.tokens_estimated
        # Text at $2.50, audio at $6, output at $10 per 1M tokens.
        assert record.cost_micro_usd == cost("gpt-4o-transcribe", text, audio, 50)
        assert record.cost_micro_usd == -(-(text * 25 + audio * 60 + 50 * 100) // 10)
    finally:
        upstream.stop()
