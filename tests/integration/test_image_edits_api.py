"""Image edits and variations through keyplane with the official SDK: multipart uploads held at
every image asked for (and on gpt-image-1 at the images uploaded too), billed from the answer
exactly once, counted against images-per-minute limits, bad uploads refused before forwarding."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

import base64
import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select, true
from test_sdk import _close_clients, client, kp  # noqa: F401

import kphttp
from conftest import Keyplane, Start, start_keyplane
from keyplane.keys.format import key_id, parse
from keyplane.limits.ratelimit import ModelLimits
from keyplane.simulator.images import PNG_1X1
from keyplane.storage.billing_tables import ledger_entries
from kptest import ServerThread

CENT = 10_000  # micro-dollars
# dall-e-2's prices per image by size, and gpt-image-1's per 1M tokens, in micro-dollars: written
# out here, not read from keyplane's price table.
DALL_E_2 = {"256x256": 16_000, "512x512": 18_000, "1024x1024": 20_000}
TEXT_IN, IMAGE_IN, IMAGE_OUT = 5_000_000, 10_000_000, 40_000_000
HELD_PER_UPLOAD = 6_100  # the image input tokens an uploaded image is held at (its price entry)
TEXT_PER_UPLOAD = 128  # and the text tokens it may add
PNG = ("key.png", PNG_1X1)


def cost(text: int, image: int, output: int) -> int:
    """Micro-dollars for gpt-image-1's tokens, rounded up once."""
    return -(-(text * TEXT_IN + image * IMAGE_IN + output * IMAGE_OUT) // 1_000_000)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The SDK marks variations deprecated (dall-e-2 is retired at OpenAI; upstreams serve it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def post(
    kp: Keyplane, path: str, data: dict[str, Any], files: Any, key: str | None = None
) -> httpx.Response:
    return kphttp.post(
        kp.base_url + path, data=data, files=files,
        headers={"authorization": f"Bearer {key or kp.key}"},
    )  # fmt: skip


def ledger(kp: Keyplane) -> tuple[int, int]:
    """(all the ledger's entries, its usage account's): 0 and what was spent, if each settlement
    was written once."""
    with kp.container.engine.connect() as conn:
        total, usage = (
            conn.execute(
                select(func.coalesce(func.sum(ledger_entries.c.amount_micro), 0)).where(where)
            ).scalar()
            for where in (true(), ledger_entries.c.account == "usage")
        )
    return int(total or 0), int(usage or 0)


def test_dall_e_2_edits_and_variations_are_billed_per_image_once(
    kp: Keyplane, simulator: ServerThread
) -> None:
    c = client(kp)
    edit = c.images.edit(image=PNG, mask=("mask.png", PNG_1X1), prompt="a brass key", n=2,
                         size="256x256")  # fmt: skip
    # Passed on as the upstream answered it (its URLs name the model, size, prompt and images).
    direct = kphttp.post(
        simulator.url + "/v1/images/edits", files={"image": PNG, "mask": ("mask.png", PNG_1X1)},
        data={"prompt": "a brass key", "n": "2", "size": "256x256", "model": "dall-e-2"},
    ).json()  # fmt: skip
    assert edit.data is not None and [d.url for d in edit.data] == [
        d["url"] for d in direct["data"]
    ]
    default = c.images.edit(image=PNG, prompt="the default model")  # dall-e-2, 1024x1024
    assert default.data is not None and len(default.data) == 1
    with quiet():
        varied = c.images.create_variation(
            image=PNG, n=3, size="512x512", response_format="b64_json"
        )
    assert varied.data is not None and len(varied.data) == 3
    assert all(base64.b64decode(d.b64_json or "").startswith(b"\x89PNG") for d in varied.data)

    records = sorted(kp.usage(expect=3), key=lambda r: r.cost_micro_usd)
    assert [(r.endpoint, r.model, r.images, r.cost_micro_usd) for r in records] == [
        ("images.edits", "dall-e-2", 1, DALL_E_2["1024x1024"]),
        ("images.edits", "dall-e-2", 2, 2 * DALL_E_2["256x256"]),
        ("images.variations", "dall-e-2", 3, 3 * DALL_E_2["512x512"]),
    ]
    assert all(r.status == 200 and not r.tokens_estimated for r in records)
    spent = sum(r.cost_micro_usd for r in records)
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.spent == spent
    kp.flush()  # (nothing more to write: each settlement was written once)
    assert len(kp.usage()) == 3 and ledger(kp) == (0, spent)


def test_a_gpt_image_1_edit_is_billed_from_its_usage_to_the_micro_dollar(kp: Keyplane) -> None:
    prompt = "Put these two keys on one ring"
    edit = client(kp).images.edit(
        model="gpt-image-1", image=[("a.png", PNG_1X1), ("b.png", PNG_1X1)], prompt=prompt,
        quality="low", size="1024x1024", input_fidelity="high",
    )  # fmt: skip
    assert edit.data is not None and len(edit.data) == 1 and edit.usage is not None
    details = edit.usage.input_tokens_details
    assert details.image_tokens == 2 * 3_050 and edit.usage.output_tokens == 272
    [record] = kp.usage(expect=1)
    assert (record.endpoint, record.model, record.images) == ("images.edits", "gpt-image-1", 1)
    assert (record.input_tokens, record.output_tokens) == (edit.usage.input_tokens, 272)
    assert record.cost_micro_usd == cost(details.text_tokens, details.image_tokens, 272)
    assert not record.tokens_estimated
    assert ledger(kp) == (0, record.cost_micro_usd)


def test_images_beyond_the_balance_are_refused_whole_before_forwarding(
    tmp_path: Path, simulator: ServerThread
) -> None:
    kp = start_keyplane(tmp_path, simulator.url + "/v1", credit=5 * CENT)
    try:
        c = client(kp)
        with pytest.raises(openai.RateLimitError) as refused:  # 3 × $0.02 > $0.05
            c.images.edit(image=PNG, prompt="x", n=3)
        assert refused.value.code == "insufficient_quota"
        assert "$0.06 held (every image it asks for" in refused.value.message
        assert "fewer images (n)" in refused.value.message
        with quiet(), pytest.raises(openai.RateLimitError):
            c.images.create_variation(image=PNG, n=3)
        assert kp.usage() == []
        c.images.edit(image=PNG, prompt="x", n=2)
        [record] = kp.usage(expect=1)
        assert record.images == 2 and record.cost_micro_usd == 2 * DALL_E_2["1024x1024"]
        assert kp.container.billing.balance(kp.org.id).available == CENT
    finally:
        kp.server.stop()
        kp.container.close()


def test_a_gpt_image_1_edit_holds_the_images_it_uploads(start: Start) -> None:
    fields = {"model": "gpt-image-1", "prompt": "a key", "n": "2", "quality": "low",
              "size": "1024x1024"}  # fmt: skip
    files = [("image[]", PNG), ("image[]", PNG), ("mask", PNG)]
    # Its text fields at a token a byte and each upload's text; each upload at its most; and
    # every image made at its quality and size.
    text = sum(len(v) for v in fields.values()) + 3 * TEXT_PER_UPLOAD
    worst = cost(text, 3 * HELD_PER_UPLOAD, 2 * 272)
    short = start(credit=worst - 1)
    refused = post(short, "/images/edits", fields, files)
    assert refused.status_code == 429, refused.text
    assert "the images it uploads at their most" in refused.json()["error"]["message"]
    assert short.usage() == []

    enough = start(credit=worst)
    answer = post(enough, "/images/edits", fields, files)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    [record] = enough.usage(expect=1)
    assert record.cost_micro_usd == cost(
        usage["input_tokens_details"]["text_tokens"],
        usage["input_tokens_details"]["image_tokens"],
        usage["output_tokens"],
    )
    balance = enough.container.billing.balance(enough.org.id)
    assert balance.held == 0 and balance.available == worst - record.cost_micro_usd


BIG = b"\x89PNG\r\n\x1a\n" + b"\0" * (4 * 1024 * 1024)  # dall-e-2 takes less than 4 MB


EDITS, VARIATIONS, ONE = "/images/edits", "/images/variations", {"image": PNG}
GPT_IMAGE_1 = {"prompt": "x", "model": "gpt-image-1"}


@pytest.mark.parametrize(
    ("path", "data", "files", "status", "param"),
    [
        (EDITS, {"prompt": "x"}, {"attachment": PNG}, 400, "image"),
        (VARIATIONS, {}, None, 400, "image"),
        (EDITS, {}, ONE, 400, "prompt"),
        (EDITS, {"prompt": " "}, ONE, 400, "prompt"),
        (EDITS, {"prompt": "x", "n": "0"}, ONE, 400, "n"),
        (VARIATIONS, {"n": "11"}, ONE, 400, "n"),
        (VARIATIONS, {"n": "two"}, ONE, 400, "n"),
        (EDITS, {"prompt": "x", "model": "dall-e-9"}, ONE, 404, "model"),
        (EDITS, {"prompt": "x", "model": "gpt-4o-mini"}, ONE, 400, "size"),  # (no image price)
        (EDITS, {"prompt": "x", "size": "64x64"}, ONE, 400, "size"),
        (EDITS, {**GPT_IMAGE_1, "quality": "ultra"}, ONE, 400, "quality"),
        (EDITS, {**GPT_IMAGE_1, "stream": "true"}, ONE, 400, "stream"),
        (EDITS, {"prompt": "x"}, {"image": ("big.png", BIG)}, 400, "image"),
        (VARIATIONS, {}, {**ONE, "mask": ("m.png", BIG)}, 400, "mask"),
        (EDITS, GPT_IMAGE_1, [("image[]", PNG)] * 17, 400, "image"),
    ],
)
def test_bad_uploads_are_refused_in_openais_format_and_never_billed(
    kp: Keyplane, path: str, data: dict[str, str], files: Any, status: int, param: str
) -> None:
    r = post(kp, path, data, files or {"unrelated": ("a.txt", b"x")})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"], error
    assert kp.usage() == []


def test_bodies_that_are_no_upload_are_refused(kp: Keyplane) -> None:
    headers = {"authorization": f"Bearer {kp.key}"}
    as_json = kphttp.post(kp.base_url + "/images/edits", json={"prompt": "x"}, headers=headers)
    assert as_json.status_code == 400 and "multipart/form-data" in as_json.text
    cut = b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--b\r\nContent-Dis'
    truncated = kphttp.post(
        kp.base_url + "/images/variations", content=cut,
        headers={**headers, "content-type": "multipart/form-data; boundary=b"},
    )  # fmt: skip
    assert truncated.status_code == 400 and "malformed" in truncated.json()["error"]["message"]
    huge = client(kp).with_options(timeout=60)
    with pytest.raises(openai.APIStatusError) as too_large:  # 50 MB of images, and the form
        huge.images.edit(model="gpt-image-1", image=("big.png", b"\0" * (51 * 1024 * 1024)),
                         prompt="x")  # fmt: skip
    assert too_large.value.status_code == 413 and too_large.value.code == "request_too_large"
    assert kp.usage() == []


def test_a_key_needs_the_images_permission(kp: Keyplane) -> None:
    _, images_only = kp.new_key("images", scopes=["images.write"])
    _, chat_only = kp.new_key("chat", scopes=["chat.write"])
    assert post(kp, "/images/edits", {"prompt": "x"}, {"image": PNG}, images_only).is_success
    with quiet(), pytest.raises(openai.AuthenticationError) as refused:
        client(kp, chat_only).images.create_variation(image=PNG)
    assert "Missing scopes: images.write" in refused.value.message
    assert len(kp.usage(expect=1)) == 1


def test_images_count_against_images_per_minute_limits(kp: Keyplane) -> None:
    parsed = parse(kp.key)
    assert parsed is not None
    kp.container.rate_limit_service.set_key_limits(
        kp.org.id, key_id(parsed.public_id), ModelLimits(images_per_min=2)
    )
    kp.server.call(kp.gateway.pipeline.money.refresh())
    c = client(kp)
    with pytest.raises(openai.RateLimitError) as never:  # more than the limit: never admitted
        c.images.edit(image=PNG, prompt="x", n=3)
    assert never.value.code == "rate_limit_exceeded"
    assert "images per min (IPM): Limit 2" in never.value.message
    c.images.edit(image=PNG, prompt="x", n=2)
    for more in (
        lambda: c.images.create_variation(image=PNG),
        lambda: c.images.generate(model="dall-e-2", prompt="x"),
    ):
        with quiet(), pytest.raises(openai.RateLimitError) as later:
            more()
        assert "images per min (IPM): Limit 2, Used 2, Requested 1" in later.value.message
    assert [r.images for r in kp.usage(expect=1)] == [2]
