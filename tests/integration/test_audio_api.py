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

from conftest import Keyplane, start_keyplane
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
        ({"model": "whisper-1"}, False, "file"),
        ({}, True, "model"),
    ],
)
def test_what_keyplane_cannot_bill_or_read_is_refused(
    kp: Keyplane, data: dict[str, str], files: bool, param: str
) -> None:
    upload = {"file" if files else "attachment": ("a.mp3", b"x" * 1000)}
    r = httpx.post(
        kp.base_url + "/audio/transcriptions", data=data, files=upload,
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    not_a_form = httpx.post(
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
        c.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x" * 104_857))
        [record] = kp.usage(expect=1)
        assert (record.audio_seconds, record.cost_micro_usd) == (7, cost(7))
        assert kp.container.billing.balance(kp.org.id).available == 100_000 - cost(7)
    finally:
        kp.server.stop()
        kp.container.close()


class SilentOnDuration:
    """A speech-to-text server that answers the text only, with no duration (as some do)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":
            body = orjson.dumps({"data": [{"id": "whisper-1"}]})
        else:
            body = orjson.dumps({"text": "hello"})
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
