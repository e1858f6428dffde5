"""Text that people type and others read (names, notes): no control characters, which a terminal
or a log would act on (an escape sequence in a key's name could clear the screen of whoever lists
the keys) and which PostgreSQL may refuse (U+0000)."""

from __future__ import annotations

import unicodedata

from keyplane.errors import InvalidRequest


def refuse_control_characters(value: str, what: str, param: str) -> str:
    """``value`` as it is; raises InvalidRequest if it holds a control or format character
    (Unicode category C: ESC, NUL, newlines, zero-width and direction marks...)."""
    if any(unicodedata.category(c).startswith("C") for c in value):
        raise InvalidRequest(f"{what} cannot contain control characters.", param=param)
    return value
