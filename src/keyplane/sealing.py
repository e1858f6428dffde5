"""Keys for sealing values at rest (Fernet) that keyplane must read back: TOTP secrets, webhook
signing secrets, email bodies with single-use links, and the upstreams' provider keys written in
the configuration (``sealed:…``, from ``keyplane seal``). Each purpose gets its own key, derived
from the operator's encryption key, which lives outside the database.

Each sealed value records which encryption key sealed it: ``<key id>:<Fernet token>``, the key id
being 8 hex characters of an HMAC of a fixed label under the key (it names the key without
revealing it). Values sealed before key ids were recorded are a bare token, opened by trying each
key. Rotating the encryption key: the new one seals, the previous ones (``encryption_key_previous``)
still open what they sealed, and ``keyplane reseal`` seals everything again with the new one, after
which the previous ones can go (``keyplane secrets status`` says so). ``reseal`` cannot rewrite the
configuration: it names the upstream keys there that open with a previous key only, to be sealed
again by hand."""

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


KEY_ID_LABEL = b"keyplane/encryption-key-id/v1"
_HEX = frozenset("0123456789abcdef")


def key_id(master: bytes) -> str:
    """The encryption key's id, recorded with each value it seals: 8 hex characters of
    HMAC-SHA-256(key, a fixed label). It tells keys apart and cannot be turned back into one."""
    return hmac.new(master, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:8]


def recorded_key_id(stored: str) -> str | None:
    """The id of the key a sealed value records, or None (sealed before ids were recorded)."""
    kid, sep, _ = stored.partition(":")
    return kid if sep and len(kid) == 8 and _HEX.issuperset(kid) else None


class Sealer:
    """Seals for one purpose (``label``) with the first of ``masters`` (the current encryption
    key) and opens what any of them sealed (the previous keys, while a rotation is under way)."""

    def __init__(self, masters: Sequence[bytes], label: str) -> None:
        if not masters:
            raise ValueError("no encryption key")
        self.current_id = key_id(masters[0])
        self._by_id: dict[str, Fernet] = {}
        for master in masters:
            self._by_id.setdefault(key_id(master), Fernet(derive_key(master, label)))
        self.ids = tuple(self._by_id)  # the current key's first
        # For tokens that are not kept at rest (a two-factor setup in a form): no key id.
        self.fernet = MultiFernet(list(self._by_id.values()))

    def seal(self, secret: str) -> str:
        token = self._by_id[self.current_id].encrypt(secret.encode())
        return f"{self.current_id}:{token.decode('ascii')}"

    def open(self, stored: str) -> str:
        """The secret in a sealed value. Raises InvalidToken when none of the keys opens it (the
        key it records is not among them, it was sealed for another purpose, it is no token)."""
        return self.open_with(stored)[0]

    def open_with(self, stored: str) -> tuple[str, str]:
        """(The secret, the id of the key that opened it.) Raises InvalidToken."""
        kid = recorded_key_id(stored)
        token = stored[9:] if kid is not None else stored
        data = token.strip().encode("ascii", "replace")
        if kid is not None:
            fernet = self._by_id.get(kid)
            if fernet is None:
                raise InvalidToken
            return fernet.decrypt(data).decode(), kid
        for kid, fernet in self._by_id.items():
            try:
                return fernet.decrypt(data).decode(), kid
            except InvalidToken:
                continue
        raise InvalidToken

    def opens(self, stored: str) -> str | None:
        """The id of the key that opens ``stored``, or None (none of them does)."""
        try:
            return self.open_with(stored)[1]
        except (InvalidToken, UnicodeError):
            return None

    def reseal(self, stored: str) -> str | None:
        """``stored`` sealed again with the current key; None when it is sealed with it already.
        Raises InvalidToken."""
        if recorded_key_id(stored) == self.current_id:
            return None
        return self.seal(self.open(stored))


def seal(masters: Sequence[bytes], label: str, secret: str) -> str:
    """``secret`` sealed with the current encryption key, as written in the configuration."""
    return SEALED + Sealer(masters, label).seal(secret)


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED)


def unseal(masters: Sequence[bytes], label: str, value: str) -> tuple[str, int]:
    """Opens a ``sealed:…`` value: (the secret, which of ``masters`` opened it: 0 is the current
    encryption key, above a previous one). Raises InvalidToken when none of them does (sealed with
    another key, or for another purpose, or not a token at all)."""
    sealer = Sealer(masters, label)
    secret, kid = sealer.open_with(value.removeprefix(SEALED).strip())
    return secret, sealer.ids.index(kid)
