"""Image generation (``POST /v1/images/generations``), deterministic.

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
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import zlib

import orjson

from keyplane.simulator.config import SimulatorConfig
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


def _image_url(model: str, size: str, quality: str, prompt: str, index: int) -> str:
    key = orjson.dumps([model, size, quality, prompt, index])
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
    data: list[JSON] = []
    for index in range(n):
        image: JSON = (
            {"b64_json": _PNG_1X1_B64}
            if fmt == "b64_json"
            else {"url": _image_url(model, size, quality, prompt, index)}
        )
        if model == "dall-e-3":
            image["revised_prompt"] = prompt
        data.append(image)
    return 200, {"created": int(time.time()), "data": data}


def _gpt_image(body: JSON, prompt: str, n: int, quality: str, size: str) -> JSON:
    """gpt-image-1's answer: ``n`` images as base64, with the tokens they cost."""
    output_format = choice(body, "output_format", GPT_IMAGE_FORMATS, "png", "gpt-image-1")
    background = choice(body, "background", GPT_IMAGE_BACKGROUNDS, "auto", "gpt-image-1")
    quality = GPT_IMAGE_AUTO[0] if quality == "auto" else quality
    size = GPT_IMAGE_AUTO[1] if size == "auto" else size
    text = text_tokens(prompt)
    output = n * GPT_IMAGE_TOKENS[quality][size]
    usage = {
        "total_tokens": text + output, "input_tokens": text, "output_tokens": output,
        "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
    }  # fmt: skip
    return {
        "created": int(time.time()), "data": [{"b64_json": _PNG_1X1_B64} for _ in range(n)],
        "background": "opaque" if background == "auto" else background,
        "output_format": output_format, "quality": quality, "size": size, "usage": usage,
    }  # fmt: skip
