"""Chat completions that hear and speak, through keyplane: their audio tokens billed at the audio
prices (OpenAI's are several times the text ones), held at them before the request is forwarded,
and refused on a model that has no audio price rather than billed at its text price."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from test_admin_billing import open_env
from test_sdk import _close_clients, client, kp  # noqa: F401

import kphttp
from conftest import Keyplane, Start
from keyplane import simulator as sim
from keyplane.keys.format import KeyKind
from keyplane.simulator.config import SimulatorConfig
from keyplane.usage.records import UsageRecord
from kptest import ServerThread

# OpenAI's prices (sim-audio's: the simulator's own), in micro-dollars per 1M tokens: text input,
# text output, audio input, audio output. Written out here, not read from keyplane's table.
PRICES = {
    "gpt-4o-audio-preview": (2_500_000, 10_000_000, 40_000_000, 80_000_000),
    "gpt-4o-mini-audio-preview": (150_000, 600_000, 10_000_000, 20_000_000),
    "gpt-audio": (2_500_000, 10_000_000, 32_000_000, 64_000_000),
    "sim-audio": (1_000_000, 2_000_000, 10_000_000, 20_000_000),
}
SPEAK: dict[str, Any] = {
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
}
SECOND = bytes(32_000)  # a second of 16-bit WAV at 16 kHz: 10 audio tokens to the simulator


def cost(model: str, text_in: int, audio_in: int, text_out: int, audio_out: int) -> int:
    """Micro-dollars for these tokens, rounded up once."""
    rates = PRICES[model]
    numerator = (
        text_in * rates[0] + text_out * rates[1] + audio_in * rates[2] + audio_out * rates[3]
    )
    return -(-numerator // 1_000_000)


def said(text: str, audio: bytes = SECOND) -> list[dict[str, Any]]:
    """A user's message: ``text`` and ``audio`` (base64, as OpenAI takes it)."""
    data = base64.b64encode(audio).decode()
    parts = [{"type": "text", "text": text},
             {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]  # fmt: skip
    return [{"role": "user", "content": parts}]


def post(kp: Keyplane, body: dict[str, Any]) -> tuple[httpx.Response, int]:
    """A chat request sent as exactly these bytes (a hold counts them); and their length."""
    content = orjson.dumps(body)
    headers = {"authorization": f"Bearer {kp.key}", "content-type": "application/json"}
    response = kphttp.post(kp.base_url + "/chat/completions", content=content, headers=headers)
    return response, len(content)


@pytest.mark.parametrize("model", sorted(PRICES))
@pytest.mark.parametrize("stream", [False, True])
def test_audio_tokens_are_billed_at_the_audio_prices_to_the_micro_dollar(
    kp: Keyplane, model: str, stream: bool
) -> None:
    messages = said("Say hi")
    text_in = sim.prompt_tokens(messages)  # the text: "Say hi" and the messages' framing
    c = client(kp)
    if stream:
        chunks = list(c.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True},
            **SPEAK,
        ))  # type: ignore[call-overload]  # fmt: skip
        usage = chunks[-1].usage
        audio = [ch.choices[0].delta.audio for ch in chunks if ch.choices]
        transcript = "".join(a.transcript or "" for a in audio if a is not None)
    else:
        answer = c.chat.completions.create(model=model, messages=messages, **SPEAK)
        usage = answer.usage
        assert answer.choices[0].message.audio is not None
        transcript = answer.choices[0].message.audio.transcript
    # The simulator hears 10 tokens in a second of audio and writes 16 tokens: 3 of transcript
    # (text) and 13 of audio.
    assert usage is not None and usage.prompt_tokens_details and usage.completion_tokens_details
    assert (usage.prompt_tokens, usage.prompt_tokens_details.audio_tokens) == (text_in + 10, 10)
    assert (usage.completion_tokens, usage.completion_tokens_details.audio_tokens) == (16, 13)
    assert transcript == sim.completion_text(3)

    [record] = kp.usage(expect=1)
    assert (record.input_tokens, record.output_tokens) == (text_in + 10, 16)
    assert (record.input_audio_tokens, record.output_audio_tokens) == (10, 13)
    assert record.cost_micro_usd == cost(model, text_in, 10, 3, 13)
    assert not record.tokens_estimated
    if model == "gpt-4o-audio-preview":  # 8 x $2.50 + 10 x $40 + 3 x $10 + 13 x $80 per 1M
        assert text_in == 8 and record.cost_micro_usd == 20 + 400 + 30 + 1040
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.spent == record.cost_micro_usd


def test_a_text_chat_on_an_audio_model_costs_the_text_prices(kp: Keyplane) -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    answer = client(kp).chat.completions.create(model="sim-audio", messages=messages)
    assert answer.choices[0].message.content == sim.completion_text(16)
    [record] = kp.usage(expect=1)
    assert (record.input_audio_tokens, record.output_audio_tokens) == (0, 0)
    assert record.cost_micro_usd == cost("sim-audio", sim.prompt_tokens(messages), 0, 16, 0)


def audio_hold(body_bytes: int, audio: bytes, output: int, *, speaks: bool) -> int:
    """What keyplane holds on sim-audio for a body of ``body_bytes`` bytes with one audio part of
    ``audio`` (none: b""): the body's other bytes at a token each at the text price; the most
    seconds the audio's data may play at 6 kbit/s (750 bytes a second), 20 tokens a second, at the
    audio price; ``output`` tokens at the audio output price when it asks for audio, else text."""
    data = len(base64.b64encode(audio)) if audio else 0
    seconds = max(1, -(-len(audio) // 750)) if audio else 0
    heard = seconds * 20
    text_in, _, audio_in, audio_out = PRICES["sim-audio"]
    out_rate = audio_out if speaks else PRICES["sim-audio"][1]
    numerator = (body_bytes - data) * text_in + heard * audio_in + output * out_rate
    return -(-numerator // 1_000_000)


def test_audio_asked_for_is_held_at_the_audio_output_price(start: Start) -> None:
    body = {"model": "sim-audio", "messages": [{"role": "user", "content": "Say hi"}],
            "max_completion_tokens": 16, **SPEAK}  # fmt: skip
    size = len(orjson.dumps(body))
    worst = audio_hold(size, b"", 16, speaks=True)
    as_text = -(-(size * 1_000_000 + 16 * 2_000_000) // 1_000_000)
    assert worst == size + 16 * 20 and as_text == size + 16 * 2

    short = start(credit=worst - 1)  # covers all of it at the text prices, not at the audio ones
    refused, _ = post(short, body)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert short.usage() == [] and short.container.billing.balance(short.org.id).held == 0

    enough = start(credit=worst)
    served, _ = post(enough, body)
    assert served.status_code == 200, served.text
    [record] = enough.usage(expect=1)
    assert record.cost_micro_usd == cost("sim-audio", record.input_tokens, 0, 3, 13) < worst


def test_audio_sent_is_held_by_its_size_at_the_audio_input_price(start: Start) -> None:
    audio = bytes(7_500)  # at most 10 s at 6 kbit/s: 200 tokens held (the simulator hears 3)
    body = {"model": "sim-audio", "messages": said("Hi", audio), "max_tokens": 16}
    size = len(orjson.dumps(body))
    worst = audio_hold(size, audio, 16, speaks=False)
    data = len(base64.b64encode(audio))
    assert worst == size - data + 200 * 10 + 16 * 2
    # (Its base64 counted as text, a token a byte, it would be held at more: 10,000 tokens.)

    short = start(credit=worst - 1)
    refused, _ = post(short, body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert short.usage() == []

    enough = start(credit=worst)
    served, _ = post(enough, body)
    assert served.status_code == 200, served.text
    [record] = enough.usage(expect=1)
    text_in = sim.prompt_tokens(body["messages"])
    assert (record.input_tokens, record.input_audio_tokens) == (text_in + 3, 3)
    assert record.cost_micro_usd == cost("sim-audio", text_in, 3, 16, 0)


@pytest.fixture
def talkative() -> Iterator[ServerThread]:
    """A simulator that writes 1,000 tokens unless capped."""
    server = ServerThread(sim.create_app(SimulatorConfig(completion_tokens=1000))).start()
    yield server
    server.stop()


def test_money_for_part_of_the_audio_lowers_the_output_cap_at_the_audio_price(
    start: Start, talkative: ServerThread
) -> None:
    body = {"model": "sim-audio", "messages": [{"role": "user", "content": "Say hi"}],
            "max_completion_tokens": 1000, **SPEAK}  # fmt: skip
    size = len(orjson.dumps(body))
    # The prompt and 100 tokens at the audio output price: 1,000 at the text price.
    kp = start(credit=size + 100 * 20, upstream=talkative.url + "/v1")
    served, _ = post(kp, body)
    assert served.status_code == 200, served.text
    usage = served.json()["usage"]
    assert usage["completion_tokens"] == 100  # the cap keyplane sent (1,000 asked)
    assert usage["completion_tokens_details"]["audio_tokens"] == 80
    assert served.json()["choices"][0]["finish_reason"] == "length"
    [record] = kp.usage(expect=1)
    assert record.cost_micro_usd == cost("sim-audio", record.input_tokens, 0, 20, 80)
    assert record.cost_micro_usd <= size + 100 * 20


@pytest.mark.parametrize(
    ("extra", "messages", "param"),
    [
        ({}, said("Hi"), "messages"),
        (SPEAK, [{"role": "user", "content": "Hi"}], "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, [{"role": "user", "content": "Hi"}],
         "audio"),
        # An earlier answer's audio sent back by its id: audio the model hears again.
        ({}, [{"role": "user", "content": "Hi"}, {"role": "assistant", "audio": {"id": "audio_1"}},
              {"role": "user", "content": "Again"}], "messages"),
    ],
)  # fmt: skip
def test_audio_on_a_model_with_no_audio_price_is_refused_before_any_hold(
    kp: Keyplane, extra: dict[str, Any], messages: list[dict[str, Any]], param: str
) -> None:
    before = kp.container.billing.balance(kp.org.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client(kp).chat.completions.create(model="gpt-4o-mini", messages=messages, **extra)  # type: ignore[arg-type]
    assert refused.value.status_code == 400
    assert refused.value.param == param and refused.value.code == "unsupported_value"
    assert "no price for audio" in refused.value.message and "gpt-4o-mini" in refused.value.message
    assert kp.usage() == []
    after = kp.container.billing.balance(kp.org.id)
    assert (after.held, after.available) == (0, before.available)


def admin_client(kp: Keyplane) -> openai.OpenAI:
    _, secret = kp.container.keys.create(
        kind=KeyKind.ADMIN, org_id=kp.org.id, project_id=None, name="admin",
        owner_type="user", owner_id=kp.owner.id, created_by=kp.owner.id,
    )  # fmt: skip
    return openai.OpenAI(
        api_key="unused", admin_api_key=secret, base_url=kp.base_url, max_retries=0
    )


def test_the_admin_apis_usage_and_costs_add_up(kp: Keyplane) -> None:
    c = client(kp)
    c.chat.completions.create(model="gpt-4o-audio-preview", messages=said("Hi"), **SPEAK)
    c.chat.completions.create(model="gpt-4o-audio-preview", messages=said("Hello", SECOND * 2))
    c.chat.completions.create(
        model="gpt-4o-audio-preview", messages=[{"role": "user", "content": "Hi"}]
    )
    records: list[UsageRecord] = kp.usage(expect=3)
    assert sorted((r.input_audio_tokens, r.output_audio_tokens) for r in records) == [
        (0, 0), (10, 13), (20, 0),
    ]  # fmt: skip

    admin = admin_client(kp)
    today = int(time.time()) // 86_400 * 86_400
    page = admin.admin.organization.usage.completions(start_time=today, group_by=["model"])
    [result] = [r for bucket in page.data for r in bucket.results]
    assert result.model == "gpt-4o-audio-preview" and result.num_model_requests == 3
    assert (result.input_audio_tokens, result.output_audio_tokens) == (30, 13)
    assert result.input_tokens == sum(r.input_tokens for r in records)
    assert result.output_tokens == sum(r.output_tokens for r in records)
    costs = admin.admin.organization.usage.costs(start_time=today, group_by=["line_item"])
    [line] = [r for bucket in costs.data for r in bucket.results]
    spent = sum(r.cost_micro_usd for r in records)
    assert line.line_item == "gpt-4o-audio-preview"
    assert line.amount is not None and line.amount.value == spent / 1_000_000
    assert kp.container.billing.balance(kp.org.id).spent == spent
    admin.close()


@pytest.mark.anyio
async def test_audio_an_upstream_reports_on_a_model_with_no_audio_price_costs_the_text_prices(
    tmp_path: Path,
) -> None:
    """A text request (nothing to refuse) whose upstream says some of its tokens were audio: the
    model has no audio price, so they cost its text prices, as the hold counted them."""

    def answer(request: httpx.Request) -> httpx.Response:
        usage = {
            "prompt_tokens": 40,
            "completion_tokens": 90,
            "total_tokens": 130,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 25},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 80},
        }
        message = {"role": "assistant", "content": "hi"}
        return httpx.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage,
        })  # fmt: skip

    async with open_env(tmp_path, httpx.MockTransport(answer)) as env:
        body = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 100,
        }
        headers = {"authorization": f"Bearer {env.project_key}"}
        r = await env.client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        await env.gateway.flush()
        [record] = env.container.usage_store.query(env.org.id)
    assert (record.input_audio_tokens, record.output_audio_tokens) == (25, 80)
    assert record.cost_micro_usd == 100 + 900  # 40 and 90 tokens at gpt-4o's $2.50 and $10 per 1M
