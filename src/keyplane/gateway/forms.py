"""The multipart/form-data bodies of OpenAI's upload endpoints (speech to text, image edits and
variations): their text fields, and how large each uploaded file is (what a hold bounds an audio's
duration, or an image's tokens, by).

The body is forwarded to the upstream as it came; this only reads it (with python-multipart's
streaming parser, the one the Admin API's forms use through Starlette).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from keyplane.gateway.errors import ApiError, bad_request

MAX_FIELD_BYTES = 256 * 1024  # a text field (a prompt, say) at most; the file is only measured
MAX_PARTS = 64
# The parser logs each malformed body it meets as a warning: a client could fill the logs with them.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)
# A header parameter's name (``; boundary=``), wherever it is: in a quoted value too, which other
# parsers may split differently (an odd value refused is the price of seeing every name they might).
_PARAMETER = re.compile(rb";[ \t]*([^ \t=;]+)[ \t]*=")
_PHP_UNDERSCORES = str.maketrans({" ": "_", ".": "_", "[": "_"})


class Form:
    """A parsed form: its text fields (one of each name) and its files' names and sizes, in the
    order they came."""

    __slots__ = ("fields", "files")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.files: list[tuple[str, int]] = []

    def size(self, name: str) -> int | None:
        """The size of the file part ``name`` (None: there is none)."""
        for part, size in self.files:
            if part == name:
                return size
        return None


def parse_form(
    body: bytes, content_type: bytes | None, reads: frozenset[str],
    file_names: frozenset[str] = frozenset({"file"}),
) -> Form:  # fmt: skip
    """Raises a 400 ApiError when the body is not a well-formed multipart/form-data body, or is
    one another parser could read otherwise where keyplane reads it: a field of ``reads`` (the
    names keyplane reads, as written) given twice (but a list's, named ``…[]``), sent as a file
    when it is text, or under a name another parser reads as it (``_read_as``). A part with a
    filename, or named in ``file_names`` (with or without one), is a file: measured, not read."""
    kind, params = parse_options_header(content_type or b"")
    _check_parameters(content_type or b"", b"boundary", "The Content-Type header")
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
        state.update(name=None, filename=None, size=0, named=False)
        state["parts"] += 1
        data.clear()
        if state["parts"] > MAX_PARTS:
            raise bad_request(f"A form may have at most {MAX_PARTS} parts.")

    def header_end() -> None:
        if b"".join(header).strip().lower() == b"content-disposition":
            # (Each parser reads a part's name its own way from an ambiguous one: python-multipart
            # the last of two, Go's the first header of two, or none of a part not "form-data".)
            if state["named"]:
                raise bad_request("A form part has more than one Content-Disposition header.")
            state["named"] = True
            raw = b"".join(value)
            kind, disposition = parse_options_header(raw)
            _check_parameters(raw, b"name", "A form part's Content-Disposition header")
            if kind != b"form-data":
                raise bad_request(
                    "A form part's Content-Disposition must be form-data, not "
                    f"{kind[:40].decode('latin-1')!r}."
                )
            name = disposition.get(b"name")
            filename = disposition.get(b"filename")
            state["name"] = name.decode("utf-8", "replace") if name is not None else None
            state["filename"] = filename
        header.clear()
        value.clear()

    def part_data(chunk: bytes, start: int, end: int) -> None:
        state["size"] += end - start
        if state["filename"] is None and state["name"] not in file_names:
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
        if name not in reads:
            meant = _read_as(name, reads)
            if meant is not None:
                raise bad_request(
                    f"The form field '{name[:100]}' may be read as '{meant}' by an upstream that "
                    f"decodes or shortens field names, which keyplane reads only as written, so "
                    f"it could serve a request keyplane did not check or hold money for. Send "
                    f"'{meant}', exactly so written.",
                    param=name[:100],
                )  # fmt: skip
        elif state["filename"] is not None and name not in file_names:
            raise bad_request(
                f"The form field '{name}' is text, not a file: send it without a filename.",
                param=name,
            )  # fmt: skip
        if state["filename"] is not None or name in file_names:
            form.files.append((name, state["size"]))
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
        # (A body cut short, before its closing boundary, is no form either: the parser takes it.)
        complete = parser.state == MultipartState.END
    except ApiError:
        raise
    except (MultipartParseError, ValueError):
        complete = False
    if not complete:
        raise bad_request("The multipart/form-data body is malformed.")
    return form


def _read_as(name: str, reads: frozenset[str]) -> str | None:
    """The field of ``reads`` that some parser reads a part named ``name`` (not one of them) as,
    if any: percent-decoded (``mod%65l``), stripped of brackets (Rack's and PHP's ``model[]``,
    ``model[x]``, Rack's ``[model]``) and of spaces around it, or with PHP's underscores for the
    spaces, dots and an unclosed bracket of a name (``response.format``, ``response[format``)."""
    decoded = unquote(name)
    for read in (
        decoded,
        decoded.strip().lstrip("[]").partition("[")[0].rstrip("]").strip(),
        decoded.lstrip(" ").translate(_PHP_UNDERSCORES),
    ):
        if read in reads:
            return read
    return None


def _check_parameters(value: bytes, read: bytes, what: str) -> None:
    """Raises a 400 ApiError when header ``value`` gives a parameter twice (names compared
    regardless of case, as they are: RFC 2045), or gives ``read``, the one keyplane reads, in RFC
    2231's extended form (``boundary*=``, ``name*0=``: RFC 7578 forbids it in forms; python-multipart
    ignores it, Go's parser prefers it to the plain one)."""
    names = [name.lower() for name in _PARAMETER.findall(value)]
    for i, name in enumerate(names):
        shown = name[:40].decode("latin-1")
        if name in names[:i]:
            raise bad_request(f"{what} gives the parameter '{shown}' more than once.")
        if name != read and name.partition(b"*")[0] == read:
            raise bad_request(
                f"{what} gives '{shown}': send '{read.decode()}' plainly (RFC 7578 4.2)."
            )


def with_field(body: bytes, content_type: bytes | None, name: str, value: str) -> bytes:
    """``body`` (a form ``parse_form`` read) with a text field ``name`` added as its first part."""
    _, params = parse_options_header(content_type or b"")
    delimiter = b"--" + params[b"boundary"]
    start = body.find(delimiter)  # (the parser takes no preamble: the first part starts here)
    part = b'%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (
        delimiter, name.encode(), value.encode(),
    )  # fmt: skip
    return body[:start] + part + body[start:]
