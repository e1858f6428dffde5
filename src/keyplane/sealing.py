"""Keys for sealing values at rest (Fernet) that keyplane must read back: TOTP secrets, webhook
signing secrets, email bodies with single-use links. Each purpose gets its own key, derived from
the operator's encryption key, which lives outside the database.

Rotating the encryption key: the new one seals, the previous ones (``encryption_key_previous``)
still open what they sealed, and ``keyplane reseal`` seals everything again with the new one, after
which the previous ones can go."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from cryptography.fernet import Fernet, MultiFernet

# The purposes (each one's key is derived from the encryption key under its label).
OUTBOX = "keyplane/outbox/v1"
WEBHOOKS = "keyplane/webhooks/v1"
TOTP = "keyplane/totp-secret/v1"


def derive_key(master: bytes, label: str) -> bytes:
    """A Fernet key for one purpose (``label``), derived from the operator's encryption key."""
    return base64.urlsafe_b64encode(hmac.new(master, label.encode(), hashlib.sha256).digest())


def sealer(masters: Sequence[bytes], label: str) -> MultiFernet:
    """Seals with the key derived from the first of ``masters`` (the current encryption key) and
    opens what any of them sealed (the previous keys, while a rotation is under way)."""
    if not masters:
        raise ValueError("no encryption key")
    return MultiFernet([Fernet(derive_key(master, label)) for master in masters])
