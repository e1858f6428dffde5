"""The input bound a hold counts: every token the upstream may bill for a request's prompt."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.billing.bounds import (
    MAX_FILE_PAGES,
    UnboundedInput,
    cost_bound,
    input_bounds,
    input_token_bound,
)
from keyplane.usage.pricing import Price, PriceTable
from keyplane.usage.tokens import image_estimate

TABLE = PriceTable.load()
OWN = Price("own-model", 0, input_per_m=1)  # an operator's model: no image or context figures


def price(model: str) -> Price:
    found = TABLE.price(model, 2_000_000_000)
    assert found is not None
    return found


def bound(parts: list[Any], on: Price) -> tuple[int, int]:
    """(the bound, the body's length) of a chat request with ``parts`` as its one message."""
    payload = {"model": on.model, "messages": [{"role": "user", "content": parts}]}
    body = orjson.dumps(payload)
    return input_token_bound(len(body), payload, on), len(body)


def test_text_is_bounded_by_the_bodys_bytes() -> None:
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert input_token_bound(90, payload, price("gpt-4o")) == 90


URL = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}}
INLINE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}}


@pytest.mark.parametrize(
    ("model", "per_image"),
    [("gpt-4o-mini", 48_169), ("gpt-4o", 1_445), ("gpt-4.1-nano", 3_779), ("own", 3_000)],
)
def test_each_image_adds_the_most_one_image_costs_on_the_model(model: str, per_image: int) -> None:
    on = OWN if model == "own" else price(model)
    total, length = bound([URL] * 20, on)
    assert total == length + 20 * per_image
    # Inline data counts as an image, not as text: 5,000 bytes of base64 are not 5,000 tokens.
    total, length = bound([INLINE], on)
    assert total == length - len(INLINE["image_url"]["url"]) + per_image  # type: ignore[index]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_image", "image_url": "https://example.com/a.png"},
        {"type": "image", "image": "iVBORw0KGgo="},
        {"image": "iVBORw0KGgo=", "resize": 512},  # an older form with no type, still accepted
        {"type": "text", "text": "x", "image_url": {"url": "https://example.com/a.png"}},
    ],
)
def test_every_form_of_an_image_counts(part: dict[str, Any]) -> None:
    total, _ = bound([part], price("gpt-4o-mini"))
    assert total >= 48_169


@pytest.mark.parametrize(
    "part",
    [
        {"type": "file", "file": {"file_id": "file-abc"}},
        {
            "type": "file",
            "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,"},
        },
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        {"file_id": "file-abc"},
    ],
)
def test_a_file_adds_the_context_window_and_its_pages_as_images(part: dict[str, Any]) -> None:
    mini = price("gpt-4o-mini")
    total, length = bound([part, part], mini)  # OpenAI reads 100 pages a request, all files
    assert total == length + 128_000 + MAX_FILE_PAGES * 48_169
    with pytest.raises(UnboundedInput, match="context_window"):
        bound([part], OWN)


def tiles(base: int, per_tile: int, width: int, height: int) -> int:
    """OpenAI's high-detail tile rule: fit in 2048×2048, shortest side to 768, 512-px tiles."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = 768 / min(width, height)
    if scale < 1:
        width, height = width * scale, height * scale
    return base + per_tile * math.ceil(width / 512) * math.ceil(height / 512)


def patches(multiplier: float, width: int, height: int) -> int:
    """OpenAI's patch rule: 32-px patches, scaled down to at most 1,536, times the multiplier."""
    count = math.ceil(width / 32) * math.ceil(height / 32)
    if count > 1536:
        shrink = math.sqrt(1536 * 32 * 32 / (width * height))
        count = min(1536, math.ceil(width * shrink / 32) * math.ceil(height * shrink / 32))
    return math.ceil(count * multiplier)


RULES = {  # model: its rule (OpenAI's "Calculating costs", images and vision guide)
    "gpt-4o-mini": lambda w, h: tiles(2833, 5667, w, h),
    "gpt-4o": lambda w, h: tiles(85, 170, w, h),
    "gpt-4.1": lambda w, h: max(tiles(85, 170, w, h), patches(1, w, h)),
    "gpt-4.1-mini": lambda w, h: patches(1.62, w, h),
    "gpt-4.1-nano": lambda w, h: patches(2.46, w, h),
    "gpt-5": lambda w, h: tiles(70, 140, w, h),
    "gpt-5-mini": lambda w, h: patches(1.62, w, h),
    "gpt-5-nano": lambda w, h: patches(2.46, w, h),
    "o4-mini": lambda w, h: patches(1.72, w, h),
    "o3": lambda w, h: tiles(75, 150, w, h),
}


@settings(deadline=None)  # (a busy machine is not a failure of the bound)
@given(st.integers(1, 20_000), st.integers(1, 20_000))
def test_the_shipped_image_figures_bound_openais_rules_at_every_size(w: int, h: int) -> None:
    for model, rule in RULES.items():
        assert rule(w, h) <= price(model).image_input_tokens, (model, w, h)  # type: ignore[operator]


@pytest.mark.parametrize("model", sorted(RULES))
def test_an_estimated_image_is_near_what_a_1024_square_costs_on_its_model(model: str) -> None:
    """Billed on estimates (a cut stream), an image counts about what a common one costs on the
    model, not gpt-4o's 765 everywhere: 25,501 on gpt-4o-mini."""
    actual = RULES[model](1024, 1024)
    assert 0.75 * actual <= image_estimate(price(model).image_input_tokens) <= 1.05 * actual


def test_every_vision_model_shipped_has_its_figures() -> None:
    for model in RULES:
        assert price(model).image_input_tokens and price(model).context_window, model


def test_a_responses_input_is_bounded_like_messages() -> None:
    """Images and files in a Responses API ``input`` count as in chat ``messages``; an image part
    naming a file id is an image, not a file; a function call's output parts count too."""
    on = price("gpt-4o")
    image = {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 4000}
    by_file = {"type": "input_image", "file_id": "file-abc"}
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}, image, by_file]},
        {"type": "function_call_output", "call_id": "c1", "output": [by_file]},
        {  # a computer's screenshot: one part, not a list
            "type": "computer_call_output", "call_id": "c2",
            "output": {"type": "computer_screenshot", "image_url": "https://example.com/s.png"},
        },
    ]  # fmt: skip
    payload = {"model": "gpt-4o", "input": items}
    body = len(orjson.dumps(payload))
    expected = body - 4000 - len("data:image/png;base64,") + 4 * on.image_input_tokens  # type: ignore[operator]
    assert input_token_bound(body, payload, on) == expected
    with_file = {**payload, "input": [*items, {"type": "input_file", "file_id": "file-x"}]}
    assert input_token_bound(body, with_file, on) == (
        expected + on.context_window + MAX_FILE_PAGES * on.image_input_tokens  # type: ignore[operator]
    )


def test_a_continued_response_adds_the_context_window_or_is_unbounded() -> None:
    payload = {"model": "gpt-4o", "input": "more", "previous_response_id": "resp_1"}
    on = price("gpt-4o")
    assert input_token_bound(60, payload, on, carried=True) == 60 + on.context_window  # type: ignore[operator]
    with pytest.raises(UnboundedInput) as refused:
        input_token_bound(60, payload, OWN, carried=True)
    assert refused.value.carried and "previous_response_id" in str(refused.value)
    with pytest.raises(UnboundedInput) as files:
        input_token_bound(60, {"input": [{"type": "input_file", "file_id": "f"}]}, OWN)
    assert not files.value.carried


@pytest.mark.parametrize("kind", [[], {}, ["image_url"], {"file": 1}])
def test_a_part_whose_type_is_not_a_string_is_bounded_by_its_keys(kind: Any) -> None:
    """A ``type`` that is an array or an object (unhashable) was a TypeError, a 500: it names no
    known kind, so only the part's keys say whether it is an image or a file."""
    on = price("gpt-4o")
    total, length = bound([{"type": kind, "text": "hi"}], on)
    assert total == length
    total, length = bound([{"type": kind, "image_url": URL["image_url"]}], on)
    assert total == length + 1_445
    with pytest.raises(UnboundedInput):
        bound([{"type": kind, "file_id": "file-abc"}], OWN)


# -- audio (chat's input_audio parts) ----------------------------------------------------------
def audio_part(data: str) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def test_audio_is_bounded_by_the_seconds_its_data_may_play() -> None:
    on = price("gpt-4o-audio-preview")
    data = "A" * 10_000  # base64 of 7,500 bytes: 10 s at 6 kbit/s, 200 tokens
    payload = {"model": on.model, "messages": [{"role": "user", "content": [audio_part(data)]}]}
    body = len(orjson.dumps(payload))
    assert input_bounds(body, payload, on) == (body - 10_000 + 200, 200, 10)
    # Each part at least a second; a short one likely a second at the usual bitrate.
    short = {"messages": [{"role": "user", "content": [audio_part("AAAA"), audio_part("")]}]}
    assert input_bounds(100, short, on)[1:] == (40, 20)
    # Named by its key, whatever its type says (a bound may not miss the upstream's reading).
    odd = {"messages": [{"role": "user", "content": [{"type": 3, "input_audio": "A" * 40}]}]}
    assert input_bounds(100, odd, on) == (100 - 40 + 20, 20, 10)


def test_audio_sent_back_by_id_counts_what_the_model_may_have_written() -> None:
    on = price("gpt-4o-audio-preview")
    messages = [{"role": "assistant", "audio": {"id": "audio_1"}}] * 2
    payload = {"model": on.model, "messages": messages}
    assert input_bounds(500, payload, on) == (500 + 2 * 16_384, 2 * 16_384, 2 * 2_048)
    many = {"messages": [{"role": "assistant", "audio": {"id": "a"}}] * 20}
    assert input_bounds(500, many, on)[1] == 128_000  # at most its context window


def test_a_request_without_audio_has_no_audio_bound() -> None:
    on = price("gpt-4o-audio-preview")
    payload = {"model": on.model, "messages": [{"role": "user", "content": [URL]}]}
    assert input_bounds(300, payload, on)[1:] == (0, 0)


def test_audio_tokens_are_held_at_the_audio_prices() -> None:
    on = price("gpt-4o-audio-preview")  # $2.50 / $10 text, $40 / $80 audio per 1M
    plain = cost_bound(on, 1000, 2)
    assert (plain.fixed, plain.per_output) == (1000 * 2_500_000, 2 * 10_000_000)
    heard = cost_bound(on, 1000, 2, 200)
    assert (heard.fixed, heard.per_output) == (800 * 2_500_000 + 200 * 40_000_000, 2 * 10_000_000)
    speaks = cost_bound(on, 1000, 1, 0, True)
    assert (speaks.fixed, speaks.per_output) == (1000 * 2_500_000, 80_000_000)
