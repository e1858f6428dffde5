"""Image generation through keyplane with the official SDK: held and billed per image, by the
image's quality and size, exactly once."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from test_sdk import _close_clients, client, kp  # noqa: F401

from conftest import Keyplane, start_keyplane
from keyplane.keys.format import key_id, parse
from keyplane.limits.ratelimit import ModelLimits
from kptest import ServerThread, Upstream

CENT = 10_000  # micro-dollars


def test_images_are_billed_by_quality_and_size_and_counted(kp: Keyplane) -> None:
    c = client(kp)
    hd = c.images.generate(
        model="dall-e-3", prompt="a keyplane", size="1792x1024", quality="hd",
        response_format="b64_json",
    )  # fmt: skip
    assert hd.data is not None and base64.b64decode(hd.data[0].b64_json or "").startswith(
        b"\x89PNG"
    )
    three = c.images.generate(model="dall-e-2", prompt="three keys", n=3, size="256x256")
    assert three.data is not None and len(three.data) == 3
    default = c.images.generate(prompt="the default model")  # dall-e-2, 1024x1024
    assert default.data is not None and len(default.data) == 1
    records = sorted(kp.usage(expect=3), key=lambda r: r.cost_micro_usd)
    assert [(r.model, r.images, r.cost_micro_usd) for r in records] == [
        ("dall-e-2", 1, 2 * CENT),
        ("dall-e-2", 3, 3 * 16_000),
        ("dall-e-3", 1, 12 * CENT),
    ]
    assert all(r.endpoint == "images.generations" and r.status == 200 for r in records)
    assert all((r.input_tokens, r.output_tokens) == (0, 0) for r in records)
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.spent == 2 * CENT + 48_000 + 12 * CENT


@pytest.mark.parametrize(
    "asked", [{"quality": "hd"}, {"quality": ""}, {"size": "auto"}, {"model": "gpt-4o-mini"}]
)
def test_an_image_keyplane_has_no_price_for_is_refused_before_forwarding(
    kp: Keyplane, asked: dict[str, Any]
) -> None:
    body = {"model": "dall-e-2", "prompt": "x", **asked}
    with pytest.raises(openai.BadRequestError) as refused:
        client(kp).post("/images/generations", body=body, cast_to=httpx.Response)
    assert refused.value.param == "size" and "no price for" in refused.value.message
    assert kp.usage() == []


def test_images_beyond_the_balance_are_refused_whole(
    tmp_path: Path, simulator: ServerThread
) -> None:
    kp = start_keyplane(tmp_path, simulator.url + "/v1", credit=5 * CENT)
    try:
        c = client(kp)
        with pytest.raises(openai.RateLimitError) as refused:  # 3 × $0.02 > $0.05
            c.images.generate(model="dall-e-2", prompt="x", n=3)
        assert refused.value.code == "insufficient_quota"
        message = refused.value.message
        assert "$0.06 held (every image it asks for" in message and "fewer images (n)" in message
        assert "prompt" not in message
        # n images are held, whatever else the body says (best_of is not an images field).
        c.post(
            "/images/generations", cast_to=httpx.Response,
            body={"model": "dall-e-2", "prompt": "x", "n": 2, "best_of": 7},
        )  # fmt: skip
        with pytest.raises(openai.RateLimitError):  # $0.01 left
            c.images.generate(model="dall-e-2", prompt="x")
        [record] = kp.usage(expect=1)
        assert record.images == 2 and record.cost_micro_usd == 4 * CENT
        assert kp.container.billing.balance(kp.org.id).available == CENT
    finally:
        kp.server.stop()
        kp.container.close()


def test_images_count_against_images_per_minute_limits(kp: Keyplane) -> None:
    parsed = parse(kp.key)
    assert parsed is not None
    kp.container.rate_limit_service.set_key_limits(
        kp.org.id, key_id(parsed.public_id), ModelLimits(images_per_min=2)
    )
    kp.server.call(kp.gateway.pipeline.money.refresh())
    c = client(kp)
    c.images.generate(model="dall-e-3", prompt="x")  # (a model's images count for it alone)
    c.images.generate(model="dall-e-2", prompt="x", n=2)
    with pytest.raises(openai.RateLimitError) as refused:
        c.images.generate(model="dall-e-2", prompt="x")
    assert refused.value.code == "rate_limit_exceeded"
    assert "on images per min (IPM): Limit 2, Used 2, Requested 1" in refused.value.message
    assert sorted(r.images for r in kp.usage(expect=2)) == [1, 2]


class BrokenImages(Upstream):
    """Answers an image generation with JSON that holds no list of images."""

    models = ("dall-e-2",)

    def answer(self, body: dict[str, Any]) -> bytes:
        return orjson.dumps({"created": 1, "data": None})


def test_an_answer_without_images_is_502_and_billed_as_all_made(tmp_path: Path) -> None:
    upstream = ServerThread(BrokenImages()).start()
    kp = start_keyplane(tmp_path, upstream.url + "/v1")
    try:
        with pytest.raises(openai.APIStatusError) as broken:
            client(kp).images.generate(model="dall-e-2", prompt="x", n=2)
        assert broken.value.status_code == 502
        [record] = kp.usage(expect=1)  # the upstream may have made (and billed) them
        assert (record.images, record.cost_micro_usd, record.status) == (2, 4 * CENT, 502)
        assert record.tokens_estimated
    finally:
        kp.server.stop()
        kp.container.close()
        upstream.stop()
