"""Keys for sealing values at rest (Fernet) that keyplane must read back: TOTP secrets, webhook
signing secrets, email bodies with single-use links, and the upstreams' provider keys written in
the configuration (``sealed:…``, from ``keyplane seal``). Each purpose gets its own key, derived
from the operator's encryption key, which lives outside the database.

Rotating the encryption key: the new one seals, the previous ones (``encryption_key_previous``)
still open what they sealed, and ``keyplane reseal`` seals everything again with the new one, after
which the previous ones can go. ``reseal`` cannot rewrite the configuration: it names the upstream
keys there that open with a previous key only, to be sealed again by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

# The purposes (each one's key is derived from the encryption key under its label).
OUTBOX = "keyplane/outbox/v1"
WEBHOOKS = "keyplane/webhooks/v1"
TOTP = "keyplane/totp-secret/v1"
UPSTREAMS = "keyplane/upstream-key/v1"

# What marks a sealed value written in the configuration (an upstream's api_key); anything else
# there is taken as given, in clear.
SEALED = "sealed:"


def derive_key(master: bytes, label: str) -> bytes:
    """A Fernet key for one purpose (``label``), derived from the operator's encryption key."""
    return base64.urlsafe_b64encode(hmac.new(master, label.encode(), hashlib.sha256).digest())


def sealer(masters: Sequence[bytes], label: str) -> MultiFernet:
    """Seals with the key derived from the first of ``masters`` (the current encryption key) and
    opens what any of them sealed (the previous keys, while a rotation is under way)."""
    if not masters:
        raise ValueError("no encryption key")
    return MultiFernet([Fernet(derive_key(master, label)) for master in masters])


def seal(masters: Sequence[bytes], label: str, secret: str) -> str:
    """``secret`` sealed with the current encryption key, as written in the configuration."""
    return SEALED + sealer(masters, label).encrypt(secret.encode()).decode("ascii")


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED)


def unseal(masters: Sequence[bytes], label: str, value: str) -> tuple[str, int]:
    """Opens a ``sealed:…`` value: (the secret, which of ``masters`` opened it: 0 is the current
    encryption key, above a previous one). Raises InvalidToken when none of them does (sealed with
    another key, or for another purpose, or not a token at all)."""
    token = value.removeprefix(SEALED).strip().encode("ascii", "replace")
    for index, master in enumerate(masters):
        try:
            return Fernet(derive_key(master, label)).decrypt(token).decode(), index
        except InvalidToken:
            continue
    raise InvalidToken
