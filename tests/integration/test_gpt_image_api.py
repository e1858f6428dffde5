"""gpt-image-1 through keyplane: priced by tokens, not per image. Held at the worst case its
quality and size allow (and its prompt at a token a byte), billed on the usage its answer reports,
to the micro-dollar; an answer that reports none is billed the hold."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import orjson
import pytest
from test_sdk import _close_clients, client, kp  # noqa: F401

import kphttp
from conftest import Keyplane, Start
from kptest import ServerThread, Upstream

# OpenAI's prices for gpt-image-1, in micro-dollars per 1M tokens, and the output tokens of one
# image by quality and size: written out here, not read from keyplane's price table.
TEXT_IN, IMAGE_IN, IMAGE_OUT = 5_000_000, 10_000_000, 40_000_000
TOKENS = {
    ("low", "1024x1024"): 272, ("low", "1024x1536"): 408, ("low", "1536x1024"): 400,
    ("medium", "1024x1024"): 1056, ("medium", "1024x1536"): 1584, ("medium", "1536x1024"): 1568,
    ("high", "1024x1024"): 4160, ("high", "1024x1536"): 6240, ("high", "1536x1024"): 6208,
}  # fmt: skip


def cost(text: int, image: int, output: int) -> int:
    """Micro-dollars for these tokens, rounded up once."""
    return -(-(text * TEXT_IN + image * IMAGE_IN + output * IMAGE_OUT) // 1_000_000)


def text_tokens(prompt: str) -> int:
    """What the simulator reports for a prompt: a token per four characters, rounded up."""
    return -(-len(prompt) // 4)


def post(kp: Keyplane, body: bytes) -> httpx.Response:
    """The body exactly as given (its length is part of the hold)."""
    return kphttp.post(
        kp.base_url + "/images/generations", content=body,
        headers={"authorization": f"Bearer {kp.key}", "content-type": "application/json"},
    )  # fmt: skip


def test_a_generation_is_billed_from_its_usage_to_the_micro_dollar(kp: Keyplane) -> None:
    c = client(kp)
    prompt = "A lighthouse on a cliff at dusk, in watercolour"
    two = c.images.generate(
        model="gpt-image-1", prompt=prompt, n=2, quality="high", size="1536x1024",
        output_format="webp", background="opaque",
    )  # fmt: skip
    assert two.data is not None and len(two.data) == 2
    assert all(base64.b64decode(d.b64_json or "").startswith(b"\x89PNG") for d in two.data)
    assert two.usage is not None
    assert two.usage.output_tokens == 2 * TOKENS[("high", "1536x1024")]
    assert two.usage.input_tokens == text_tokens(prompt)
    default = c.images.generate(model="gpt-image-1", prompt="a key")  # auto: medium, 1024x1024
    assert default.usage is not None and default.usage.output_tokens == 1056

    records = sorted(kp.usage(expect=2), key=lambda r: r.cost_micro_usd)
    assert [(r.model, r.endpoint, r.status, r.images) for r in records] == [
        ("gpt-image-1", "images.generations", 200, 1),
        ("gpt-image-1", "images.generations", 200, 2),
    ]
    assert [(r.input_tokens, r.output_tokens) for r in records] == [
        (text_tokens("a key"), 1056),
        (text_tokens(prompt), 2 * 6208),
    ]
    assert [r.cost_micro_usd for r in records] == [
        cost(text_tokens("a key"), 0, 1056),
        cost(text_tokens(prompt), 0, 2 * 6208),
    ]
    assert not any(r.tokens_estimated for r in records)
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.spent == sum(r.cost_micro_usd for r in records)


# (quality, size) as sent (None: not sent), and the output tokens one image is held at.
ASKED = [
    (("high", "1024x1536"), 6240),
    ((None, None), 6240),  # both auto (OpenAI's default): the most any image costs
    (("auto", "auto"), 6240),
    (("low", "auto"), 408),  # the largest low-quality size
    (("auto", "1024x1024"), 4160),  # the highest quality at that size
]


@pytest.mark.parametrize(("asked", "per_image"), ASKED)
def test_the_hold_is_the_worst_case_of_the_quality_and_size_asked(
    start: Start, asked: tuple[str | None, str | None], per_image: int
) -> None:
    quality, size = asked
    fields = {"quality": quality, "size": size}
    body = orjson.dumps(
        {"model": "gpt-image-1", "prompt": "three keys on a ring", "n": 3}
        | {k: v for k, v in fields.items() if v is not None}
    )
    # The prompt at a token a byte of the body, and every image at its most.
    worst = len(body) * TEXT_IN // 1_000_000 + 3 * per_image * IMAGE_OUT // 1_000_000

    short = start(credit=worst - 1)
    refused = post(short, body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert short.usage() == []

    enough = start(credit=worst)
    answer = post(enough, body)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    [record] = enough.usage(expect=1)
    assert (record.input_tokens, record.output_tokens) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    assert record.cost_micro_usd == cost(usage["input_tokens"], 0, usage["output_tokens"])
    assert record.cost_micro_usd < worst
    balance = enough.container.billing.balance(enough.org.id)
    assert balance.held == 0 and balance.available == worst - record.cost_micro_usd


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"quality": "ultra"}, "quality"),
        ({"quality": "hd"}, "quality"),  # dall-e-3's, not gpt-image-1's
        ({"quality": "low", "size": "1792x1024"}, "size"),
        ({"size": "999x999"}, "size"),
        ({"quality": 3}, "quality"),
        ({"stream": True, "partial_images": 2}, "stream"),
    ],
)
def test_what_keyplane_cannot_hold_for_is_refused_in_openais_format(
    kp: Keyplane, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "gpt-image-1", "prompt": "x", **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        client(kp).post("/images/generations", body=body, cast_to=httpx.Response)
    assert refused.value.status_code == 400 and refused.value.param == param
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert kp.usage() == []


class ImagesReporting(Upstream):
    """Answers gpt-image-1 with ``n`` images and the ``usage`` it is given (none: no usage)."""

    models = ("gpt-image-1",)

    def __init__(self, usage: Any) -> None:
        super().__init__()
        self.usage = usage

    def answer(self, body: dict[str, Any]) -> bytes:
        images = [{"b64_json": "iVBORw0KGgo="}] * body.get("n", 1)
        answer: dict[str, Any] = {"created": 1, "data": images}
        if self.usage is not None:
            answer["usage"] = self.usage
        return orjson.dumps(answer)


NO_USAGE = [
    None,
    {"input_tokens": 9, "output_tokens": "many"},
    {"input_tokens": -1, "output_tokens": 272},
    {"input_tokens": 9, "output_tokens": 272, "input_tokens_details": {"image_tokens": 1.5}},
]


@pytest.mark.parametrize("usage", NO_USAGE)
def test_an_answer_without_usable_usage_is_billed_the_hold(start: Start, usage: Any) -> None:
    upstream = ServerThread(ImagesReporting(usage)).start()
    try:
        kp = start(credit=5_000_000, upstream=upstream.url + "/v1")
        body = orjson.dumps({"model": "gpt-image-1", "prompt": "x", "n": 2, "quality": "low"})
        answer = post(kp, body)
        assert answer.status_code == 200, answer.text
        [record] = kp.usage(expect=1)
        held = 2 * 408  # low quality, auto size: the largest
        assert record.tokens_estimated and record.images == 2
        assert (record.input_tokens, record.output_tokens) == (len(body), held)
        assert record.cost_micro_usd == cost(len(body), 0, held)
    finally:
        upstream.stop()


def test_image_input_tokens_are_billed_at_the_image_price(start: Start) -> None:
    usage = {
        "total_tokens": 350, "input_tokens": 78, "output_tokens": 272,
        "input_tokens_details": {"text_tokens": 28, "image_tokens": 50},
    }  # fmt: skip
    upstream = ServerThread(ImagesReporting(usage)).start()
    try:
        kp = start(credit=5_000_000, upstream=upstream.url + "/v1")
        c = client(kp)  # (a prompt long enough that its hold covers what the upstream reports)
        prompt = "a key ring " * 20
        c.images.generate(model="gpt-image-1", prompt=prompt, quality="low", size="1024x1024")
        [record] = kp.usage(expect=1)
        assert (record.input_tokens, record.output_tokens, record.images) == (78, 272, 1)
        assert record.cost_micro_usd == cost(28, 50, 272) and not record.tokens_estimated
    finally:
        upstream.stop()


def test_an_answer_without_images_is_502_and_billed_the_hold(start: Start) -> None:
    class NoImages(ImagesReporting):
        def answer(self, body: dict[str, Any]) -> bytes:
            return orjson.dumps({"created": 1, "data": None, "usage": self.usage})

    usage = {"input_tokens": 1, "output_tokens": 0}
    upstream = ServerThread(NoImages(usage)).start()
    try:
        kp = start(credit=5_000_000, upstream=upstream.url + "/v1")
        body = orjson.dumps({"model": "gpt-image-1", "prompt": "x", "quality": "medium"})
        assert post(kp, body).status_code == 502
        [record] = kp.usage(expect=1)
        assert (record.status, record.images, record.output_tokens) == (502, 1, 1584)
        assert record.cost_micro_usd == cost(len(body), 0, 1584) and record.tokens_estimated
    finally:
        upstream.stop()
