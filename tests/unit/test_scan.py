"""Finding keys in text: keyplane's by prefix and checksum (no false positives), providers' by
their shapes."""

from __future__ import annotations

from keyplane.keys.format import KeyKind, checksum, generate
from keyplane.keys.scan import find

OPENAI = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" + "T3BlbkFJ" + "k1L2m3N4o5P6q7R8s9T0"


def test_keyplane_keys_are_found_by_prefix_and_checksum_only() -> None:
    text, _ = generate(KeyKind.PROJECT)
    admin, _ = generate(KeyKind.ADMIN)
    broken = text[:-1] + ("a" if text[-1] != "a" else "b")  # the checksum fails
    lines = f'API_KEY = "{text}"\nnothing here\n{broken} and {admin}\n'
    found = find(lines)
    assert [(f.line, f.kind, f.text) for f in found] == [
        (1, "keyplane project key", text), (3, "keyplane admin key", admin),
    ]  # fmt: skip
    assert found[0].redacted == f"sk-kp-proj-…{text[-4:]}" and text not in repr(found[0].key)


def test_provider_keys_are_found_and_lookalikes_are_not() -> None:
    head = "sk-kp-proj-" + "x" * 44
    forged = head + checksum(head)  # a valid checksum: a keyplane key's shape, found as one
    text = f"OPENAI_API_KEY={OPENAI}\npip install sk-learn scikit\n{forged}\n"
    found = find(text)
    assert [(f.line, f.kind) for f in found] == [(1, "OpenAI key"), (3, "keyplane project key")]
    assert found[0].redacted == "sk-proj…s9T0"
