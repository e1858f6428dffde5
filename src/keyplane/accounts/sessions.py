"""Signing in and out with server-side sessions.

A session id is 256 random bits, handed to the browser once (in a cookie) and stored only as its
SHA-256, so a copy of the database signs nobody in. A session ends after ``idle_s`` without a
request or ``absolute_s`` after sign-in, whichever comes first (OWASP ASVS 3.3.2, level 2: 30
minutes idle, 12 hours at most). Every sign-in gets a new id, so an id planted in a browser before
sign-in (session fixation) is worth nothing after it.

With two-factor on, a right password opens a *pending* session that signs nobody in and only
lets its holder enter a code within ``second_factor_s``; the code then opens the real session.
Wrong passwords and wrong codes both count against the login throttle; a complete sign-in clears
the account's count.
"""

from __future__ import annotations

import functools
import secrets
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

from keyplane.accounts.auth_ports import LoginAttemptStore, SessionStore, UserDirectory, WebSession
from keyplane.accounts.models import User
from keyplane.accounts.passwords import hash_password, verify_password
from keyplane.accounts.signup import MAX_PASSWORD_LENGTH, hash_token, new_token
from keyplane.accounts.throttle import LoginThrottle, ThrottlePolicy
from keyplane.accounts.totp import CodeCheck, SecondFactorService
from keyplane.audit.models import Actor, ActorType
from keyplane.audit.service import AuditService
from keyplane.clock import Clock
from keyplane.errors import KeyplaneError

WRONG_CREDENTIALS = "Incorrect email or password."
MAX_USER_AGENT = 300


class InvalidCredentials(KeyplaneError):
    """The email or the password is wrong; the message never says which."""


class InvalidSecondFactor(KeyplaneError):
    pass


class SignInExpired(KeyplaneError):
    """The pending sign-in (password given, code awaited) is unknown or over."""


class LoginStore(UserDirectory, SessionStore, LoginAttemptStore, Protocol):
    """What signing in needs: users, sessions and the failed-attempt log."""


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle_s: int = 30 * 60
    absolute_s: int = 12 * 3600
    second_factor_s: int = 5 * 60
    touch_every_s: int = 60  # record activity at most this often (one write, not one a request)


@dataclass(frozen=True, slots=True)
class SignIn:
    """A new session: its id for the cookie (returned here only) and the stored record."""

    session_id: str
    session: WebSession

    @property
    def needs_second_factor(self) -> bool:
        return self.session.second_factor_pending


@functools.cache
def _decoy_hash() -> str:
    """A hash to check unknown emails against, so they take as long as known ones."""
    return hash_password(secrets.token_urlsafe(24))


class LoginService:
    def __init__(
        self,
        store: LoginStore,
        clock: Clock,
        *,
        second_factor: SecondFactorService,
        throttle: ThrottlePolicy | None = None,
        policy: SessionPolicy | None = None,
        audit: AuditService | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._second_factor = second_factor
        self._audit = audit
        self.throttle = LoginThrottle(store, clock, throttle)
        self.policy = policy or SessionPolicy()

    def log_in(
        self, email: str, password: str, *, client_ip: str | None, user_agent: str = ""
    ) -> SignIn:
        """Checks the password and opens a session (pending when two-factor is on).

        Raises LoginThrottled (before looking at the password), InvalidCredentials."""
        email = email.strip().lower()
        attempt = self.throttle.begin(email, client_ip)
        user = self._store.user_by_email(email) if email else None
        if len(password) > MAX_PASSWORD_LENGTH:
            ok = False
        else:
            ok = verify_password(user.password_hash if user else _decoy_hash(), password)
        if user is None or not ok:
            if user is not None:
                self._record(user, "login.failed", "", client_ip, user_agent, "invalid_password")
            raise InvalidCredentials(WRONG_CREDENTIALS)
        pending = self._second_factor.status(user.id) is not None
        if pending:
            self.throttle.succeeded(attempt)
        else:
            self.throttle.signed_in(attempt, email)
        with self._atomic():  # (a session opened is recorded, or not opened)
            sign_in = self._open(user.id, pending, client_ip, user_agent)
            if not pending:
                self._record(
                    user, "login.succeeded", sign_in.session.id_hash, client_ip, user_agent
                )
        return sign_in

    def complete_second_factor(
        self, pending_id: str, code: str, *, client_ip: str | None, user_agent: str = ""
    ) -> SignIn:
        """Checks a TOTP or recovery code for a pending sign-in and opens the real session.

        Raises SignInExpired, LoginThrottled, InvalidSecondFactor."""
        pending = self.session(pending_id, pending=True)
        user = self._store.user(pending.user_id) if pending else None
        if pending is None or user is None:
            raise SignInExpired("Your sign-in has expired. Enter your email and password again.")
        attempt = self.throttle.begin(user.email, client_ip)
        check = self._second_factor.verify(user.id, code)
        if check is not CodeCheck.ACCEPTED:
            reason = "invalid_second_factor"
            self._record(user, "login.failed", pending.id_hash, client_ip, user_agent, reason)
            if check is CodeCheck.RECOVERY_CODE_USED:
                raise InvalidSecondFactor(
                    "That recovery code was already used. Each code works once: use another one."
                )
            if check is CodeCheck.ALREADY_USED:
                raise InvalidSecondFactor(
                    "That code was already used. Wait for your authenticator app to show the "
                    "next one (a new code every 30 seconds) and enter it."
                )
            raise InvalidSecondFactor(
                "That code is not right. Enter the current 6-digit code from your "
                "authenticator app, or one of your recovery codes."
            )
        self.throttle.signed_in(attempt, user.email)
        with self._atomic():
            self._store.delete_session(pending.id_hash)
            sign_in = self._open(user.id, False, client_ip, user_agent)
            self._record(user, "login.succeeded", sign_in.session.id_hash, client_ip, user_agent)
        return sign_in

    def session(self, session_id: str, *, pending: bool = False) -> WebSession | None:
        """Returns the live session with this id (signed in, or with ``pending`` awaiting its
        second factor), recording activity; None when there is none or it has timed out."""
        if not session_id:
            return None
        id_hash = hash_token(session_id)
        found = self._store.session(id_hash)
        if found is None or found.second_factor_pending != pending:
            return None
        now = int(self._clock.now())
        if now >= found.expires_at or now - found.last_seen_at >= self.policy.idle_s:
            self._store.delete_session(id_hash)
            return None
        if now - found.last_seen_at >= self.policy.touch_every_s:
            self._store.touch_session(id_hash, now)
        return found

    def log_out(
        self, session_id: str, *, client_ip: str | None = None, user_agent: str = ""
    ) -> None:
        if not session_id:
            return
        id_hash = hash_token(session_id)
        found = self._store.session(id_hash)
        with self._atomic():
            self._store.delete_session(id_hash)
            user = (
                self._store.user(found.user_id)
                if found and not found.second_factor_pending
                else None
            )
            if user is not None:
                self._record(user, "logout.succeeded", id_hash, client_ip, user_agent)

    def _atomic(self) -> AbstractContextManager[None]:
        """A session opened or ended and its entries in the audit log: both, or neither."""
        return nullcontext() if self._audit is None else self._audit.atomic()

    def _record(
        self, user: User, event: str, session_hash: str, client_ip: str | None, user_agent: str,
        error_code: str | None = None,
    ) -> None:  # fmt: skip
        """The sign-in event in the audit log of each of the user's organizations (OpenAI's
        ``login.succeeded``, ``login.failed``, ``logout.succeeded``), as their session: inside
        ``_atomic()`` with the session it opens or ends; ``login.failed`` on its own (it tells of
        no change, and the refusal that follows it must not undo it)."""
        if self._audit is None:
            return
        actor = Actor(
            ActorType.SESSION, f"sess_{session_hash[:20]}" if session_hash else "",
            user_id=user.id, email=user.email, ip_address=client_ip,
            user_agent=user_agent[:MAX_USER_AGENT] or None,
        )  # fmt: skip
        details = {"data": {"error_code": error_code}} if error_code else None
        write = self._audit.notice if event == "login.failed" else self._audit.record
        for membership in self._store.memberships(user.id):
            write(membership.org.id, actor, event, target_id=user.id, details=details)

    def end_all_sessions(self, user_id: str) -> int:
        return self._store.delete_user_sessions(user_id)

    def _open(self, user_id: str, pending: bool, client_ip: str | None, user_agent: str) -> SignIn:
        now = int(self._clock.now())
        session_id, id_hash = new_token()
        lifetime = self.policy.second_factor_s if pending else self.policy.absolute_s
        session = WebSession(
            id_hash=id_hash,
            user_id=user_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + lifetime,
            second_factor_pending=pending,
            client_ip=client_ip,
            user_agent=user_agent[:MAX_USER_AGENT],
        )
        self._store.add_session(session)
        return SignIn(session_id, session)
