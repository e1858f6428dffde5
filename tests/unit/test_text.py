"""Names people type: every script's writing is accepted, what a terminal or a reader would be
fooled by is not."""

from __future__ import annotations

import pytest

from keyplane.errors import InvalidRequest
from keyplane.text import refuse_control_characters

ACCEPTED = [
    "Zoë Ångström",
    "می\u200cخواهم",  # Persian: the non-joiner keeps two letters apart
    "क\u094d\u200dष",  # Devanagari: the joiner asks for a half form
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a family emoji, joined
    "\U0001f1eb\U0001f1f7 équipe",  # a flag
    "東京チーム",
]
REFUSED = [
    "evil\x1b[2J",  # a terminal escape: clears whoever lists it
    "nul\x00",
    "two\nlines",
    "gnp.exe\u202e",  # right-to-left override: "exe.png" on screen
    "zero\u200bwidth",  # an invisible space between look-alike names
    "tag\U000e0041",  # an invisible tag character (hidden text)
    "Ow\u200cner",  # a joiner between Latin letters does nothing but look like "Owner"
    "\u200d",  # a name of joiners alone: invisible
    "\u200c\u200cname",
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_the_joiners_that_scripts_and_emoji_need_are_accepted(name: str) -> None:
    assert refuse_control_characters(name, "A name", "name") == name


@pytest.mark.parametrize("name", REFUSED)
def test_controls_direction_marks_and_invisible_characters_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match="cannot contain control characters"):
        refuse_control_characters(name, "A name", "name")
