"""The secret-key format: layout, checksum, parsing, redaction and the keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import string
import zlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keyplane.keys import format as keyfmt
from keyplane.keys.format import KEY_PATTERN, KeyKind

# The spec's alphabet, written out independently of keyplane.ids.
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
PREFIXES = {KeyKind.PROJECT: "sk-kp-proj-", KeyKind.SERVICE_ACCOUNT: "sk-kp-svcacct-"}
PREFIXES[KeyKind.ADMIN] = "sk-kp-admin-"
PEPPER = b"pepper-one-" + b"x" * 32


def decode62(text: str) -> int:
    n = 0
    for ch in text:
        n = n * 62 + ALPHABET.index(ch)
    return n


def oracle_checksum(head: str) -> str:
    n = zlib.crc32(head.encode("ascii"))
    out = ""
    for _ in range(6):
        n, r = divmod(n, 62)
        out = ALPHABET[r] + out
    return out


def build_key(kind: KeyKind, public_id: str, secret: str) -> str:
    head = PREFIXES[kind] + public_id + secret
    return head + oracle_checksum(head)


kinds = st.sampled_from(list(KeyKind))
public_ids = st.text(alphabet=ALPHABET, min_size=12, max_size=12)
secrets_ = st.text(alphabet=ALPHABET, min_size=32, max_size=32)
valid_keys = st.builds(build_key, kinds, public_ids, secrets_)
fast = settings(max_examples=300, deadline=None, database=None)


@pytest.mark.parametrize("kind", list(KeyKind))
def test_generated_key_has_the_documented_layout(kind: KeyKind) -> None:
    text, parsed = keyfmt.generate(kind)
    prefix = PREFIXES[kind]

    assert KEY_PATTERN.fullmatch(text)
    assert text.startswith(prefix)
    body = text[len(prefix) :]
    assert len(body) == 12 + 32 + 6
    assert body[:12] == parsed.public_id
    assert body[12:44] == parsed.secret
    assert decode62(body[44:]) == zlib.crc32(text[:-6].encode("ascii"))
    assert parsed.kind is kind


@pytest.mark.parametrize("kind", list(KeyKind))
def test_parse_round_trips_a_generated_key(kind: KeyKind) -> None:
    text, parsed = keyfmt.generate(kind)
    assert keyfmt.parse(text) == parsed
    assert keyfmt.key_id(parsed.public_id) == "key_" + parsed.public_id


@fast
@given(kind=kinds, public_id=public_ids, secret=secrets_)
def test_parse_accepts_any_correctly_checksummed_key(
    kind: KeyKind, public_id: str, secret: str
) -> None:
    parsed = keyfmt.parse(build_key(kind, public_id, secret))
    assert parsed == keyfmt.ParsedKey(kind, public_id, secret)


@fast
@given(key=valid_keys, data=st.data())
def test_every_single_character_mutation_is_rejected(key: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(key) - 1), label="position")
    new = data.draw(
        st.one_of(st.sampled_from(ALPHABET + "-_"), st.characters()).filter(
            lambda c: c != key[pos]
        ),
        label="replacement",
    )
    mutated = key[:pos] + new + key[pos + 1 :]
    assert keyfmt.parse(mutated) is None


@fast
@given(key=valid_keys, data=st.data())
def test_truncated_keys_are_rejected(key: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(key) - 1))
    assert keyfmt.parse(key[:cut]) is None


@fast
@given(key=valid_keys, extra=st.text(min_size=1, max_size=20), before=st.booleans())
def test_extended_keys_are_rejected(key: str, extra: str, before: bool) -> None:
    assert keyfmt.parse(extra + key if before else key + extra) is None


@fast
@given(text=st.text(max_size=80))
def test_random_strings_are_rejected(text: str) -> None:
    assert keyfmt.parse(text) is None


@fast
@given(kind=kinds, body=st.text(alphabet=ALPHABET, min_size=50, max_size=50))
def test_well_shaped_keys_with_a_wrong_checksum_are_rejected(kind: KeyKind, body: str) -> None:
    head = PREFIXES[kind] + body[:44]
    assume(body[44:] != oracle_checksum(head))
    assert keyfmt.parse(PREFIXES[kind] + body) is None


def test_key_pattern_finds_a_key_inside_text() -> None:
    text, _ = keyfmt.generate(KeyKind.PROJECT)
    found = KEY_PATTERN.search(f'OPENAI_API_KEY="{text}"\n')
    assert found is not None
    assert found.group(0) == text


@pytest.mark.parametrize("kind", list(KeyKind))
def test_redact_shows_the_prefix_and_last_four(kind: KeyKind) -> None:
    text, parsed = keyfmt.generate(kind)
    shown = keyfmt.redact(text)
    assert shown == f"{PREFIXES[kind]}…{text[-4:]}"
    assert parsed.secret not in shown
    assert parsed.public_id not in shown


def test_redact_of_a_project_key() -> None:
    key = build_key(KeyKind.PROJECT, "A" * 12, "b" * 32)
    assert keyfmt.redact(key) == "sk-kp-proj-…" + key[-4:]


def test_hash_secret_is_hmac_sha256_and_deterministic_per_pepper() -> None:
    _, parsed = keyfmt.generate(KeyKind.PROJECT)
    first = keyfmt.hash_secret(PEPPER, parsed.secret)

    assert first == keyfmt.hash_secret(PEPPER, parsed.secret)
    assert first == hmac.new(PEPPER, parsed.secret.encode(), hashlib.sha256).hexdigest()
    assert parsed.secret not in first
    assert keyfmt.hash_secret(b"pepper-two-" + b"x" * 32, parsed.secret) != first


def test_hash_secret_differs_across_secrets() -> None:
    a = keyfmt.generate(KeyKind.PROJECT)[1].secret
    b = keyfmt.generate(KeyKind.PROJECT)[1].secret
    assert keyfmt.hash_secret(PEPPER, a) != keyfmt.hash_secret(PEPPER, b)


def test_secret_matches_only_the_right_secret_and_pepper() -> None:
    _, parsed = keyfmt.generate(KeyKind.SERVICE_ACCOUNT)
    stored = keyfmt.hash_secret(PEPPER, parsed.secret)
    wrong = parsed.secret[:-1] + ("a" if parsed.secret[-1] != "a" else "b")

    assert keyfmt.secret_matches(PEPPER, parsed.secret, stored)
    assert not keyfmt.secret_matches(PEPPER, wrong, stored)
    assert not keyfmt.secret_matches(b"another-pepper", parsed.secret, stored)


def test_a_thousand_generated_secrets_are_distinct_base62() -> None:
    parsed = [keyfmt.generate(KeyKind.PROJECT)[1] for _ in range(1000)]
    secrets = {p.secret for p in parsed}

    assert len(secrets) == 1000
    assert len({p.public_id for p in parsed}) == 1000
    assert set("".join(secrets)) <= set(ALPHABET)
    assert all(len(s) == 32 for s in secrets)


# Rotating the pepper (Peppers): each hash records its pepper's id.
OLD_PEPPER = b"old-pepper-" + b"o" * 32
NEW_PEPPER = b"new-pepper-" + b"n" * 32


def test_a_pepper_id_names_the_pepper_without_revealing_it() -> None:
    pid = keyfmt.pepper_id(OLD_PEPPER)
    assert len(pid) == 8 and set(pid) <= set("0123456789abcdef")
    assert pid == keyfmt.pepper_id(OLD_PEPPER) != keyfmt.pepper_id(NEW_PEPPER)
    assert pid not in OLD_PEPPER.decode() and pid not in OLD_PEPPER.hex()
    peppers = keyfmt.Peppers(NEW_PEPPER, [OLD_PEPPER])
    assert "pepper-" not in repr(peppers) and pid in repr(peppers)


def test_new_hashes_use_the_current_pepper_and_record_it() -> None:
    _, parsed = keyfmt.generate(KeyKind.PROJECT)
    peppers = keyfmt.Peppers(NEW_PEPPER, [OLD_PEPPER])
    stored, pid = peppers.hash(parsed.secret)
    assert stored == keyfmt.hash_secret(NEW_PEPPER, parsed.secret)
    assert pid == peppers.current_id == keyfmt.pepper_id(NEW_PEPPER)
    assert peppers.ids == (keyfmt.pepper_id(NEW_PEPPER), keyfmt.pepper_id(OLD_PEPPER))


def test_a_hash_is_checked_with_the_pepper_it_records_while_that_one_is_configured() -> None:
    _, parsed = keyfmt.generate(KeyKind.PROJECT)
    wrong = parsed.secret[:-1] + ("a" if parsed.secret[-1] != "a" else "b")
    old_hash, old_id = keyfmt.Peppers(OLD_PEPPER).hash(parsed.secret)

    rotating = keyfmt.Peppers(NEW_PEPPER, [OLD_PEPPER])
    assert rotating.matches(parsed.secret, old_hash, old_id)
    assert not rotating.matches(wrong, old_hash, old_id)
    # The id is taken at its word: the old hash does not pass as the new pepper's.
    assert not rotating.matches(parsed.secret, old_hash, rotating.current_id)
    # The old pepper removed: the key no longer authenticates.
    assert not keyfmt.Peppers(NEW_PEPPER).matches(parsed.secret, old_hash, old_id)
    # An unknown id, or a pepper listed twice, changes nothing.
    assert not rotating.matches(parsed.secret, old_hash, "00000000")
    assert keyfmt.Peppers(NEW_PEPPER, [OLD_PEPPER, NEW_PEPPER, OLD_PEPPER]).ids == rotating.ids


def test_a_hash_stored_before_peppers_were_recorded_is_tried_with_each() -> None:
    _, parsed = keyfmt.generate(KeyKind.PROJECT)
    old_hash = keyfmt.hash_secret(OLD_PEPPER, parsed.secret)
    assert keyfmt.Peppers(NEW_PEPPER, [OLD_PEPPER]).matches(parsed.secret, old_hash, None)
    assert not keyfmt.Peppers(NEW_PEPPER).matches(parsed.secret, old_hash, None)
