"""The price table and the cost of a request, in integer micro-dollars (no floats near money)."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

MICRO = 1_000_000
MICRO_PER_CENT = 10_000
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars per 1M tokens (input, cached input, output), per audio minute, per image, per
    1M characters (text to speech), per 1M image tokens (an image model priced by tokens), per 1M
    audio tokens (a speech-to-text model priced by tokens; a chat model that hears and speaks)."""

    model: str
    effective_from: int  # Unix seconds
    input_per_m: int = 0
    cached_input_per_m: int = 0
    output_per_m: int = 0
    audio_minute: int = 0
    image: int = 0
    characters_per_m: int = 0  # text to speech: per 1M characters of its input
    max_output_tokens: int | None = None  # the model's own cap: the worst case when none is sent
    output_param: str = "max_tokens"  # how to tell the upstream a lower cap (chat endpoint)
    image_input_tokens: int | None = None  # the most input tokens one image may cost
    context_window: int | None = None  # the most input tokens the model reads (text)
    # Per generated image by "<quality>/<size>" ("standard/1024x1024"), when it varies; else
    # ``image`` is the price of every image the model makes.
    images: tuple[tuple[str, int], ...] = ()
    # An image model priced by tokens (gpt-image-1): per 1M image tokens read and written (its
    # text input at ``input_per_m``), and the output tokens one generated image costs by
    # "<quality>/<size>" ("high/1024x1536"): what a hold counts before the answer reports usage.
    image_input_per_m: int = 0
    image_output_per_m: int = 0
    tokens_per_image: tuple[tuple[str, int], ...] = ()
    # A speech-to-text model priced by tokens (gpt-4o-transcribe): per 1M audio tokens read (its
    # text input, the prompt, at ``input_per_m``; the transcript at ``output_per_m``). A chat model
    # that hears and speaks (gpt-4o-audio-preview): per 1M audio tokens read and written, its text
    # tokens at the text prices.
    audio_input_per_m: int = 0
    audio_output_per_m: int = 0

    def image_price(self, quality: str, size: str) -> int | None:
        """Micro-dollars per image of ``quality`` and ``size``; None when the table has no price
        for them (or the model makes no images)."""
        if not self.images:
            return self.image or None
        return dict(self.images).get(f"{quality}/{size}")

    def image_tokens(self, quality: str, size: str) -> int | None:
        """The most output tokens one image of ``quality`` and ``size`` may cost on a model priced
        by tokens, either being ``"auto"`` (the upstream's choice: any the table lists, so the
        most of them); None when the table lists no such image."""
        most: int | None = None
        for key, tokens in self.tokens_per_image:
            asked_quality, _, asked_size = key.partition("/")
            if quality in ("auto", asked_quality) and size in ("auto", asked_size):
                most = tokens if most is None or tokens > most else most
        return most

    def image_token_cost(
        self, input_tokens: int, image_input_tokens: int, output_tokens: int
    ) -> int:
        """Cost in micro-dollars of an image generation priced by tokens, rounded up once: the
        input's text tokens (``input_tokens`` less its image tokens) at the text price, its image
        tokens at the image input price, the output (the images) at the image output price."""
        return self._split_cost(
            input_tokens, image_input_tokens, self.image_input_per_m,
            output_tokens * self.image_output_per_m,
        )  # fmt: skip

    def audio_token_cost(
        self, input_tokens: int, audio_input_tokens: int, output_tokens: int
    ) -> int:
        """Cost in micro-dollars of a transcription priced by tokens, rounded up once: the input's
        text tokens (its prompt: ``input_tokens`` less its audio tokens) at the text price, its
        audio tokens at the audio input price, the transcript at the output price."""
        return self._split_cost(
            input_tokens, audio_input_tokens, self.audio_input_per_m,
            output_tokens * self.output_per_m,
        )  # fmt: skip

    def _split_cost(self, input_tokens: int, media: int, media_rate: int, output: int) -> int:
        """``input_tokens`` of which ``media`` (at most all of them) at ``media_rate``, the rest
        at the text input price, plus ``output`` (micro-dollars x 10**6), rounded up once."""
        media = min(media, input_tokens)
        numerator = (input_tokens - media) * self.input_per_m + media * media_rate + output
        return -(-numerator // MICRO)

    def chat_audio_cost(
        self, input_tokens: int, cached_input_tokens: int, output_tokens: int,
        audio_input_tokens: int, audio_output_tokens: int,
    ) -> int:  # fmt: skip
        """Cost in micro-dollars of a chat answer some of whose tokens are audio (OpenAI's
        ``prompt_tokens_details.audio_tokens`` and ``completion_tokens_details.audio_tokens``, part
        of the prompt and completion tokens), rounded up once: the audio at the audio prices, the
        cached input at the cached price, the rest at the text prices. Audio reported beyond the
        tokens it is part of counts as all of them; cached tokens count only among the input that
        is not audio (OpenAI publishes no cached audio price for chat: the dearer reading wins). On a
        model with no audio price its audio costs the text price: a request that sends or asks for
        audio is refused there, so only an upstream's own audio comes this way, and the hold
        (text prices) bounds it all the same."""
        heard = min(audio_input_tokens, input_tokens)
        said = min(audio_output_tokens, output_tokens)
        cached = min(cached_input_tokens, input_tokens - heard)
        cached_rate = self.cached_input_per_m if self.cached_input_per_m else self.input_per_m
        heard_rate = self.audio_input_per_m if self.audio_input_per_m else self.input_per_m
        said_rate = self.audio_output_per_m if self.audio_output_per_m else self.output_per_m
        numerator = (
            (input_tokens - heard - cached) * self.input_per_m
            + cached * cached_rate
            + heard * heard_rate
            + (output_tokens - said) * self.output_per_m
            + said * said_rate
        )
        return -(-numerator // MICRO)

    @property
    def by_audio_tokens(self) -> bool:
        """Whether the model has a price per audio token read: a speech-to-text model priced by
        tokens (gpt-4o-transcribe), or a chat model that hears (gpt-4o-audio-preview)."""
        return self.audio_input_per_m > 0

    def token_cost(self, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> int:
        """Cost in micro-dollars, rounded up once at the end so no fraction is lost per part.

        ``input_tokens`` includes the cached ones, as OpenAI's ``prompt_tokens`` does."""
        cached = min(cached_input_tokens, input_tokens)
        cached_rate = self.cached_input_per_m if self.cached_input_per_m else self.input_per_m
        numerator = (
            (input_tokens - cached) * self.input_per_m
            + cached * cached_rate
            + output_tokens * self.output_per_m
        )
        return -(-numerator // MICRO)

    def character_cost(self, characters: int) -> int:
        """Cost in micro-dollars of speaking ``characters`` characters, rounded up once."""
        return -(-characters * self.characters_per_m // MICRO)

    @property
    def charges(self) -> bool:
        """Whether any use of the model costs something (a free model is priced at 0 throughout)."""
        rates = (self.input_per_m, self.cached_input_per_m, self.output_per_m, self.audio_minute,
                 self.image, self.characters_per_m, self.image_input_per_m,
                 self.image_output_per_m, self.audio_input_per_m,
                 self.audio_output_per_m)  # fmt: skip
        return any(rates) or any(price for _, price in self.images)


def format_usd(micros: int) -> str:
    """``1,234.50`` for display: at least cents, and every sub-cent digit an amount has (exact:
    error messages, the CLI, what a person set; a page's tooltip behind a rounded figure)."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICRO)
    return f"{sign}{whole:,}.{f'{fraction:06d}'.rstrip('0').ljust(2, '0')}"


def format_cents(micros: int, *, up: bool = False) -> str:
    """``1,234.50``: dollars and cents, as people read money (the dashboard, emails). A sub-cent
    rest is rounded down (money there is to spend: a balance, credit left), or with ``up`` rounded
    up (money spent or held), so a figure never shows more money than there is, or less spend
    than there was: $4.983843 of credit is "4.98", $0.016157 spent "0.02"."""
    cents = -(-micros // MICRO_PER_CENT) if up else micros // MICRO_PER_CENT
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole:,}.{rest:02d}"


def format_cost(micros: int) -> str:
    """A cost as a usage page shows it (OpenAI's does the same): dollars and cents rounded up, or,
    under a cent, every digit it has (``0.000157``), which a request of a few tokens costs: "0.01"
    would say a hundred times too much, "0.00" that it was free."""
    if 0 < abs(micros) < MICRO_PER_CENT:
        return format_usd(micros)
    return format_cents(micros, up=True)


def parse_dollars(value: Any, where: str) -> int:
    """Returns exact micro-dollars from a decimal string like ``"0.075"``."""
    if not isinstance(value, str):
        raise ValueError(f'{where}: write amounts as strings ("0.15"), not {type(value).__name__}')
    try:
        micros = Decimal(value) * MICRO
    except InvalidOperation:
        raise ValueError(f"{where}: '{value}' is not a decimal amount") from None
    if not micros.is_finite() or micros < 0 or micros != micros.to_integral_value():
        raise ValueError(f"{where}: '{value}' is negative or finer than a micro-dollar")
    return int(micros)


_COUNTS = ("max_output_tokens", "image_input_tokens", "context_window")  # token counts, optional


def _parse_entry(entry: Mapping[str, Any], where: str) -> Price:
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"{where}: every price needs a model")
    when = entry.get("effective_from")
    if isinstance(when, str):
        when = dt.date.fromisoformat(when)
    if not isinstance(when, dt.date):
        raise ValueError(f"{where}: {model} needs effective_from as a date")
    start = int(dt.datetime(when.year, when.month, when.day, tzinfo=dt.UTC).timestamp())
    fields = {
        "input": 0, "cached_input": 0, "output": 0, "audio_minute": 0, "image": 0, "characters": 0,
        "image_input": 0, "image_output": 0, "audio_input": 0, "audio_output": 0,
    }  # fmt: skip
    known = {"model", "effective_from", "output_param", "images", "tokens_per_image", *_COUNTS}
    unknown = set(entry) - set(fields) - known
    if unknown:
        raise ValueError(f"{where}: {model} has unknown fields {sorted(unknown)}")
    for name in fields:
        if name in entry:
            fields[name] = parse_dollars(entry[name], f"{where}: {model}.{name}")
    counts: dict[str, int | None] = {name: entry.get(name) for name in _COUNTS}
    for name, count in counts.items():
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 1
        ):
            raise ValueError(f"{where}: {model}.{name} must be a positive integer")
    images = entry.get("images", {})
    if not isinstance(images, dict) or not all(
        isinstance(k, str) and k.count("/") == 1 for k in images
    ):
        raise ValueError(f'{where}: {model}.images maps "<quality>/<size>" to a price')
    image_prices = tuple(
        sorted((k, parse_dollars(v, f"{where}: {model}.images.{k}")) for k, v in images.items())
    )
    per_image = entry.get("tokens_per_image", {})
    if not isinstance(per_image, dict) or not all(
        isinstance(k, str) and k.count("/") == 1 and "auto" not in k.split("/")
        and type(v) is int and v >= 1
        for k, v in per_image.items()
    ):  # fmt: skip
        raise ValueError(
            f'{where}: {model}.tokens_per_image maps "<quality>/<size>" (not auto: that is the '
            "most of them) to a positive number of output tokens"
        )
    if per_image and image_prices:
        raise ValueError(f"{where}: {model} is priced per image (images) or by tokens, not both")
    if fields["audio_input"] and (
        fields["audio_minute"] or counts["context_window"] is None
        or counts["max_output_tokens"] is None
    ):  # fmt: skip
        # (Its hold is all the model may read, at the audio price, and write: both bound it.)
        raise ValueError(
            f"{where}: {model} is priced by audio tokens (audio_input), which needs its "
            "context_window and max_output_tokens to bound a request's hold, and no audio_minute"
        )
    if fields["audio_output"] and not fields["audio_input"]:
        # (A chat model that speaks hears too: a request's audio parts need the input price.)
        raise ValueError(
            f"{where}: {model} sets audio_output without audio_input: a chat model priced by "
            "audio tokens needs both"
        )
    output_param = entry.get("output_param", "max_tokens")
    if output_param not in ("max_tokens", "max_completion_tokens"):
        raise ValueError(f"{where}: {model}.output_param is max_tokens or max_completion_tokens")
    return Price(
        model=model,
        effective_from=start,
        input_per_m=fields["input"],
        cached_input_per_m=fields["cached_input"],
        output_per_m=fields["output"],
        audio_minute=fields["audio_minute"],
        image=fields["image"],
        characters_per_m=fields["characters"],
        max_output_tokens=counts["max_output_tokens"],
        output_param=output_param,
        image_input_tokens=counts["image_input_tokens"],
        context_window=counts["context_window"],
        images=image_prices,
        image_input_per_m=fields["image_input"],
        image_output_per_m=fields["image_output"],
        tokens_per_image=tuple(sorted(per_image.items())),
        audio_input_per_m=fields["audio_input"],
        audio_output_per_m=fields["audio_output"],
    )


class PriceTable:
    def __init__(self, prices: Iterable[Price]) -> None:
        self._by_model: dict[str, list[Price]] = {}
        for price in prices:
            self._by_model.setdefault(price.model, []).append(price)
        for versions in self._by_model.values():
            versions.sort(key=lambda p: p.effective_from)

    @classmethod
    def load(cls, extra_files: Iterable[Path] = ()) -> PriceTable:
        """The shipped table plus operator files; a later entry for the same model and date wins."""
        texts = [
            ("prices.toml", resources.files("keyplane.usage").joinpath("prices.toml").read_text())
        ]
        texts += [(str(p), p.read_text()) for p in extra_files]
        merged: dict[tuple[str, int], Price] = {}
        for where, text in texts:
            for i, entry in enumerate(tomllib.loads(text).get("price", [])):
                price = _parse_entry(entry, f"{where}[{i}]")
                merged[(price.model, price.effective_from)] = price
        return cls(merged.values())

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def _versions(self, model: str) -> list[Price] | None:
        versions = self._by_model.get(model)
        if versions is None:
            m = _SNAPSHOT.match(model)
            versions = self._by_model.get(m.group("base")) if m else None
        return versions

    def knows(self, model: str) -> bool:
        """Whether ``model`` has a price at some time (snapshots fall back to their base)."""
        return bool(self._versions(model))

    def price(self, model: str, at: float) -> Price | None:
        """Returns the price in effect for ``model`` at ``at`` (snapshots fall back to their base)."""
        versions = self._versions(model)
        if not versions:
            return None
        current = None
        for price in versions:
            if price.effective_from <= at:
                current = price
        return current
