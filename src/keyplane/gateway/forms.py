"""The multipart/form-data bodies of OpenAI's speech-to-text endpoints: their text fields, and how
large the uploaded file is (what the hold bounds the audio's duration by).

The body is forwarded to the upstream as it came; this only reads it (with python-multipart's
streaming parser, the one the Admin API's forms use through Starlette).
"""

from __future__ import annotations

import logging
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from keyplane.gateway.errors import ApiError, bad_request

MAX_FIELD_BYTES = 256 * 1024  # a text field (a prompt, say) at most; the file is only measured
MAX_PARTS = 64
# The parser logs each malformed body it meets as a warning: a client could fill the logs with them.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)


class Form:
    """A parsed form: its text fields (the last of each name) and its ``file`` part's size."""

    __slots__ = ("fields", "file_bytes", "has_file")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.file_bytes = 0
        self.has_file = False


def parse_form(body: bytes, content_type: bytes | None) -> Form:
    """Raises a 400 ApiError when the body is not a well-formed multipart/form-data body."""
    kind, params = parse_options_header(content_type or b"")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise bad_request(
            "This endpoint takes a multipart/form-data body (a file and form fields), with its "
            "boundary in the Content-Type header."
        )
    form = Form()
    state: dict[str, Any] = {"parts": 0}
    header: list[bytes] = []
    value: list[bytes] = []
    data: list[bytes] = []
    seen: set[str] = set()

    def part_begin() -> None:
        state.update(name=None, filename=None, size=0)
        state["parts"] += 1
        data.clear()
        if state["parts"] > MAX_PARTS:
            raise bad_request(f"A form may have at most {MAX_PARTS} parts.")

    def header_end() -> None:
        if b"".join(header).strip().lower() == b"content-disposition":
            _, disposition = parse_options_header(b"".join(value))
            name = disposition.get(b"name")
            filename = disposition.get(b"filename")
            state["name"] = name.decode("utf-8", "replace") if name is not None else None
            state["filename"] = filename
        header.clear()
        value.clear()

    def part_data(chunk: bytes, start: int, end: int) -> None:
        state["size"] += end - start
        if state["filename"] is None:
            if state["size"] > MAX_FIELD_BYTES:
                raise bad_request(f"A form field may be at most {MAX_FIELD_BYTES} bytes.")
            data.append(chunk[start:end])

    def part_end() -> None:
        name = state["name"]
        if name is None:
            return
        # One value a name (a list's name ends in []): an upstream reading the first of two
        # models, say, would not serve what keyplane checked and held for.
        if name in seen and not name.endswith("[]"):
            raise bad_request(f"The form field '{name[:100]}' appears more than once.", param=name)
        seen.add(name)
        if state["filename"] is not None or name == "file":
            if name == "file":
                form.has_file, form.file_bytes = True, state["size"]
            return
        form.fields[name] = b"".join(data).decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": part_begin,
            "on_header_field": lambda d, s, e: header.append(d[s:e]),
            "on_header_value": lambda d, s, e: value.append(d[s:e]),
            "on_header_end": header_end,
            "on_part_data": part_data,
            "on_part_end": part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except (MultipartParseError, ValueError):
        raise bad_request("The multipart/form-data body is malformed.") from None
    return form
