"""Reading a ``multipart/form-data`` body (speech to text, image edits and variations): its text
fields and its files, a body that is no form refused with 400."""

from __future__ import annotations

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartState, parse_options_header

from keyplane.simulator.params import RequestError


class Form:
    """The parts of a multipart/form-data body, fed by ``MultipartParser``'s callbacks: text
    fields and files (parts with a ``filename``) by name, the last of a name winning, and every
    file in ``uploads``, in order (``image[]`` names several)."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.files: dict[str, bytes] = {}
        self.uploads: list[tuple[str, bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._name, self._value, self._data = bytearray(), bytearray(), bytearray()

    def part_begin(self) -> None:
        self._headers.clear()
        self._data.clear()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[bytes(self._name).strip().lower()] = bytes(self._value).strip()
        self._name.clear()
        self._value.clear()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if name is None:
            return
        key = name.decode("utf-8", "replace")
        if b"filename" in options:
            self.files[key] = bytes(self._data)
            self.uploads.append((key, self.files[key]))
        else:
            self.fields[key] = self._data.decode("utf-8", "replace")


def read_form(raw: bytes, content_type: str) -> Form:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise RequestError(400, "Expected a multipart/form-data body.")
    form = Form()
    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": form.part_begin,
                "on_header_field": form.header_field,
                "on_header_value": form.header_value,
                "on_header_end": form.header_end,
                "on_part_data": form.part_data,
                "on_part_end": form.part_end,
            },
        )
        parser.write(raw)
        parser.finalize()
        complete = parser.state == MultipartState.END
    except FormParserError:
        complete = False
    if not complete:
        message = "We could not parse the multipart/form-data body of your request."
        raise RequestError(400, message) from None
    return form
