"""Image generation (``POST /v1/images/generations``), edits and variations
(``/v1/images/edits``, ``/v1/images/variations``), deterministic.

The model is ``dall-e-2`` unless ``model`` names ``dall-e-3`` or ``gpt-image-1``. Each of the
``n`` images is ``PNG_1X1`` (one white pixel, whatever the ``size``), as ``b64_json`` or as a
``url`` under ``IMAGE_URL_BASE`` whose name is a hash of the model, size, quality, prompt and the
image's index; a ``dall-e-3`` image has the prompt as its ``revised_prompt``. The answer has no
``usage``, as OpenAI's dall-e answers. ``gpt-image-1`` answers ``b64_json`` only (a
``response_format`` of ``url`` is refused, as OpenAI's), takes ``quality`` low, medium, high or
auto (the default), ``size`` 1024x1024, 1536x1024, 1024x1536 or auto (the default),
``output_format`` png, jpeg or webp (the image is the same PNG whatever it says), ``background``
transparent, opaque or auto; auto draws ``GPT_IMAGE_AUTO`` (medium, 1024x1024), which the answer
names in ``quality`` and ``size``. Its answer has a ``usage``: ``output_tokens = n ×
GPT_IMAGE_TOKENS[quality][size]`` (OpenAI's table) and ``input_tokens = text_tokens(prompt)``,
all text (``input_tokens_details``).

Edits and variations take ``multipart/form-data``. An edit takes ``image`` (or several ``image[]``),
an optional ``mask`` and a ``prompt``, on ``dall-e-2`` (the default) or ``gpt-image-1`` (dall-e-3
edits nothing, as at OpenAI); a variation takes one ``image`` and no prompt, on ``dall-e-2`` only.
dall-e-2 takes one PNG under ``DALL_E_2_MAX_FILE_BYTES`` (4 MB; its mask too), its sizes and
response formats as above. gpt-image-1 takes up to ``MAX_EDIT_IMAGES`` (16) PNG, JPEG or WebP
images, its qualities, sizes, formats and backgrounds as above and ``input_fidelity`` low (the
default) or high; its answer's ``input_tokens`` add ``EDIT_IMAGE_TOKENS[input_fidelity]`` for each
image (``image_tokens`` in ``input_tokens_details``; the mask is not counted). Each of the ``n``
images made is ``PNG_1X1``; a URL's name hashes the uploaded images too.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import zlib

import orjson

from keyplane.simulator.config import SimulatorConfig
from keyplane.simulator.forms import Form, read_form
from keyplane.simulator.params import (
    JSON,
    RequestError,
    choice,
    known_model,
    optional_str,
    positive_int,
)
from keyplane.simulator.replies import Reply
from keyplane.simulator.tokens import text_tokens

# fmt: off
# The sizes and qualities each image model draws; the first quality is the default, and the size
# DEFAULT_IMAGE_SIZE, or gpt-image-1's first (auto).
IMAGE_SIZES: dict[str, tuple[str, ...]] = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "gpt-image-1": ("auto", "1024x1024", "1536x1024", "1024x1536"),
}
IMAGE_QUALITIES: dict[str, tuple[str, ...]] = {
    "dall-e-2": ("standard",),
    "dall-e-3": ("standard", "hd"),
    "gpt-image-1": ("auto", "low", "medium", "high"),
}
# gpt-image-1's output tokens per image, by quality and size (OpenAI's published table).
GPT_IMAGE_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
GPT_IMAGE_AUTO = ("medium", "1024x1024")  # what "auto" draws here (OpenAI picks per prompt)
GPT_IMAGE_FORMATS = ("png", "jpeg", "webp")
GPT_IMAGE_BACKGROUNDS = ("auto", "transparent", "opaque")
# fmt: on
DEFAULT_IMAGE_MODEL = "dall-e-2"
DEFAULT_IMAGE_SIZE = "1024x1024"
IMAGE_RESPONSE_FORMATS = ("url", "b64_json")
MAX_IMAGES = 10
IMAGE_URL_BASE = "https://simulator.keyplane.invalid/images/"
EDIT_MODELS = ("dall-e-2", "gpt-image-1")
DALL_E_2_MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_EDIT_IMAGES = 16
# The input tokens of one uploaded image by input_fidelity: low is one 512-px tile of gpt-image-1
# (65 + 129, what OpenAI's edits report for a square image); high, the simulator's own figure.
EDIT_IMAGE_TOKENS = {"low": 194, "high": 3_050}
_SIGNATURES = {"png": (b"\x89PNG\r\n\x1a\n",), "jpeg": (b"\xff\xd8\xff",), "webp": (b"RIFF",)}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Every generated image: a valid 1x1 PNG, one white pixel (8-bit RGB, no interlace).
PNG_1X1 = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff"))
    + _png_chunk(b"IEND", b"")
)
_PNG_1X1_B64 = base64.b64encode(PNG_1X1).decode("ascii")


def _image_url(
    model: str, size: str, quality: str, prompt: str, index: int, source: str = ""
) -> str:
    key = orjson.dumps([model, size, quality, prompt, index] + ([source] if source else []))
    return f"{IMAGE_URL_BASE}{hashlib.shake_256(key).hexdigest(16)}.png"


def generate_images(body: JSON, config: SimulatorConfig) -> Reply:
    """POST /v1/images/generations: ``n`` copies of ``PNG_1X1``, as URLs or base64."""
    model = DEFAULT_IMAGE_MODEL if body.get("model") is None else known_model(body, config)
    if model not in IMAGE_SIZES:
        message = f"Invalid model '{model}' for image generation."
        raise RequestError(400, message, "model", "invalid_value")
    prompt = optional_str(body, "prompt")
    if not prompt:
        message = "Missing required parameter: 'prompt'."
        raise RequestError(400, message, "prompt", "missing_required_parameter")
    n = positive_int(body, "n", MAX_IMAGES) or 1
    if model == "dall-e-3" and n != 1:
        raise RequestError(400, "Invalid 'n': dall-e-3 only supports n=1.", "n", "invalid_value")
    gpt_image = model == "gpt-image-1"
    sizes, qualities = IMAGE_SIZES[model], IMAGE_QUALITIES[model]
    size = choice(body, "size", sizes, sizes[0] if gpt_image else DEFAULT_IMAGE_SIZE, model)
    quality = choice(body, "quality", qualities, qualities[0], model)
    formats = ("b64_json",) if gpt_image else IMAGE_RESPONSE_FORMATS
    fmt = choice(body, "response_format", formats, formats[0], model)
    if body.get("stream") is True:
        message = f"Streaming is not supported for {model}."
        raise RequestError(400, message, "stream", "invalid_value")
    if gpt_image:
        return 200, _gpt_image(body, prompt, n, quality, size)
    data = _dall_e_images(model, n, fmt, size, quality, prompt)
    return 200, {"created": int(time.time()), "data": data}


def _dall_e_images(
    model: str, n: int, fmt: str, size: str, quality: str, prompt: str, source: str = ""
) -> list[JSON]:
    data: list[JSON] = []
    for index in range(n):
        image: JSON = (
            {"b64_json": _PNG_1X1_B64}
            if fmt == "b64_json"
            else {"url": _image_url(model, size, quality, prompt, index, source)}
        )
        if model == "dall-e-3":
            image["revised_prompt"] = prompt
        data.append(image)
    return data


def _gpt_image(
    body: JSON, prompt: str, n: int, quality: str, size: str, image_tokens: int = 0
) -> JSON:
    """gpt-image-1's answer: ``n`` images as base64, with the tokens they cost (``image_tokens``:
    of the input, the images an edit uploads)."""
    output_format = choice(body, "output_format", GPT_IMAGE_FORMATS, "png", "gpt-image-1")
    background = choice(body, "background", GPT_IMAGE_BACKGROUNDS, "auto", "gpt-image-1")
    quality = GPT_IMAGE_AUTO[0] if quality == "auto" else quality
    size = GPT_IMAGE_AUTO[1] if size == "auto" else size
    text = text_tokens(prompt)
    output = n * GPT_IMAGE_TOKENS[quality][size]
    usage = {
        "total_tokens": text + image_tokens + output, "input_tokens": text + image_tokens,
        "output_tokens": output,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image_tokens},
    }  # fmt: skip
    return {
        "created": int(time.time()), "data": [{"b64_json": _PNG_1X1_B64} for _ in range(n)],
        "background": "opaque" if background == "auto" else background,
        "output_format": output_format, "quality": quality, "size": size, "usage": usage,
    }  # fmt: skip


def edit_images(raw: bytes, content_type: str, config: SimulatorConfig) -> Reply:
    """POST /v1/images/edits: ``n`` copies of ``PNG_1X1``, as an edit of the uploaded images."""
    form = read_form(raw, content_type)
    body, model = _form_body(form, config, EDIT_MODELS, "image edits")
    prompt = optional_str(body, "prompt")
    if not prompt:
        message = "Missing required parameter: 'prompt'."
        raise RequestError(400, message, "prompt", "missing_required_parameter")
    images = [data for name, data in form.uploads if name in ("image", "image[]")]
    gpt_image = model == "gpt-image-1"
    _check_uploads(form, images, model, MAX_EDIT_IMAGES if gpt_image else 1)
    n = positive_int(body, "n", MAX_IMAGES) or 1
    sizes, qualities = IMAGE_SIZES[model], IMAGE_QUALITIES[model]
    size = choice(body, "size", sizes, sizes[0] if gpt_image else DEFAULT_IMAGE_SIZE, model)
    quality = choice(body, "quality", qualities, qualities[0], model)
    formats = ("b64_json",) if gpt_image else IMAGE_RESPONSE_FORMATS
    fmt = choice(body, "response_format", formats, formats[0], model)
    if body.get("stream") not in (None, "false"):
        message = "keyplane's simulator does not stream image edits."
        raise RequestError(400, message, "stream", "invalid_value")
    if gpt_image:
        fidelity = choice(body, "input_fidelity", ("low", "high"), "low", model)
        tokens = EDIT_IMAGE_TOKENS[fidelity] * len(images)
        return 200, _gpt_image(body, prompt, n, quality, size, tokens)
    source = _uploaded(images)
    data = _dall_e_images(model, n, fmt, size, quality, prompt, source)
    return 200, {"created": int(time.time()), "data": data}


def vary_images(raw: bytes, content_type: str, config: SimulatorConfig) -> Reply:
    """POST /v1/images/variations: ``n`` copies of ``PNG_1X1``, as variations of the image."""
    form = read_form(raw, content_type)
    body, model = _form_body(form, config, ("dall-e-2",), "image variations")
    images = [data for name, data in form.uploads if name == "image"]
    _check_uploads(form, images, model, 1)
    n = positive_int(body, "n", MAX_IMAGES) or 1
    size = choice(body, "size", IMAGE_SIZES[model], DEFAULT_IMAGE_SIZE, model)
    fmt = choice(body, "response_format", IMAGE_RESPONSE_FORMATS, "url", model)
    data = _dall_e_images(model, n, fmt, size, "standard", "", _uploaded(images))
    return 200, {"created": int(time.time()), "data": data}


def _form_body(
    form: Form, config: SimulatorConfig, models: tuple[str, ...], purpose: str
) -> tuple[JSON, str]:
    """The form's fields as a request body (``n`` a number when it is one), and its model."""
    body: JSON = dict(form.fields)
    n = body.get("n")
    if isinstance(n, str) and n.isascii() and n.isdigit():
        body["n"] = int(n)
    model = DEFAULT_IMAGE_MODEL if body.get("model") is None else known_model(body, config)
    if model not in models:
        raise RequestError(400, f"Invalid model '{model}' for {purpose}.", "model", "invalid_value")
    return body, model


def _check_uploads(form: Form, images: list[bytes], model: str, most: int) -> None:
    """One image at least, ``most`` at most, each (and the mask) of a format ``model`` reads."""
    if not images:
        message = "Missing required parameter: 'image'."
        raise RequestError(400, message, "image", "missing_required_parameter")
    if len(images) > most:
        message = f"Invalid 'image': {model} takes at most {most} image{'s' if most > 1 else ''}."
        raise RequestError(400, message, "image", "invalid_value")
    kinds = ("png",) if model == "dall-e-2" else ("png", "jpeg", "webp")
    for name, data in form.uploads:
        if name not in ("image", "image[]", "mask"):
            continue
        if not any(data.startswith(sig) for kind in kinds for sig in _SIGNATURES[kind]):
            wanted = ", ".join(kinds)
            message = f"Invalid '{name}': {model} reads {wanted} images, and this file is none."
            raise RequestError(400, message, name, "invalid_image_format")
        if model == "dall-e-2" and len(data) >= DALL_E_2_MAX_FILE_BYTES:
            message = f"Invalid '{name}': dall-e-2 takes files of less than 4 MB."
            raise RequestError(400, message, name, "image_too_large")


def _uploaded(images: list[bytes]) -> str:
    """A digest of the uploaded images: what makes an edit's image URLs its own."""
    return hashlib.shake_256(b"".join(hashlib.sha256(i).digest() for i in images)).hexdigest(8)
