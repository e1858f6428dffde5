"""Finding API keys in text (BRIEF C8, ``keyplane scan``): keyplane's own keys by their prefix and
checksum (a random string that merely looks like one fails the checksum: no false positives), and
upstream providers' keys by their published shapes. Pure: the caller reads files and history."""

from __future__ import annotations

import re
from dataclasses import dataclass

from keyplane.keys.format import KEY_PATTERN, ParsedKey, parse, redact

# Upstream providers' secret keys. OpenAI's carry "T3BlbkFJ" ("OpenAI" in base64) in the middle,
# legacy and project keys alike; Anthropic's start with sk-ant-api03- or sk-ant-admin01-.
PROVIDERS = {
    "OpenAI key": re.compile(r"\bsk-[A-Za-z0-9_-]{0,200}T3BlbkFJ[A-Za-z0-9_-]{16,}"),
    "Anthropic key": re.compile(r"\bsk-ant-(?:api03|admin01)-[A-Za-z0-9_-]{60,}"),
}


@dataclass(frozen=True, slots=True)
class Found:
    """A key found at ``line`` (from 1) of some text; ``key`` is set for keyplane's own."""

    line: int
    kind: str  # "keyplane project key", "OpenAI key", …
    text: str  # the whole key, kept in memory only (shown redacted)
    key: ParsedKey | None

    @property
    def redacted(self) -> str:
        if self.key is not None:
            return redact(self.text)
        return f"{self.text[:7]}…{self.text[-4:]}"


_NAMES = {"proj": "project key", "svcacct": "service account key", "admin": "admin key"}


def find(text: str) -> list[Found]:
    """Every keyplane key with a valid checksum, and every provider key, in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if "sk-" not in line:
            continue
        for m in KEY_PATTERN.finditer(line):
            parsed = parse(m.group(0))
            if parsed is not None:
                kind = f"keyplane {_NAMES[parsed.kind.value]}"
                found.append(Found(number, kind, m.group(0), parsed))
        for kind, pattern in PROVIDERS.items():
            found.extend(Found(number, kind, m.group(0), None) for m in pattern.finditer(line))
    return found
