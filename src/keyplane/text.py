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
    (Unicode category C: ESC, NUL, newlines, direction marks, invisible tags...) other than a
    zero-width joiner or non-joiner between two characters of a script that uses them (not ASCII:
    "Ow\u200cner" would pass for "Owner")."""
    for i, c in enumerate(value):
        if not unicodedata.category(c).startswith("C"):
            continue
        if c in JOINERS and 0 < i < len(value) - 1 and _joins(value[i - 1], value[i + 1]):
            continue
        raise InvalidRequest(f"{what} cannot contain control characters.", param=param)
    return value


def _joins(before: str, after: str) -> bool:
    """Whether a joiner between these two characters can do something: both are visible and
    outside ASCII (Arabic, Persian or Indic letters and marks, emoji)."""
    return all(
        not ch.isascii() and not unicodedata.category(ch).startswith(("C", "Z"))
        for ch in (before, after)
    )
