"""Keys for sealing values at rest (Fernet) that keyplane must read back: TOTP secrets, email
bodies with single-use links. Each purpose gets its own key, derived from the operator's
encryption key, which lives outside the database."""

from __future__ import annotations

import base64
import hashlib
import hmac


def derive_key(master: bytes, label: str) -> bytes:
    """A Fernet key for one purpose (``label``), derived from the operator's encryption key."""
    return base64.urlsafe_b64encode(hmac.new(master, label.encode(), hashlib.sha256).digest())
