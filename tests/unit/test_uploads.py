"""Multipart uploads as the gateway reads them (gateway/forms.py, media.image_form): what an image
edit or variation must carry, what its hold counts, and the model it is forwarded with."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keyplane.gateway import media
from keyplane.gateway.errors import ApiError
from keyplane.gateway.forms import parse_form
from keyplane.usage.pricing import PriceTable

PNG = ("key.png", b"\x89PNG\r\n\x1a\n")


def form(data: dict[str, str], files: Any) -> tuple[bytes, bytes]:
    """(body, content type) as httpx, like the SDK, writes a multipart upload."""
    request = httpx.Request("POST", "http://kp/v1/images/edits", data=data, files=files)
    return request.read(), request.headers["content-type"].encode()


def edit(data: dict[str, str], files: Any) -> tuple[bytes, dict[str, Any], int]:
    body, content_type = form(data, files)
    return media.image_form(body, content_type, "dall-e-2", edit=True)


def refused(data: dict[str, str], files: Any, param: str) -> ApiError:
    with pytest.raises(ApiError) as error:
        edit(data, files)
    assert error.value.status == 400 and error.value.param == param, error.value
    return error.value


def test_a_form_naming_no_model_is_forwarded_naming_the_default() -> None:
    sent, content_type = form({"prompt": "a key", "n": "2"}, {"image": PNG})
    body, fields, files = media.image_form(sent, content_type, "dall-e-2", edit=True)
    assert (fields, files) == ({"model": "dall-e-2", "prompt": "a key", "n": 2}, 1)
    forwarded = parse_form(body, content_type, media.IMAGE_FIELDS, media.IMAGE_FILES)
    assert forwarded.fields == {"model": "dall-e-2", "prompt": "a key", "n": "2"}
    assert forwarded.files == [("image", len(PNG[1]))]
    named, content_type = form({"prompt": "a key", "model": "gpt-image-1"}, {"image": PNG})
    assert media.image_form(named, content_type, "dall-e-2", edit=True)[0] == named  # as it came


def test_every_file_counts_for_the_hold_and_images_are_required() -> None:
    _, _, files = edit({"prompt": "x"}, [("image[]", PNG), ("image[]", PNG), ("mask", PNG)])
    assert files == 3
    refused({"prompt": "x"}, {"mask": PNG}, "image")  # a mask is no image
    refused({"prompt": "x"}, [("image[]", PNG)] * 17, "image")
    refused({}, {"image": PNG}, "prompt")
    _, fields, _ = media.image_form(*form({}, {"image": PNG}), "dall-e-2", edit=False)
    assert "prompt" not in fields  # a variation has none


@pytest.mark.parametrize("n", ["0", "11", "two", "1.5", "", "-1", "٣", "0" * 1000 + "1"])
def test_n_is_an_integer_from_1_to_10(n: str) -> None:
    refused({"prompt": "x", "n": n}, {"image": PNG}, "n")


def test_stream_is_refused_and_dall_e_2_files_are_under_4_mb() -> None:
    assert refused({"prompt": "x", "stream": "true"}, {"image": PNG}, "stream").code == (
        "unsupported_value"
    )
    edit({"prompt": "x", "stream": "false"}, {"image": PNG})
    big = ("big.png", bytes(4 * 1024 * 1024))
    refused({"prompt": "x"}, {"image": big}, "image")
    refused({"prompt": "x"}, {"image": PNG, "mask": big}, "mask")
    edit({"prompt": "x", "model": "gpt-image-1"}, {"image": big})  # (50 MB: the body's limit)


def test_a_body_cut_short_is_malformed() -> None:
    body, content_type = form({"prompt": "x"}, {"image": PNG})
    for cut in (body[:-10], body[: len(body) // 2]):
        with pytest.raises(ApiError) as error:
            parse_form(cut, content_type, media.IMAGE_FIELDS)
        assert error.value.status == 400 and "malformed" in error.value.message


def test_an_uploads_input_is_bounded_by_its_fields_and_its_files_not_its_bytes() -> None:
    price = PriceTable.load().price("gpt-image-1", 2_000_000_000)
    assert price is not None and price.image_input_tokens
    fields = {"model": "gpt-image-1", "prompt": "é", "n": 2}
    tokens, cost = media.upload_input(price, fields, 3)
    text = len("gpt-image-1") + 2 + 1 + 3 * media.IMAGE_TEXT_TOKENS
    assert tokens == text + 3 * price.image_input_tokens
    assert cost == text * price.input_per_m + 3 * price.image_input_tokens * price.image_input_per_m
