"""Text that people type and others read (names, notes): no control characters, which a terminal
or a log would act on (an escape sequence in a key's name could clear the screen of whoever lists
the keys) and which PostgreSQL may refuse (U+0000)."""

from __future__ import annotations

import unicodedata

from keyplane.errors import InvalidRequest

# The two format characters that writing needs: Persian and Indic scripts join or keep apart
# letters with them, and emoji sequences (a family, a profession) are built with the joiner.
JOINERS = frozenset("\u200c\u200d")


def refuse_control_characters(value: str, what: str, param: str) -> str:
    """``value`` as it is; raises InvalidRequest if it holds a control or format character
    (Unicode category C: ESC, NUL, newlines, direction marks, invisible tags...) other than the
    zero-width joiner and non-joiner."""
    if any(unicodedata.category(c).startswith("C") and c not in JOINERS for c in value):
        raise InvalidRequest(f"{what} cannot contain control characters.", param=param)
    return value
