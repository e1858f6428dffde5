"""The secret-key format (BRIEF C2).

``sk-kp-<kind>-`` + 12-char public key id + 32-char secret + 6-char base62 CRC32 of everything
before the checksum. The checksum lets the gateway and ``keyplane scan`` reject typos, guesses and
random strings without touching the database; it is not a security control. The secret has
32 * log2(62) ≈ 190 bits from ``secrets``, so a keyed hash (HMAC-SHA-256 with a pepper kept outside
the database) is enough; a slow password hash would only add latency.

The pepper can be rotated (``Peppers``): each stored hash records the id of the pepper that made
it (``pepper_id``: a short HMAC of a fixed label under the pepper, which names it without revealing
it); a key hashed with a previous pepper still authenticates, and is hashed again with the current
one when it is next used.
"""

from __future__ import annotations

import enum
import hmac
import re
import zlib
from collections.abc import Sequence
from typing import final

from keyplane.ids import BASE62, random_base62
from keyplane.values import Value

PUBLIC_ID_LEN = 12
SECRET_LEN = 32
CHECKSUM_LEN = 6
BODY_LEN = PUBLIC_ID_LEN + SECRET_LEN + CHECKSUM_LEN
KEY_PATTERN = re.compile(r"\bsk-kp-(proj|svcacct|admin)-[0-9A-Za-z]{50}\b")
_FULL = re.compile(r"sk-kp-(proj|svcacct|admin)-([0-9A-Za-z]{50})")


class KeyKind(enum.StrEnum):
    PROJECT = "proj"
    SERVICE_ACCOUNT = "svcacct"
    ADMIN = "admin"


def checksum(text: str) -> str:
    """Returns the 6-char base62 CRC32 of ``text`` (zero-padded on the left)."""
    n = zlib.crc32(text.encode("ascii"))
    digits = ""
    for _ in range(CHECKSUM_LEN):
        n, r = divmod(n, 62)
        digits = BASE62[r] + digits
    return digits


_KINDS = {kind.value: kind for kind in KeyKind}


@final
class ParsedKey(Value):
    FIELDS = ("kind", "public_id", "secret")
    __slots__ = FIELDS

    def __init__(self, kind: KeyKind, public_id: str, secret: str) -> None:
        self.kind = kind
        self.public_id = public_id
        self.secret = secret

    def __repr__(self) -> str:  # (never the secret, should a key end up in a log line)
        return f"ParsedKey(kind={self.kind.value!r}, public_id={self.public_id!r}, secret=...)"


def generate(kind: KeyKind) -> tuple[str, ParsedKey]:
    """Returns a new key's full text (to show once) and its parts."""
    public_id = random_base62(PUBLIC_ID_LEN)
    secret = random_base62(SECRET_LEN)
    head = f"sk-kp-{kind.value}-{public_id}{secret}"
    return head + checksum(head), ParsedKey(kind, public_id, secret)


def parse(text: str) -> ParsedKey | None:
    """Returns the parts of a well-formed key with a valid checksum, else None. No I/O."""
    if len(text) > 64:
        return None
    m = _FULL.fullmatch(text)
    if m is None:
        return None
    kind, body = m.groups()
    if not hmac.compare_digest(checksum(text[:-CHECKSUM_LEN]), body[-CHECKSUM_LEN:]):
        return None
    return ParsedKey(_KINDS[kind], body[:PUBLIC_ID_LEN], body[PUBLIC_ID_LEN:-CHECKSUM_LEN])


def hash_secret(pepper: bytes, secret: str) -> str:
    """Returns hex HMAC-SHA-256(pepper, secret): what the database stores instead of the secret."""
    return hmac.digest(pepper, secret.encode("ascii"), "sha256").hex()


def secret_matches(pepper: bytes, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(pepper, secret), stored_hash)


PEPPER_ID_LABEL = b"keyplane/pepper-id/v1"


def pepper_id(pepper: bytes) -> str:
    """The pepper's id, stored beside each hash it made: 8 hex characters of HMAC-SHA-256(pepper,
    a fixed label). It tells peppers apart and cannot be turned back into one (nor checked
    against a guess faster than a stored hash could)."""
    return hmac.digest(pepper, PEPPER_ID_LABEL, "sha256").hex()[:8]


@final
class Peppers:
    """The current pepper (hashes new keys, and old ones again) and the previous ones (still
    check the keys they hashed, while a rotation is under way)."""

    __slots__ = ("_by_id", "current", "current_id", "ids")

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        self.current = current
        self.current_id = pepper_id(current)
        by_id = {self.current_id: current}
        for pepper in previous:
            by_id.setdefault(pepper_id(pepper), pepper)
        self._by_id = by_id
        self.ids: tuple[str, ...] = tuple(by_id)  # the current one first

    def hash(self, secret: str) -> tuple[str, str]:
        """(The secret's hash with the current pepper, the current pepper's id)."""
        return hash_secret(self.current, secret), self.current_id

    def matches(self, secret: str, stored_hash: str, stored_pepper: str | None) -> bool:
        """Whether ``secret`` is the one ``stored_hash`` was made from, by the pepper it records
        (one HMAC, compared in constant time; a key on the current pepper costs nothing more). A
        pepper no longer configured matches nothing. A hash stored before peppers were recorded
        (None) is tried with each, the current one first."""
        if stored_pepper == self.current_id:
            return secret_matches(self.current, secret, stored_hash)
        if stored_pepper is not None:
            pepper = self._by_id.get(stored_pepper)
            return pepper is not None and secret_matches(pepper, secret, stored_hash)
        return any(secret_matches(p, secret, stored_hash) for p in self._by_id.values())

    def __repr__(self) -> str:  # (never a pepper, should this end up in a log line)
        return f"Peppers(ids={self.ids!r})"


def redact(text: str) -> str:
    """``sk-kp-proj-…a1B2``: the prefix and the last four characters, as the dashboard shows."""
    kind = text.split("-")[2]
    return f"sk-kp-{kind}-…{text[-4:]}"


def key_id(public_id: str) -> str:
    """The key's public object id (``key_<public id>``), used by the API and the CLI."""
    return "key_" + public_id
