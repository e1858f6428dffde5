"""What images and audio cost: per image (by quality and size) or by tokens (an image model priced
so, gpt-image-1), per second of audio heard and per character of text spoken, with the bounds a
hold needs before the upstream says how many images, tokens or seconds it made or heard; and the
uploads that carry audio (speech to text) or images (image edits and variations), checked."""

from __future__ import annotations

import math
from typing import Any

from keyplane.billing.bounds import (
    IMAGE_TOKEN_ALLOWANCE,
    MIN_AUDIO_BYTES_PER_S,
    USUAL_AUDIO_BYTES_PER_S,
)
from keyplane.gateway.errors import bad_request
from keyplane.gateway.forms import parse_form, with_field
from keyplane.gateway.streaming import json_object, token_usage, transcript_usage
from keyplane.usage.pricing import Price

# Audio uploads: OpenAI takes files of up to 25 MB (and the form around them).
AUDIO_MAX_BYTES = 25 * 1024 * 1024 + 256 * 1024
# A megabyte of audio, as audio megabytes per minute count it (the 25 MB above are MiB too).
AUDIO_MEGABYTE = 1024 * 1024
# (The fewest bytes a second of audio takes, MIN_AUDIO_BYTES_PER_S, bounds a file's duration and
# so its hold; USUAL_AUDIO_BYTES_PER_S estimates it when the upstream reports none: billing.bounds.)
# Image uploads (edits, variations): one image of gpt-image-1's largest (OpenAI takes up to 50 MB
# an image), or several smaller, and the form around them. (The body is read whole before it is
# forwarded: 16 images of 50 MB, all OpenAI takes, would be 800 MB a request.)
IMAGE_UPLOAD_MAX_BYTES = 50 * 1024 * 1024 + 256 * 1024
# dall-e-2 takes PNGs under 4 MB (its image and its mask): a larger one is refused here rather
# than uploaded to be refused.
DALL_E_2_MAX_FILE_BYTES = 4 * 1024 * 1024
IMAGE_FILES = frozenset({"image", "image[]", "mask"})  # file parts even without a filename
# The form fields keyplane reads (the hold, the rate limits and the bill depend on them): another
# name an upstream could read as one of them is refused (forms.parse_form).
AUDIO_FIELDS = frozenset({"model", "file", "stream", "response_format", "prompt"})
IMAGE_FIELDS = IMAGE_FILES | {"model", "prompt", "n", "stream", "quality", "size"}
MAX_INPUT_IMAGES = 16  # an edit's images at most (OpenAI's limit; dall-e-2 takes one)
MAX_IMAGES = 10  # n at most on edits and variations (OpenAI's limit)
# The text tokens each uploaded image adds to an edit's input beyond its prompt (OpenAI's edits
# report some 30 more for a 1024x1024 image, more for larger ones; its documentation, none).
IMAGE_TEXT_TOKENS = 128


def audio_form(body: bytes, content_type: bytes | None) -> tuple[dict[str, Any], int, int]:
    """The fields of a speech-to-text upload, checked (its ``response_format`` once its model's
    price is known: ``audio_billing``); the size of its audio file; and the most seconds it may
    play (what its hold covers, and the most it is billed, on a model priced per minute)."""
    form = parse_form(body, content_type, AUDIO_FIELDS)
    file_bytes = form.size("file")
    for name in ("model", "file"):
        if name not in form.fields and not (name == "file" and file_bytes is not None):
            raise bad_request(f"Missing required parameter: '{name}'.", param=name)
    model = form.fields["model"]
    if not model.strip() or len(model) > 256:
        raise bad_request("The model must be a non-empty name.", param="model")
    stream = form.fields.get("stream")
    if stream is not None:  # (a boolean from here on: ``audio_billing`` and the pipeline read it)
        form.fields["stream"] = _form_boolean(stream, "stream")
    # Bounded by the whole body, not the file part's size: whatever part the upstream reads as
    # the audio, it is in there.
    longest = max(1, -(-len(body) // MIN_AUDIO_BYTES_PER_S))
    return form.fields, file_bytes or 0, longest


def _form_boolean(value: str, name: str) -> bool:
    """A form field's boolean, as the SDKs send one (``true``, ``false``; ``1``, ``0`` and an
    empty value taken too); a 400 for anything else, which an upstream might read either way."""
    text = value.strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0", ""):
        return False
    raise bad_request(
        f"Invalid '{name}': expected a boolean (true or false), got {value[:20]!r}.", param=name,
        code="invalid_value",
    )  # fmt: skip


def image_form(
    body: bytes, content_type: bytes | None, default_model: str, edit: bool
) -> tuple[bytes, dict[str, Any], int]:
    """The fields of an image edit (``edit``: it needs a ``prompt``) or variation upload, checked,
    with ``n`` as a number; the body as it is forwarded, naming ``default_model`` when it names
    none (the upstream serves the model keyplane held money for, not one it picks from the other
    fields); and how many files it uploads (images and mask), what the hold counts on a model
    priced by tokens. A 400 for what no upstream serves: no image, more than ``MAX_INPUT_IMAGES``,
    an ``n`` out of range, ``stream`` (an answer in events, not billed here yet), a file dall-e-2
    refuses for its size."""
    form = parse_form(body, content_type, IMAGE_FIELDS, IMAGE_FILES)
    fields = form.fields
    images = sum(1 for name, _ in form.files if name in ("image", "image[]"))
    if not images:
        raise bad_request("Missing required parameter: 'image'.", param="image")
    if images > MAX_INPUT_IMAGES:
        raise bad_request(
            f"Too many images: {images}, the most is {MAX_INPUT_IMAGES}.", param="image",
        )  # fmt: skip
    if edit and not fields.get("prompt", "").strip():
        raise bad_request("Missing required parameter: 'prompt'.", param="prompt")
    model = fields.get("model")
    if model is None:
        model = fields["model"] = default_model
        body = with_field(body, content_type, "model", model)
    if not model.strip() or len(model) > 256:
        raise bad_request("The model must be a non-empty name.", param="model")
    n = fields.get("n")
    if n is not None:
        fields["n"] = _image_count(n)
    if fields.pop("stream", "false").strip().lower() not in ("false", "0", ""):
        raise bad_request(
            "keyplane does not stream image edits yet: send stream false (the images come whole, "
            "and partial_images are not sent).",
            param="stream", code="unsupported_value",
        )  # fmt: skip
    if model == "dall-e-2":
        for name, size in form.files:
            if size >= DALL_E_2_MAX_FILE_BYTES:
                raise bad_request(
                    f"Invalid '{name[:100]}': dall-e-2 takes PNG files of less than 4 MB, and "
                    f"this one is {size:,} bytes.",
                    param=name[:100], code="invalid_image_file",
                )  # fmt: skip
    return body, fields, len(form.files)


def _image_count(value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= MAX_IMAGES):
        raise bad_request(
            f"Invalid 'n': expected an integer from 1 to {MAX_IMAGES}, got {value[:20]!r}.",
            param="n",
        )  # fmt: skip
    return int(text)


def upload_input(price: Price, fields: dict[str, Any], files: int) -> tuple[int, int]:
    """The most input tokens an upload of ``files`` images with ``fields`` may cost on an image
    model priced by tokens, and their cost in micro-dollars times 10**6: its text fields at a
    token a byte and ``IMAGE_TEXT_TOKENS`` an image at the text price, and each file at the most
    one image may cost (``uploaded_image_tokens``) at the image input price."""
    text = files * IMAGE_TEXT_TOKENS
    for value in fields.values():
        text += len(str(value).encode())
    images = uploaded_image_tokens(price, files)
    return text + images, text * price.input_per_m + images * price.image_input_per_m


def uploaded_image_tokens(price: Price, files: int) -> int:
    """The most input tokens ``files`` uploaded images may cost: each at the price entry's
    ``image_input_tokens`` (else ``IMAGE_TOKEN_ALLOWANCE``)."""
    return files * (price.image_input_tokens or IMAGE_TOKEN_ALLOWANCE)


def audio_billing(price: Price, fields: dict[str, Any], translation: bool) -> bool:
    """Whether a speech-to-text request is billed by the tokens its answer reports (a model priced
    by audio tokens, gpt-4o-transcribe), else per second of audio; a 400 for what keyplane cannot
    bill: a model priced by text tokens only, a model priced by tokens on translations (OpenAI
    translates with whisper-1 only), an answer format that reports no usage keyplane reads, or
    ``stream`` on a translation. A model priced per minute ignores ``stream``, as OpenAI's
    whisper-1 does: ``fields["stream"]`` is turned off, and the answer comes whole."""
    fmt = fields.get("response_format", "json")
    if fields.get("stream") is True and translation:
        raise bad_request(
            "Translations are not streamed (OpenAI's translations take no stream parameter): "
            "send stream false, or none.",
            param="stream", code="unsupported_value",
        )  # fmt: skip
    if price.by_audio_tokens:
        if translation:
            raise bad_request(
                f"'{price.model}' is not served on translations (OpenAI translates with whisper-1 "
                "only): transcribe with it, or translate with a model priced per audio minute.",
                param="model", code="unsupported_value",
            )  # fmt: skip
        # (OpenAI's own refusal of the others: its API reference lists json only, its API takes
        # text too. A text answer is the transcript alone, with no usage: billed the hold. A
        # stream's last event carries the usage in either format.)
        if fmt not in ("json", "text"):
            raise bad_request(
                f"response_format {fmt[:40]!r} is not compatible with model '{price.model}'. Use "
                "'json' (billed on the usage it reports) or 'text' instead.",
                param="response_format", code="unsupported_value",
            )  # fmt: skip
        return True
    if not price.audio_minute and (price.input_per_m or price.output_per_m):
        raise bad_request(
            f"keyplane bills speech to text per audio minute, or by the audio tokens of a model "
            f"priced so, and '{price.model}' has neither price (an operator sets audio_minute, or "
            "audio_input, in its price entry).",
            param="model", code="unsupported_value",
        )  # fmt: skip
    if fmt not in ("json", "verbose_json"):
        raise bad_request(
            f"keyplane bills speech to text by the duration the upstream reports, which only "
            f"json and verbose_json answers carry, not {fmt[:40]!r}.",
            param="response_format", code="unsupported_value",
        )  # fmt: skip
    # "Streaming is not supported for the whisper-1 model and will be ignored" (OpenAI's API
    # reference): the request is served as if unstreamed, and its answer's duration billed.
    if fields.get("stream") is True:
        fields["stream"] = False
    return False


def speech_characters(payload: dict[str, Any], price: Price) -> int:
    """The characters a text-to-speech request asks to speak: what it is held and billed, as its
    answer (the audio) reports no usage. A 400 when its ``input`` is not a string, or its model has
    no price per character and is not free (priced by tokens, say: nothing could be billed)."""
    text = payload["input"]
    if not isinstance(text, str):
        raise bad_request("'input' must be a string: the text to speak.", param="input")
    if not price.characters_per_m and price.charges:
        raise bad_request(
            f"keyplane bills text to speech per character of its input, and '{price.model}' has "
            "no price per character (an operator sets characters in its price entry).",
            param="model", code="unsupported_value",
        )  # fmt: skip
    return len(text)


def image_price(price: Price, payload: dict[str, Any]) -> int:
    """Micro-dollars per image the request asks for (its ``quality`` and ``size``, OpenAI's
    defaults when unset); a 400 when keyplane has no price for them."""
    quality = payload.get("quality")
    size = payload.get("size")
    quality = "standard" if quality is None else quality
    size = "1024x1024" if size is None else size
    for name, value in (("quality", quality), ("size", size)):
        if not isinstance(value, str):
            raise bad_request(f"'{name}' must be a string.", param=name)
    unit = price.image_price(quality, size)
    if unit is None:
        raise bad_request(
            f"keyplane has no price for {quality} images of {size} on '{price.model}' (an "
            "operator sets them in the price table), so it cannot hold money for them.",
            param="size", code="unsupported_value",
        )  # fmt: skip
    return unit


def image_tokens(price: Price, payload: dict[str, Any]) -> int:
    """The most output tokens one image the request asks for may cost on a model priced by tokens
    (its ``quality`` and ``size``; ``"auto"``, OpenAI's default, is the most any may); a 400 naming
    the field keyplane has no figure for, and for ``stream`` (an answer in events, not billed
    here yet)."""
    stream = payload.get("stream")
    if stream is not None and stream is not False:
        raise bad_request(
            "keyplane does not stream image generations yet: send stream false (the images come "
            "whole, and partial_images are not sent).",
            param="stream", code="unsupported_value",
        )  # fmt: skip
    asked: list[str] = []
    for name in ("quality", "size"):
        value = payload.get(name)
        if value is None:
            value = "auto"
        if not isinstance(value, str):
            raise bad_request(f"'{name}' must be a string.", param=name)
        asked.append(value)
    quality, size = asked
    tokens = price.image_tokens(quality, size)
    if tokens is None:
        qualities = sorted({key.partition("/")[0] for key, _ in price.tokens_per_image})
        sizes = sorted({key.partition("/")[2] for key, _ in price.tokens_per_image})
        name, value, known = (
            ("quality", quality, qualities)
            if quality != "auto" and quality not in qualities
            else ("size", size, sizes)
        )
        supported = ", ".join(f"'{v}'" for v in (*known, "auto"))
        raise bad_request(
            f"Invalid '{name}' for '{price.model}': keyplane holds money for {supported}, not "
            f"{value[:40]!r} (an operator sets the tokens of each image in the price table).",
            param=name, code="unsupported_value",
        )  # fmt: skip
    return tokens


def image_answer(content: bytes, asked: int) -> tuple[int, tuple[int, int, int] | None]:
    """How many images an answer carries (at most ``asked``: no more are held for; -1 when it is
    not an answer with a list of images), and the tokens its ``usage`` reports, (input, of which
    image input, output), for a model priced by tokens (None when it reports none usable)."""
    answer = json_object(content)
    if answer is None:
        return -1, None
    data = answer.get("data")
    return (min(len(data), asked) if isinstance(data, list) else -1), _image_usage(answer)


def _image_usage(answer: dict[str, Any]) -> tuple[int, int, int] | None:
    # (No details: a generation's input is its prompt, all text; an edit's says its images'.)
    return token_usage(answer.get("usage"), "input_tokens_details", "image_tokens", False)


def transcription_usage(content: bytes) -> tuple[int, int, int] | None:
    """The tokens a transcription's answer reports, (input, of which audio, output), on a model
    priced by tokens; None when it reports none usable (a ``text`` answer, whose body is the
    transcript alone, or a usage of another ``type``)."""
    return transcript_usage(json_object(content))


def audio_cost(price: Price, seconds: int) -> int:
    """Micro-dollars for ``seconds`` of audio at the model's price per minute, rounded up."""
    return -(-seconds * price.audio_minute // 60)


def reported_seconds(content: bytes) -> int | None:
    """The seconds of audio a speech-to-text answer says it read (its ``usage`` of type
    ``duration``, or a verbose answer's ``duration``), rounded up; None when it says none."""
    answer = json_object(content)
    if answer is None:
        return None
    usage = answer.get("usage")
    seconds = usage.get("seconds") if isinstance(usage, dict) else None
    if seconds is None:
        seconds = answer.get("duration")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    if not 0 <= seconds < 2**31:  # (NaN, infinities and absurd figures: not a duration)
        return None
    return math.ceil(seconds)


def audio_megabytes(audio_bytes: int) -> int:
    """An audio file's size in whole megabytes, rounded up: what it counts against audio
    megabytes per minute (an empty file, none)."""
    return -(-audio_bytes // AUDIO_MEGABYTE)


def likely_seconds(audio_bytes: int) -> int:
    """A file's duration at a common bitrate: the estimate billed when no duration is reported."""
    return -(-audio_bytes // USUAL_AUDIO_BYTES_PER_S)


def asks_audio(payload: dict[str, Any]) -> str | None:
    """The field by which a chat request asks for audio output, if it does: ``modalities`` naming
    "audio" (a list, or, read kindly, the word alone), else an ``audio`` parameter (its voice and
    format). None for a request that asks for text only (the usual: two look-ups)."""
    modalities = payload.get("modalities")
    if modalities is not None and (
        modalities == "audio" or (type(modalities) is list and "audio" in modalities)
    ):
        return "modalities"
    return "audio" if payload.get("audio") is not None else None


def check_chat_audio(price: Price, heard: int, asked: str | None, param: str) -> None:
    """A 400 for a request that sends audio (``heard``: the most audio tokens its ``param``, its
    messages or input, may carry) or asks for it (``asked``: the field that does) on a model that
    charges but has no price for that audio: billed at its text prices it would cost a fraction of
    what the upstream charges. (A free model serves audio free, as everything else.)"""
    if not price.charges:
        return
    if heard and not price.audio_input_per_m:
        raise bad_request(
            f"The model '{price.model}' has no price for audio input on this keyplane, so the "
            f"audio in '{param}' cannot be billed: send text, or use a model priced for audio (an "
            "operator sets audio_input and audio_output in its price entry).",
            param=param, code="unsupported_value",
        )  # fmt: skip
    if asked is not None and not price.audio_output_per_m:
        raise bad_request(
            f"The model '{price.model}' has no price for audio output on this keyplane, so the "
            f"audio that '{asked}' asks for cannot be billed: ask for text, or use a model priced "
            "for audio (an operator sets audio_input and audio_output in its price entry).",
            param=asked, code="unsupported_value",
        )  # fmt: skip
