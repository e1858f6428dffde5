"""Sealing at rest (sealing.py): each value records the id of the encryption key that sealed it;
the previous keys open what they sealed; a value no configured key opens raises InvalidToken."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet, InvalidToken

from keyplane import sealing

OLD, NEW, LOST = b"o" * 48, b"n" * 48, b"l" * 48


def test_a_key_id_names_the_key_without_revealing_it() -> None:
    kid = sealing.key_id(OLD)
    assert len(kid) == 8 and set(kid) <= set("0123456789abcdef")
    assert kid == sealing.key_id(OLD) != sealing.key_id(NEW)
    assert kid not in OLD.decode() and kid not in OLD.hex()


def test_a_sealed_value_records_the_current_key_and_never_holds_the_secret() -> None:
    sealer = sealing.Sealer([NEW, OLD], sealing.WEBHOOKS)
    stored = sealer.seal("whsec_the-secret")
    assert "the-secret" not in stored
    assert sealing.recorded_key_id(stored) == sealing.key_id(NEW) == sealer.current_id
    assert sealer.open(stored) == "whsec_the-secret"
    assert sealer.opens(stored) == sealing.key_id(NEW)


def test_previous_keys_open_what_they_sealed_and_reseal_moves_it_to_the_current_key() -> None:
    stored = sealing.Sealer([OLD], sealing.TOTP).seal("JBSWY3DPEHPK3PXP")
    rotating = sealing.Sealer([NEW, OLD], sealing.TOTP)
    assert rotating.open_with(stored) == ("JBSWY3DPEHPK3PXP", sealing.key_id(OLD))
    again = rotating.reseal(stored)
    assert again is not None and sealing.recorded_key_id(again) == sealing.key_id(NEW)
    assert rotating.reseal(again) is None  # (sealed with the current key already)
    assert sealing.Sealer([NEW], sealing.TOTP).open(again) == "JBSWY3DPEHPK3PXP"
    with pytest.raises(InvalidToken):  # the old key removed: what it sealed no longer opens
        sealing.Sealer([NEW], sealing.TOTP).open(stored)


def test_a_value_sealed_before_key_ids_were_recorded_still_opens() -> None:
    legacy = Fernet(sealing.derive_key(OLD, sealing.OUTBOX)).encrypt(b"a secret link").decode()
    assert sealing.recorded_key_id(legacy) is None
    rotating = sealing.Sealer([NEW, OLD], sealing.OUTBOX)
    assert rotating.open_with(legacy) == ("a secret link", sealing.key_id(OLD))
    assert rotating.opens(legacy) == sealing.key_id(OLD)
    assert sealing.Sealer([NEW], sealing.OUTBOX).opens(legacy) is None


def test_a_value_of_another_key_or_purpose_does_not_open() -> None:
    lost = sealing.Sealer([LOST], sealing.UPSTREAMS).seal("sk-provider")
    other_purpose = sealing.Sealer([NEW], sealing.WEBHOOKS).seal("sk-provider")
    sealer = sealing.Sealer([NEW, OLD], sealing.UPSTREAMS)
    for stored in (lost, other_purpose, "not a token", "0123abcd:garbage"):
        with pytest.raises(InvalidToken):
            sealer.open(stored)
        assert sealer.opens(stored) is None


def test_configuration_values_keep_their_marker() -> None:
    value = sealing.seal([NEW], sealing.UPSTREAMS, "sk-provider")
    assert value.startswith("sealed:" + sealing.key_id(NEW) + ":")
    assert sealing.unseal([NEW], sealing.UPSTREAMS, value) == ("sk-provider", 0)
    assert sealing.unseal([OLD, NEW], sealing.UPSTREAMS, value) == ("sk-provider", 1)
