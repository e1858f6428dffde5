"""Optional two-factor sign-in with TOTP (RFC 6238: 6 digits, 30 s steps, as authenticator apps
expect) and ten single-use recovery codes.

The TOTP secret must be readable to check codes, so it is stored sealed (Fernet: AES-128-CBC +
HMAC-SHA-256) with a key derived from the operator's encryption key, which lives outside the
database. Recovery codes carry 100 random bits each and are stored as SHA-256 hashes only; a used
one stays, marked with when it was used, so reusing it is told apart from a wrong code. A TOTP
code is accepted one step either side of now (clock drift) and only once: the newest step used is
recorded, so a code seen over someone's shoulder cannot be replayed.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pyotp
from cryptography.fernet import InvalidToken

from keyplane.accounts.auth_ports import (
    LoginAttemptStore,
    SecondFactor,
    SecondFactorStore,
    UserDirectory,
)
from keyplane.accounts.models import User
from keyplane.accounts.passwords import verify_password
from keyplane.accounts.throttle import LoginThrottle, ThrottlePolicy
from keyplane.clock import Clock
from keyplane.errors import InvalidRequest
from keyplane.sealing import TOTP, Sealer

ISSUER = "keyplane"
STEP_S = 30
DIGITS = 6
DRIFT_STEPS = 1
RECOVERY_CODE_COUNT = 10
SETUP_TTL_S = 15 * 60
_NOT_THE_PASSWORD = "That password is not right."  # noqa: S105 (a message)
_ALREADY_ON = "Two-factor authentication is already on. To use another app, turn it off first."
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


class TwoFactorStore(UserDirectory, SecondFactorStore, LoginAttemptStore, Protocol):
    """What two-factor needs: users (to check a password, throttled like sign-ins) and their
    second-factor settings."""


class CodeCheck(enum.Enum):
    ACCEPTED = "accepted"
    WRONG = "wrong"
    ALREADY_USED = "already_used"  # right, but of a time step used already (no replays)
    RECOVERY_CODE_USED = "recovery_code_used"  # one of the account's recovery codes, used once


@dataclass(frozen=True, slots=True)
class TotpSetup:
    """What the setup page shows: the secret (and its otpauth URI) to put in an authenticator
    app, and an opaque sealed token that carries the secret to the confirming request."""

    secret: str
    uri: str
    setup_token: str


def new_totp_secret() -> str:
    return pyotp.random_base32(32)  # 160 bits, as RFC 4226 recommends


def provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(
        name=email, issuer_name=ISSUER
    )


def matching_step(secret: str, code: str, now: float, drift: int = DRIFT_STEPS) -> int | None:
    """Returns the time step whose code ``code`` is (within ``drift`` steps of now), or None."""
    code = "".join(code.split())
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    current = int(now // STEP_S)
    found = None
    for step in range(current - drift, current + drift + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """Codes like ``k3m9q-2xw7d-…``: 20 base32 characters (100 bits) in groups of five."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_BASE32) for _ in range(20))
        codes.append("-".join(raw[i : i + 5] for i in range(0, 20, 5)))
    return codes


def normalize_recovery_code(code: str) -> str:
    return "".join(c for c in code.lower() if c in _BASE32)


def hash_recovery_code(code: str) -> str:
    return hashlib.sha256(normalize_recovery_code(code).encode()).hexdigest()


def looks_like_recovery_code(code: str) -> bool:
    return len(normalize_recovery_code(code)) == 20


class SecondFactorService:
    def __init__(
        self,
        store: TwoFactorStore,
        clock: Clock,
        *,
        encryption_keys: Sequence[bytes],
        throttle: ThrottlePolicy | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        # Wrong passwords here count against the account like failed sign-ins: a stolen session
        # must not be a way to guess the password without limit.
        self._throttle = LoginThrottle(store, clock, throttle)
        self._sealer = Sealer(encryption_keys, TOTP)
        self._fernet = self._sealer.fernet  # (setup tokens, kept by the browser, not at rest)

    def status(self, user_id: str) -> SecondFactor | None:
        return self._store.second_factor(user_id)

    def begin_setup(self, user: User, password: str) -> TotpSetup:
        """A new secret for the user to add to their app; nothing is stored until ``enable``.
        The password is asked first: a session someone else got hold of must not tie the account
        to their authenticator (which a password reset would not remove).

        Raises LoginThrottled, InvalidRequest (a wrong password; two-factor is on already:
        another app replaces the first only after turning it off, which asks the password too)."""
        self._check_password(user.id, password)
        if self._store.second_factor(user.id) is not None:
            raise InvalidRequest(_ALREADY_ON)
        secret = new_totp_secret()
        token = self._fernet.encrypt_at_time(
            f"setup:{user.id}:{secret}".encode(), int(self._clock.now())
        )
        return TotpSetup(secret, provisioning_uri(secret, user.email), token.decode())

    def resume_setup(self, user: User, setup_token: str) -> TotpSetup:
        """The same setup again (after a wrong code), so the secret already scanned still works.

        Raises InvalidRequest when the setup has expired or is another account's."""
        secret = self._open_setup(user.id, setup_token, self._clock.now())
        return TotpSetup(secret, provisioning_uri(secret, user.email), setup_token)

    def enable(self, user_id: str, setup_token: str, code: str) -> list[str]:
        """Turns two-factor on once a code from the new secret proves the app has it.

        Returns the recovery codes, to show once. Raises InvalidRequest."""
        now = self._clock.now()
        secret = self._open_setup(user_id, setup_token, now)
        step = matching_step(secret, code, now)
        if step is None:
            raise InvalidRequest(
                "That code is not right. Enter the 6-digit code your app shows now.", param="code"
            )
        codes = new_recovery_codes()
        hashes = [hash_recovery_code(c) for c in codes]
        if not self._store.enable_second_factor(
            user_id, self._seal(secret), step, hashes, int(now)
        ):
            raise InvalidRequest(_ALREADY_ON)  # (a second post of the same form, say)
        return codes

    def _open_setup(self, user_id: str, setup_token: str, now: float) -> str:
        try:
            plain = self._fernet.decrypt_at_time(
                setup_token.encode(), SETUP_TTL_S, int(now)
            ).decode()
        except (InvalidToken, UnicodeError):
            raise InvalidRequest(
                "This setup has expired. Start again to get a new secret.", param="setup_token"
            ) from None
        kind, owner, secret = [*plain.split(":", 2), "", ""][:3]
        if kind != "setup" or owner != user_id or not secret:
            raise InvalidRequest("This setup belongs to another account.", param="setup_token")
        return secret

    def disable(self, user_id: str, password: str) -> None:
        """Turns two-factor off. Raises LoginThrottled, and InvalidRequest unless ``password`` is
        the account's."""
        self._check_password(user_id, password)
        self._store.disable_second_factor(user_id)

    def regenerate_recovery_codes(self, user_id: str, password: str) -> list[str]:
        """Replaces every recovery code (used or not). Returns the new codes, to show once.

        Raises LoginThrottled, InvalidRequest (wrong password, or two-factor is off)."""
        self._check_password(user_id, password)
        if self._store.second_factor(user_id) is None:
            raise InvalidRequest("Two-factor authentication is off.")
        codes = new_recovery_codes()
        self._store.replace_recovery_codes(user_id, [hash_recovery_code(c) for c in codes])
        return codes

    def verify(self, user_id: str, code: str) -> CodeCheck:
        """Whether ``code`` (a TOTP code or an unused recovery code) is good now; uses it up."""
        factor = self._store.second_factor(user_id)
        if factor is None:
            return CodeCheck.WRONG
        now = self._clock.now()
        if looks_like_recovery_code(code):
            code_hash = hash_recovery_code(code)
            if self._store.use_recovery_code(user_id, code_hash, int(now)):
                return CodeCheck.ACCEPTED
            # Saying so tells only someone who had the code (and the password) that it is spent,
            # and its owner to take the next one instead of retyping this one.
            if self._store.recovery_code_used(user_id, code_hash):
                return CodeCheck.RECOVERY_CODE_USED
            return CodeCheck.WRONG
        step = matching_step(self._open(factor.sealed_secret), code, now)
        if step is None:
            return CodeCheck.WRONG
        # A right code of a step already used (the one that turned two-factor on, or the last
        # sign-in's) is refused: saying so tells only someone who has the app to wait for the next.
        if factor.last_step is not None and step <= factor.last_step:
            return CodeCheck.ALREADY_USED
        used = self._store.use_totp_step(user_id, step)
        return CodeCheck.ACCEPTED if used else CodeCheck.ALREADY_USED

    def _check_password(self, user_id: str, password: str) -> None:
        """Raises LoginThrottled (before looking at the password), InvalidRequest."""
        user = self._store.user(user_id)
        if user is None:
            raise InvalidRequest(_NOT_THE_PASSWORD, param="password")
        attempt = self._throttle.begin(user.email, None)
        if not verify_password(user.password_hash, password):
            raise InvalidRequest(_NOT_THE_PASSWORD, param="password")
        self._throttle.succeeded(attempt)

    def _seal(self, secret: str) -> str:
        return self._sealer.seal(secret)

    def _open(self, sealed: str) -> str:
        return self._sealer.open(sealed)
