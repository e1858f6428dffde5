"""Speech to text through keyplane with the official SDK: held at the longest the file may play,
billed per second of audio the upstream reports, exactly once."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from test_sdk import _close_clients, client, kp  # noqa: F401

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.clock import FrozenClock
from keyplane.limits.ratelimit import ModelLimits
from kptest import ServerThread

WHISPER_PER_MINUTE = 6_000  # micro-dollars: $0.006


def cost(seconds: int) -> int:
    return -(-seconds * WHISPER_PER_MINUTE // 60)


def test_audio_is_billed_by_the_seconds_the_upstream_reports(kp: Keyplane) -> None:
    c = client(kp)
    text = c.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 40_000))
    assert text.text  # the simulator hears 3 s in 40,000 bytes (128 kbit/s)
    with warnings.catch_warnings():  # (the SDK marks translations deprecated; OpenAI serves them)
        warnings.simplefilter("ignore", DeprecationWarning)
        verbose = c.audio.translations.create(
            model="whisper-1", file=("b.mp3", b"y" * 16_001), response_format="verbose_json"
        )
    assert verbose.duration == 2  # type: ignore[attr-defined]
    records = sorted(kp.usage(expect=2), key=lambda r: r.endpoint)
    assert [(r.endpoint, r.model, r.audio_seconds, r.cost_micro_usd) for r in records] == [
        ("audio.transcriptions", "whisper-1", 3, cost(3)),
        ("audio.translations", "whisper-1", 2, cost(2)),
    ]
    assert all(not r.tokens_estimated and r.status == 200 for r in records)
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.spent == cost(3) + cost(2)


def test_a_file_larger_than_json_bodies_may_be_is_taken(kp: Keyplane) -> None:
    """OpenAI takes audio files of up to 25 MB; keyplane's JSON limit is 16 MiB."""
    big = b"z" * (17 * 1024 * 1024)
    client(kp).audio.transcriptions.create(model="whisper-1", file=("big.mp3", big))
    [record] = kp.usage(expect=1)
    assert record.audio_seconds == -(-len(big) // 16_000)


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({"model": "whisper-1", "response_format": "text"}, True, "response_format"),
        ({"model": "whisper-1", "response_format": "srt"}, True, "response_format"),
        ({"model": "whisper-1", "stream": "yes"}, True, "stream"),  # a boolean, or nothing
        ({"model": "whisper-1"}, False, "file"),
        ({}, True, "model"),
        ({"model": "gpt-4o-mini"}, True, "model"),  # priced by tokens: not billable per minute
        ({"model": ["gpt-4o-mini", "whisper-1"]}, True, "model"),  # which one would it serve?
        ({"model": "whisper-1", "file": "x"}, True, "file"),  # a second file, as a field
    ],
)
def test_what_keyplane_cannot_bill_or_read_is_refused(
    kp: Keyplane, data: dict[str, str], files: bool, param: str
) -> None:
    upload = {"file" if files else "attachment": ("a.mp3", b"x" * 1000)}
    r = kphttp.post(
        kp.base_url + "/audio/transcriptions", data=data, files=upload,
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    not_a_form = kphttp.post(
        kp.base_url + "/audio/transcriptions", json={"model": "whisper-1"},
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert not_a_form.status_code == 400 and "multipart/form-data" in not_a_form.text
    assert kp.usage() == []


def test_a_file_is_held_at_the_longest_it_may_play(tmp_path: Path, simulator: ServerThread) -> None:
    """A megabyte may play for 1,399 s at Opus's 6 kbit/s: $0.14 held, more than $0.10 of credit.
    A tenth of it holds $0.014 and is billed what the upstream heard."""
    kp = start_keyplane(tmp_path, simulator.url + "/v1", credit=100_000)
    try:
        c = client(kp)
        with pytest.raises(openai.RateLimitError) as refused:
            c.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 1_048_576))
        assert refused.value.code == "insufficient_quota"
        message = refused.value.message
        assert "(the longest its upload may play" in message and "a shorter recording" in message
        c.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 104_857))
        [record] = kp.usage(expect=1)
        assert (record.audio_seconds, record.cost_micro_usd) == (7, cost(7))
        assert kp.container.billing.balance(kp.org.id).available == 100_000 - cost(7)
    finally:
        kp.server.stop()
        kp.container.close()


class SilentOnDuration:
    """A speech-to-text server that answers the text only, with no duration (as some do)."""

    def answer(self) -> bytes:
        return orjson.dumps({"text": "hello"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":
            body = orjson.dumps({"data": [{"id": "whisper-1"}]})
        else:
            body = self.answer()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def test_an_answer_without_a_duration_is_billed_on_an_estimate(tmp_path: Path) -> None:
    upstream = ServerThread(SilentOnDuration()).start()
    kp = start_keyplane(tmp_path, upstream.url + "/v1")
    try:
        client(kp).audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 48_000))
        [record] = kp.usage(expect=1)
        assert record.tokens_estimated  # 48,000 bytes at 128 kbit/s: 3 s
        assert (record.audio_seconds, record.cost_micro_usd) == (3, cost(3))
    finally:
        kp.server.stop()
        kp.container.close()
        upstream.stop()


def test_form_fields_that_count_outputs_elsewhere_are_forwarded_as_they_are(kp: Keyplane) -> None:
    r = kphttp.post(
        kp.base_url + "/audio/transcriptions",
        data={"model": "whisper-1", "n": "2", "best_of": "3", "max_tokens": "5"},
        files={"file": ("a.mp3", b"x" * 16_000)},
        headers={"authorization": f"Bearer {kp.key}"},
    )
    assert r.status_code == 200, r.text  # (it was a 500: the fields are strings)
    [record] = kp.usage(expect=1)
    assert (record.audio_seconds, record.cost_micro_usd) == (1, cost(1))


def test_an_empty_file_is_billed_the_second_the_upstream_reports(kp: Keyplane) -> None:
    client(kp).audio.transcriptions.create(model="whisper-1", file=("a.mp3", b""))
    [record] = kp.usage(expect=1)
    assert (record.audio_seconds, record.cost_micro_usd) == (1, cost(1))


class Exaggerating(SilentOnDuration):
    """Reports ``seconds`` of audio, however little was sent."""

    def __init__(self, seconds: Any) -> None:
        self.seconds = seconds

    def answer(self) -> bytes:
        return orjson.dumps(
            {"text": "hello", "usage": {"type": "duration", "seconds": self.seconds}}
        )


@pytest.mark.parametrize(
    ("seconds", "billed", "estimated"),
    [
        (10**9, 11, False),  # at most the longest the upload may play (its body at 750 B/s)
        (1e30, 1, True),  # not a duration at all: the estimate (7,500 bytes at 16,000 a second)
        (2**63, 1, True),
    ],
)
def test_a_duration_beyond_what_was_sent_is_billed_at_most_the_hold_and_stored(
    tmp_path: Path, seconds: Any, billed: int, estimated: bool
) -> None:
    """An absurd figure once stopped every later settlement from being stored: it is bounded, and
    the next request is metered as usual."""
    upstream = ServerThread(Exaggerating(seconds)).start()
    kp = start_keyplane(tmp_path, upstream.url + "/v1")
    try:
        c = client(kp)
        for _ in range(2):
            c.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 7_500))
        records = kp.usage(expect=2)
        assert [(r.audio_seconds, r.tokens_estimated) for r in records] == [(billed, estimated)] * 2
        assert all(r.cost_micro_usd == cost(billed) for r in records)
    finally:
        kp.server.stop()
        kp.container.close()
        upstream.stop()


def upload(kp: Keyplane, endpoint: str, audio: bytes) -> httpx.Response:
    return kphttp.post(
        f"{kp.base_url}/audio/{endpoint}", data={"model": "whisper-1"},
        files={"file": ("a.mp3", audio)}, headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip


def test_audio_megabytes_per_minute_count_each_upload_rounded_up(
    tmp_path: Path, simulator: ServerThread
) -> None:
    """A project's limit of 3 audio MB a minute on whisper-1: a transcription of 1.5 MB counts 2,
    so a translation of as much is refused (429, as other limits), and goes through a minute on.
    A file larger than the limit is refused for good."""
    clock = FrozenClock()  # (the next minute comes when the test says so)
    kp = start_keyplane(tmp_path, simulator.url + "/v1", clock=clock)
    try:
        kp.container.rate_limit_service.set_project_limit(
            kp.org.id, kp.project.id, "rl-whisper-1", ModelLimits(audio_mb_per_min=3)
        )
        kp.server.call(kp.gateway.pipeline.money.refresh())
        mb = 1024 * 1024
        first = upload(kp, "transcriptions", b"x" * (mb + mb // 2))
        assert first.status_code == 200, first.text
        refused = upload(kp, "translations", b"y" * (mb + mb // 2))
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
        assert f"in project {kp.project.id} of organization {kp.org.id}" in error["message"]
        assert "on audio megabytes per min: Limit 3, Used 2, Requested 2" in error["message"]
        assert refused.headers["x-keyplane-limit"] == "rate"
        assert 0 < int(refused.headers["retry-after-ms"]) <= 60_000
        assert "x-ratelimit-limit-requests" in refused.headers  # (the tier's RPM)
        assert len(kp.usage(expect=1)) == 1  # refused: never forwarded nor billed
        clock.advance(60)
        again = upload(kp, "translations", b"y" * (mb + mb // 2))
        assert again.status_code == 200, again.text
        assert "x-ratelimit-remaining-requests" in again.headers
        clock.advance(60)
        too_large = upload(kp, "transcriptions", b"z" * (3 * mb + 1))  # 4 MB: never fits
        assert too_large.status_code == 429 and too_large.headers["x-should-retry"] == "false"
        assert "Request too large for whisper-1" in too_large.json()["error"]["message"]
        assert len(kp.usage(expect=2)) == 2
    finally:
        kp.server.stop()
        kp.container.close()
