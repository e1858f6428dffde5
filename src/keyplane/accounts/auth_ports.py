"""What sign-up, web sessions, two-factor and login throttling need from storage, and the plain
records they exchange with it.

Every secret that passes through these ports (single-use tokens, session ids, recovery codes) is
a SHA-256 hex digest: storage never sees one that could be replayed. The TOTP secret is the one
value that must be recoverable, so it arrives sealed (encrypted with a key outside the database).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from keyplane.accounts.models import Organization, OrgRole, Project, User


class TokenPurpose(enum.StrEnum):
    VERIFY_EMAIL = "verify_email"
    RESET_PASSWORD = "reset_password"  # noqa: S105 (a purpose, not a password)


@dataclass(frozen=True, slots=True)
class OneTimeToken:
    token_hash: str
    purpose: TokenPurpose
    user_id: str
    created_at: int
    expires_at: int
    used_at: int | None = None


@dataclass(frozen=True, slots=True)
class WebSession:
    id_hash: str
    user_id: str
    created_at: int
    last_seen_at: int
    expires_at: int  # the absolute end, however active the session is
    # A password was right but the second factor is still to come: not signed in yet.
    second_factor_pending: bool = False
    client_ip: str | None = None
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class SecondFactor:
    sealed_secret: str
    last_step: int | None  # the newest TOTP time step used, so a code works once
    enabled_at: int
    recovery_codes_left: int


@dataclass(frozen=True, slots=True)
class Membership:
    org: Organization
    role: OrgRole


@dataclass(frozen=True, slots=True)
class AttemptReservation:
    """What ``reserve_attempt`` decided: either ``ids`` of the provisional failures it recorded,
    or the ``blocked`` subject with the times of its failures in the window, oldest first."""

    ids: tuple[int, ...] = ()
    blocked: str | None = None
    blocked_failures: tuple[int, ...] = ()


class UserDirectory(Protocol):
    def user(self, user_id: str) -> User | None:
        """Returns the user, or None."""
        ...

    def user_by_email(self, email: str) -> User | None:
        """Returns the user with this (normalized, lower-case) email, or None."""
        ...

    def add_user(self, user: User) -> None:
        """Stores a new user. Raises Conflict if the email is taken."""
        ...

    def mark_email_verified(self, user_id: str, at: int) -> None:
        """Records the first verification time; later calls change nothing."""
        ...

    def set_password(self, user_id: str, password_hash: str) -> None: ...

    def set_name(self, user_id: str, name: str) -> None: ...

    def memberships(self, user_id: str) -> Sequence[Membership]:
        """Returns the user's organizations and roles, oldest membership first."""
        ...

    def add_organization(self, owner_id: str, org: Organization, project: Project) -> None:
        """Stores an organization with ``owner_id`` as its Owner and its first project, in one
        transaction."""
        ...


class TokenStore(Protocol):
    def add_token(self, token: OneTimeToken, *, supersede: bool = False) -> None:
        """Stores a token. With ``supersede``, the user's other unused tokens of the same purpose
        stop working (marked used at the new token's creation time)."""
        ...

    def use_token(self, purpose: TokenPurpose, token_hash: str, at: int) -> OneTimeToken | None:
        """Marks the token used, atomically, if it is unused and unexpired at ``at``.

        Returns the token (now used), or None when it is unknown, used or expired (of callers
        racing with one token, exactly one gets it)."""
        ...

    def token(self, purpose: TokenPurpose, token_hash: str) -> OneTimeToken | None:
        """Returns the token in whatever state it is, or None; for explaining a refusal."""
        ...

    def latest_token_at(self, user_id: str, purpose: TokenPurpose) -> int | None:
        """Returns when the user's newest token of this purpose was created, or None."""
        ...


class SessionStore(Protocol):
    def add_session(self, session: WebSession) -> None: ...

    def session(self, id_hash: str) -> WebSession | None:
        """Returns the session, or None (never stored, ended or purged)."""
        ...

    def touch_session(self, id_hash: str, at: int) -> None:
        """Records activity (the idle timeout counts from the last touch)."""
        ...

    def delete_session(self, id_hash: str) -> None: ...

    def delete_user_sessions(self, user_id: str) -> int:
        """Ends every session of the user; returns how many there were."""
        ...


class LoginAttemptStore(Protocol):
    def reserve_attempt(
        self, limits: Mapping[str, int], *, since: int, at: int, purge_before: int | None = None
    ) -> AttemptReservation:
        """Counts each subject's failures recorded after ``since``. If one has reached its limit,
        records nothing and returns it as ``blocked``; otherwise records a provisional failure at
        ``at`` for every subject and returns their ids. Concurrent reservations for one subject
        are serialized, so a limit is never exceeded. Failures of any subject recorded at or
        before ``purge_before`` (default: ``since``) are deleted on the way."""
        ...

    def forgive_attempt(self, ids: Sequence[int]) -> None:
        """Removes provisional failures (the attempt succeeded)."""
        ...

    def forget_failures(self, subject: str) -> None:
        """Removes every failure recorded for ``subject``."""
        ...


class SecondFactorStore(Protocol):
    def second_factor(self, user_id: str) -> SecondFactor | None:
        """Returns the user's TOTP settings, or None when two-factor is off."""
        ...

    def enable_second_factor(
        self, user_id: str, sealed_secret: str, step: int, recovery_hashes: Sequence[str], at: int
    ) -> bool:
        """Turns two-factor on unless it is on already (then changes nothing and returns False);
        ``step`` is the time step of the code that confirmed it, already used."""
        ...

    def disable_second_factor(self, user_id: str) -> None:
        """Turns two-factor off and drops the secret and every recovery code."""
        ...

    def use_totp_step(self, user_id: str, step: int) -> bool:
        """Atomically records ``step`` as used if it is newer than the last one used.

        Returns False for a replayed (or older) step."""
        ...

    def use_recovery_code(self, user_id: str, code_hash: str, at: int) -> bool:
        """Atomically marks an unused recovery code used. Returns False if there is none."""
        ...

    def recovery_code_used(self, user_id: str, code_hash: str) -> bool:
        """Whether this is one of the user's current recovery codes, used already (used codes
        are kept, marked, until the codes are replaced or two-factor is turned off)."""
        ...

    def replace_recovery_codes(self, user_id: str, code_hashes: Sequence[str]) -> None: ...


class AuthStore(
    UserDirectory, TokenStore, SessionStore, LoginAttemptStore, SecondFactorStore, Protocol
):
    """Everything above; one SQL adapter implements it all."""
