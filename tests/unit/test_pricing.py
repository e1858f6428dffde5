"""The price table and request costs in integer micro-dollars, checked against exact fractions."""

from __future__ import annotations

import datetime as dt
import math
import random
import tomllib
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.usage.pricing import PriceTable, parse_dollars

NOW = 1_800_000_000  # 2027-01-15, after every shipped effective date


def ts(day: str, time: str = "00:00:00") -> int:
    return int(dt.datetime.fromisoformat(f"{day}T{time}+00:00").timestamp())


def shipped_rates() -> dict[str, tuple[Fraction, Fraction, Fraction]]:
    """model -> dollars per 1M (input, cached input, output), read straight from the TOML."""
    text = resources.files("keyplane.usage").joinpath("prices.toml").read_text()
    latest: dict[str, dict[str, Any]] = {}
    for entry in tomllib.loads(text)["price"]:
        prev = latest.get(entry["model"])
        if prev is None or str(entry["effective_from"]) >= str(prev["effective_from"]):
            latest[entry["model"]] = entry
    rates = {}
    for model, e in latest.items():
        inp = Fraction(e.get("input", "0"))
        rates[model] = (
            inp,
            Fraction(e.get("cached_input", e.get("input", "0"))),
            Fraction(e.get("output", "0")),
        )
    return rates


RATES = shipped_rates()
TABLE = PriceTable.load()


def exact_cost(model: str, inp: int, cached: int, out: int) -> Fraction:
    """Exact cost in micro-dollars (dollars per 1M tokens == micro-dollars per token)."""
    rate_in, rate_cached, rate_out = RATES[model]
    cached = min(cached, inp)
    return (inp - cached) * rate_in + cached * rate_cached + out * rate_out


@pytest.fixture
def table() -> PriceTable:
    return TABLE


def write_prices(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(body)
    return path


def test_shipped_table_loads_every_model(table: PriceTable) -> None:
    assert set(table.models()) == set(RATES)
    assert "gpt-4o-mini" in table.models()


def test_gpt_4o_mini_price(table: PriceTable) -> None:
    price = table.price("gpt-4o-mini", NOW)
    assert price is not None
    assert (price.input_per_m, price.cached_input_per_m, price.output_per_m) == (
        150_000,
        75_000,
        600_000,
    )


@pytest.mark.parametrize(
    ("model", "inp", "cached", "out", "micros"),
    [
        ("gpt-4o-mini", 7, 0, 16, 11),  # ceil((7*150000 + 16*600000) / 1e6)
        ("gpt-4o-mini", 1, 0, 1, 1),  # 0.15 + 0.6 = 0.75: rounded up once, not twice
        ("gpt-4o-mini", 1_000_000, 0, 0, 150_000),
        ("gpt-4o", 1_000_000, 0, 1_000_000, 12_500_000),
        ("gpt-4o-mini", 1000, 1000, 0, 75),  # all cached: half price
        ("gpt-4o-mini", 1000, 400, 0, 120),  # 600*0.15 + 400*0.075
        ("gpt-4o-mini", 1000, 5000, 0, 75),  # cached never exceeds input
        ("gpt-3.5-turbo", 1000, 1000, 0, 500),  # no cached rate: charged at the input rate
        ("gpt-4o-mini", 0, 0, 0, 0),
    ],
)
def test_exact_costs(
    table: PriceTable, model: str, inp: int, cached: int, out: int, micros: int
) -> None:
    price = table.price(model, NOW)
    assert price is not None
    cost = price.token_cost(inp, cached, out)
    assert type(cost) is int
    assert cost == micros


@settings(max_examples=500, deadline=None, database=None)
@given(
    model=st.sampled_from(sorted(RATES)),
    inp=st.integers(0, 10**9),
    cached=st.integers(0, 2 * 10**9),
    out=st.integers(0, 10**9),
)
def test_cost_is_the_exact_cost_rounded_up_once(
    model: str, inp: int, cached: int, out: int
) -> None:
    price = TABLE.price(model, NOW)
    assert price is not None
    cost = price.token_cost(inp, cached, out)
    assert type(cost) is int
    assert cost == math.ceil(exact_cost(model, inp, cached, out))
    assert cost <= price.token_cost(inp, 0, out)  # caching never costs more


def test_many_charges_sum_exactly_in_integers() -> None:
    rng = random.Random(1234)
    models = sorted(RATES)
    prices = {m: TABLE.price(m, NOW) for m in models}
    total = 0
    exact_total = Fraction(0)
    for _ in range(10**5):
        model = rng.choice(models)
        inp, out = rng.randrange(50_000), rng.randrange(5_000)
        cached = rng.randrange(inp + 1)
        price = prices[model]
        assert price is not None
        total += price.token_cost(inp, cached, out)
        exact_total += math.ceil(exact_cost(model, inp, cached, out))
    assert type(total) is int
    assert total == exact_total


def test_dated_snapshot_falls_back_to_its_base_model(table: PriceTable) -> None:
    assert table.price("gpt-4o-mini-2024-07-18", NOW) == table.price("gpt-4o-mini", NOW)
    assert table.price("gpt-4o-2024-08-06", NOW) == table.price("gpt-4o", NOW)
    # ... unless listed: the first gpt-4o snapshot costs twice as much per input token.
    first = table.price("gpt-4o-2024-05-13", NOW)
    assert first is not None and first.token_cost(1_000_000, 0, 1_000_000) == 20_000_000


@pytest.mark.parametrize("model", ["no-such-model", "gpt-4o-mini-latest", "no-such-2024-07-18", ""])
def test_unknown_model_has_no_price(table: PriceTable, model: str) -> None:
    assert table.price(model, NOW) is None


def test_effective_dates_pick_the_price_in_force(tmp_path: Path) -> None:
    path = write_prices(
        tmp_path,
        """
[[price]]
model = "acme-chat"
effective_from = "2025-01-01"
input = "1.00"
output = "2.00"

[[price]]
model = "acme-chat"
effective_from = 2025-06-01
input = "0.50"
output = "1.00"
""",
    )
    table = PriceTable.load([path])
    assert table.price("acme-chat", ts("2024-12-31", "23:59:59")) is None
    before = table.price("acme-chat", ts("2025-05-31", "23:59:59"))
    after = table.price("acme-chat", ts("2025-06-01"))
    assert before is not None
    assert after is not None
    assert (before.input_per_m, before.output_per_m) == (1_000_000, 2_000_000)
    assert (after.input_per_m, after.output_per_m) == (500_000, 1_000_000)
    assert table.price("acme-chat-2025-07-01", ts("2025-07-01")) == after


def test_operator_file_overrides_a_shipped_entry(tmp_path: Path) -> None:
    path = write_prices(
        tmp_path,
        '[[price]]\nmodel = "gpt-4o-mini"\neffective_from = "2024-07-18"\ninput = "0.20"\n',
    )
    price = PriceTable.load([path]).price("gpt-4o-mini", NOW)
    assert price is not None
    assert (price.input_per_m, price.output_per_m) == (200_000, 0)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("input = 0.15", "strings"),
        ('input = "-0.01"', "negative"),
        ('input = "0.0000001"', "finer than a micro-dollar"),
        ('input = "cheap"', "not a decimal"),
        ('inptu = "0.15"', "unknown fields"),
    ],
)
def test_bad_entries_are_refused(tmp_path: Path, line: str, match: str) -> None:
    path = write_prices(
        tmp_path, f'[[price]]\nmodel = "acme"\neffective_from = "2025-01-01"\n{line}\n'
    )
    with pytest.raises(ValueError, match=match) as info:
        PriceTable.load([path])
    assert "acme" in str(info.value)


def test_entry_without_a_date_is_refused(tmp_path: Path) -> None:
    path = write_prices(tmp_path, '[[price]]\nmodel = "acme"\ninput = "1"\n')
    with pytest.raises(ValueError, match="effective_from"):
        PriceTable.load([path])


@pytest.mark.parametrize(
    ("value", "micros"), [("0.15", 150_000), ("0.000001", 1), ("10", 10_000_000), ("0", 0)]
)
def test_parse_dollars_is_exact(value: str, micros: int) -> None:
    assert parse_dollars(value, "here") == micros


@pytest.mark.parametrize("value", [0.15, 1, None, "-1", "1e-9", "0.0000015"])
def test_parse_dollars_refuses_non_strings_negatives_and_sub_micros(value: Any) -> None:
    with pytest.raises(ValueError, match="here"):
        parse_dollars(value, "here")


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_parse_dollars_refuses_nan_and_infinity_with_value_error(value: str) -> None:
    with pytest.raises(ValueError, match="here"):
        parse_dollars(value, "here")


@pytest.mark.parametrize(
    ("model", "per_million_in_and_out"),
    [("gpt-3.5-turbo-instruct", 3_500_000), ("davinci-002", 4_000_000), ("babbage-002", 800_000)],
)
def test_the_legacy_completions_models_are_priced(model: str, per_million_in_and_out: int) -> None:
    """/v1/completions serves these at OpenAI; unpriced, keyplane would refuse every one."""
    price = PriceTable.load().price(model, 1_800_000_000)
    assert price is not None and price.context_window
    assert price.token_cost(1_000_000, 0, 1_000_000) == per_million_in_and_out


def test_images_are_priced_by_quality_and_size(table: PriceTable, tmp_path: Path) -> None:
    dalle3 = table.price("dall-e-3", NOW)
    assert dalle3 is not None
    assert dalle3.image_price("standard", "1024x1024") == 40_000
    assert dalle3.image_price("hd", "1792x1024") == 120_000
    assert dalle3.image_price("hd", "256x256") is None  # not listed: no price, refused
    # One price for every image when the price does not vary.
    flat = write_prices(
        tmp_path, '[[price]]\nmodel = "my-painter"\neffective_from = "2024-01-01"\nimage = "0.05"\n'
    )
    painter = PriceTable.load([flat]).price("my-painter", NOW)
    assert painter is not None and painter.image_price("hd", "any") == 50_000
    assert table.price("gpt-4o", NOW).image_price("standard", "1024x1024") is None  # type: ignore[union-attr]
    bad = write_prices(
        tmp_path,
        '[[price]]\nmodel = "x"\neffective_from = "2024-01-01"\n[price.images]\n"1024" = "0.1"\n',
    )
    with pytest.raises(ValueError, match="quality"):
        PriceTable.load([bad])


def test_speech_is_priced_per_character_rounded_up_once(table: PriceTable, tmp_path: Path) -> None:
    tts, hd = table.price("tts-1", NOW), table.price("tts-1-hd", NOW)
    assert tts is not None and hd is not None
    assert (tts.characters_per_m, hd.characters_per_m) == (15_000_000, 30_000_000)
    assert [tts.character_cost(n) for n in (0, 1, 5, 1_000_000)] == [0, 15, 75, 15_000_000]
    assert tts.charges and tts.token_cost(1_000, 0, 1_000) == 0  # per character only
    # Rounded up once, not per character: 3 characters at $0.10 per 1M are 0.3 µ$, billed 1.
    cheap = write_prices(
        tmp_path,
        '[[price]]\nmodel = "my-voice"\neffective_from = "2024-01-01"\ncharacters = "0.10"\n',
    )
    voice = PriceTable.load([cheap]).price("my-voice", NOW)
    assert voice is not None
    assert [voice.character_cost(n) for n in (3, 10, 11)] == [1, 1, 2]
    free = write_prices(
        tmp_path, '[[price]]\nmodel = "free-voice"\neffective_from = "2024-01-01"\ninput = "0"\n'
    )
    assert not PriceTable.load([free]).price("free-voice", NOW).charges  # type: ignore[union-attr]
    assert table.price("whisper-1", NOW).charges  # type: ignore[union-attr]


def test_gpt_image_1_is_priced_by_tokens(table: PriceTable, tmp_path: Path) -> None:
    price = table.price("gpt-image-1", NOW)
    assert price is not None and price.charges
    assert (price.input_per_m, price.image_input_per_m, price.image_output_per_m) == (
        5_000_000, 10_000_000, 40_000_000,
    )  # fmt: skip
    assert price.image_price("high", "1024x1024") is None  # not per image
    assert price.image_tokens("low", "1024x1024") == 272
    assert price.image_tokens("high", "1536x1024") == 6208
    # "auto" is the upstream's choice: the most any listed image may cost.
    assert price.image_tokens("auto", "auto") == 6240
    assert price.image_tokens("medium", "auto") == 1584
    assert price.image_tokens("auto", "1024x1024") == 4160
    assert price.image_tokens("ultra", "1024x1024") is None
    assert price.image_tokens("high", "1792x1024") is None
    # Text at $5, image input at $10, output at $40 per 1M, rounded up once.
    assert price.image_token_cost(28 + 50, 50, 272) == 28 * 5 + 50 * 10 + 272 * 40
    assert price.image_token_cost(3, 0, 0) == 15
    cheap = write_prices(
        tmp_path,
        '[[price]]\nmodel = "my-painter"\neffective_from = "2024-01-01"\ninput = "0.10"\n'
        'image_output = "0.10"\n[price.tokens_per_image]\n"any/1x1" = 1\n',
    )
    painter = PriceTable.load([cheap]).price("my-painter", NOW)
    assert painter is not None
    assert [painter.image_token_cost(n, 0, n) for n in (1, 5, 6)] == [1, 1, 2]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ('[price.tokens_per_image]\n"1024x1024" = 272\n', "tokens_per_image"),
        ('[price.tokens_per_image]\n"low/1024x1024" = "272"\n', "tokens_per_image"),
        ('[price.tokens_per_image]\n"low/1024x1024" = 0\n', "tokens_per_image"),
        ('[price.tokens_per_image]\n"auto/1024x1024" = 9\n', "tokens_per_image"),
        ("image_output = 40\n", "strings"),
        (
            '[price.images]\n"low/1x1" = "0.1"\n[price.tokens_per_image]\n"low/1x1" = 9\n',
            "not both",
        ),
    ],
)
def test_bad_image_token_entries_are_refused(tmp_path: Path, lines: str, match: str) -> None:
    path = write_prices(
        tmp_path, f'[[price]]\nmodel = "acme"\neffective_from = "2025-01-01"\n{lines}'
    )
    with pytest.raises(ValueError, match=match) as info:
        PriceTable.load([path])
    assert "acme" in str(info.value)


@pytest.mark.parametrize(
    ("model", "rates"),
    [
        ("gpt-4o-transcribe", (2_500_000, 6_000_000, 10_000_000)),
        ("gpt-4o-mini-transcribe", (1_250_000, 3_000_000, 5_000_000)),
    ],
)
def test_transcription_models_are_priced_by_audio_tokens(
    table: PriceTable, model: str, rates: tuple[int, int, int]
) -> None:
    price = table.price(model, NOW)
    assert price is not None and price.charges and price.by_audio_tokens
    assert (price.input_per_m, price.audio_input_per_m, price.output_per_m) == rates
    assert (price.context_window, price.max_output_tokens, price.audio_minute) == (16_000, 2_000, 0)
    # Text input, audio input and output each at their own price, rounded up once.
    assert price.audio_token_cost(20 + 80, 80, 50) == -(
        -(20 * rates[0] + 80 * rates[1] + 50 * rates[2]) // 1_000_000
    )
    assert price.audio_token_cost(1, 1, 0) == -(-rates[1] // 1_000_000)
    assert price.audio_token_cost(5, 9, 0) == price.audio_token_cost(5, 5, 0)  # at most all of it
    assert not table.price("whisper-1", NOW).by_audio_tokens  # type: ignore[union-attr]
    assert table.price(f"{model}-2025-03-20", NOW) == price  # a snapshot: its base's price


@pytest.mark.parametrize(
    "lines",
    [
        'audio_input = "6.00"\nmax_output_tokens = 2000\n',  # no context window
        'audio_input = "6.00"\ncontext_window = 16000\n',  # no output cap
        'audio_input = "6.00"\ncontext_window = 16000\nmax_output_tokens = 2000\n'
        'audio_minute = "0.006"\n',  # both ways
        'audio_output = "80.00"\ncontext_window = 16000\nmax_output_tokens = 2000\n',  # not heard
    ],
)
def test_bad_audio_token_entries_are_refused(tmp_path: Path, lines: str) -> None:
    path = write_prices(
        tmp_path, f'[[price]]\nmodel = "acme"\neffective_from = "2025-01-01"\n{lines}'
    )
    with pytest.raises(ValueError, match="audio_input") as info:
        PriceTable.load([path])
    assert "acme" in str(info.value)


# OpenAI's chat models that hear and speak: micro-dollars per 1M text input, text output, audio
# input and audio output tokens, from their model pages.
CHAT_AUDIO = {
    "gpt-4o-audio-preview": (2_500_000, 10_000_000, 40_000_000, 80_000_000),
    "gpt-4o-audio-preview-2024-10-01": (2_500_000, 10_000_000, 100_000_000, 200_000_000),
    "gpt-4o-mini-audio-preview": (150_000, 600_000, 10_000_000, 20_000_000),
    "gpt-audio": (2_500_000, 10_000_000, 32_000_000, 64_000_000),
}


@pytest.mark.parametrize("model", sorted(CHAT_AUDIO))
def test_chat_models_that_hear_and_speak_price_audio_apart(table: PriceTable, model: str) -> None:
    text_in, text_out, audio_in, audio_out = CHAT_AUDIO[model]
    price = table.price(model, NOW)
    assert price is not None
    assert (price.input_per_m, price.output_per_m) == (text_in, text_out)
    assert (price.audio_input_per_m, price.audio_output_per_m) == (audio_in, audio_out)
    assert (price.context_window, price.max_output_tokens) == (128_000, 16_384)
    # 100 input tokens, 30 of them audio; 200 output, 150 of them audio: rounded up once.
    exact = Fraction(70 * text_in + 30 * audio_in + 50 * text_out + 150 * audio_out, 1_000_000)
    assert price.chat_audio_cost(100, 0, 200, 30, 150) == math.ceil(exact)
    assert price.chat_audio_cost(100, 0, 200, 0, 0) == price.token_cost(100, 0, 200)


def test_chat_audio_cost_keeps_cached_tokens_among_the_text_and_falls_back_to_text_prices(
    table: PriceTable,
) -> None:
    sim = table.price("sim-audio", NOW)  # $1 / $0.50 cached / $2, audio $10 / $20
    assert sim is not None
    # 100 input: 30 audio, 50 cached, 20 text; 10 output, all audio.
    assert sim.chat_audio_cost(100, 50, 10, 30, 10) == 20 + 25 + 300 + 200
    # Cached and audio reported beyond the input: the audio first, the cached among the rest.
    assert sim.chat_audio_cost(100, 90, 10, 30, 10) == 35 + 300 + 200  # 70 cached at $0.50
    # More audio than the tokens it is part of: all of them.
    assert sim.chat_audio_cost(10, 0, 10, 99, 99) == 10 * 10 + 10 * 20
    # A model with no audio price: its audio at the text prices.
    mini = table.price("gpt-4o-mini", NOW)
    assert mini is not None and not mini.by_audio_tokens
    assert mini.chat_audio_cost(1000, 0, 1000, 400, 500) == mini.token_cost(1000, 0, 1000)
