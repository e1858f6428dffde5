"""Passwords are stored as argon2id hashes with RFC 9106's parameters. (The tests' conftest hashes
with cheaper ones, for speed: this checks what keyplane ships.)"""

from __future__ import annotations

import importlib

from keyplane.accounts import passwords


def test_passwords_are_hashed_with_argon2id_at_rfc_9106_strength() -> None:
    cheap = passwords._hasher
    try:
        importlib.reload(passwords)
        stored = passwords.hash_password("correct horse battery staple")
    finally:
        passwords._hasher = cheap
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert "correct horse" not in stored
    assert passwords.verify_password(stored, "correct horse battery staple")
    assert not passwords.verify_password(stored, "correct horse battery stapler")
    assert not passwords.verify_password("not a hash", "correct horse battery staple")
