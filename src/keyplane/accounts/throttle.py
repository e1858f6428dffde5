"""Throttling of failed sign-ins, per account and per source address (OWASP ASVS 2.2.1: no more
than 100 failed attempts per hour on one account; the default here is 10 in 15 minutes), and of
password reset requests and sign-ups per source address (each one emails someone: a network must
not make keyplane mail every address it can think of).

Only *new* sign-ins are throttled: an attacker who burns an account's attempts cannot end or
block a session its owner already has, and the owner is told how long to wait instead of being
silently locked out. The account is keyed by the email typed, whether or not such an account
exists, so the throttle answers the same for both and reveals nothing about who has an account.

Each attempt first reserves a failure (atomically, against the limit) and is forgiven if it
succeeds: concurrent guesses can never get past the limit between a check and a record. A
complete sign-in (the second factor too, when it is on) clears the account's failures: only its
owner gets that far, and the owner's own typos should not add up over the window.

The failures are rows in the database (``login_failures``), not process memory: every gateway
on one database counts the same attempts, and a restart forgets none.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from keyplane.accounts.auth_ports import AttemptReservation, LoginAttemptStore
from keyplane.clock import Clock
from keyplane.errors import KeyplaneError


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    per_account: int = 10  # failed sign-ins of one account (from anywhere) in the window
    per_address: int = 100  # failed sign-ins from one address (any accounts) in the window
    window_s: int = 900
    resets_per_address: int = 20  # password reset requests from one address in the window
    # sign-ups and "send a new link" requests from one address in their own window
    signups_per_address: int = 20
    signup_window_s: int = 3600

    def __post_init__(self) -> None:
        limits = (
            self.per_account, self.per_address, self.window_s, self.resets_per_address,
            self.signups_per_address, self.signup_window_s,
        )  # fmt: skip
        if min(limits) < 1:
            raise ValueError("throttle limits and window must be positive")


class LoginThrottled(KeyplaneError):
    """Too many failed sign-ins; ``retry_after_s`` says when the next one will be considered."""

    def __init__(
        self, retry_after_s: int, *, by_address: bool, what: str = "failed sign-in attempts"
    ) -> None:
        where = "from your network" if by_address else "for this account"
        super().__init__(f"Too many {what} {where}. Try again in {describe_wait(retry_after_s)}.")
        self.retry_after_s = retry_after_s
        self.by_address = by_address


@dataclass(frozen=True, slots=True)
class Attempt:
    """A sign-in in progress: its provisional failures, forgiven if it succeeds."""

    ids: tuple[int, ...]


def describe_wait(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = -(-minutes // 60)
    return f"{hours} hours"


def account_subject(email: str) -> str:
    return "acct:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:59]


def reset_subject(ip: str) -> str:
    """The address's password reset requests (counted apart from its failed sign-ins)."""
    return "reset:" + address_subject(ip)[6:]  # (64 characters, as the others)


def signup_subject(ip: str) -> str:
    """The address's sign-ups and requests for a new verification link (counted together)."""
    return "signup:" + address_subject(ip)[7:]  # (64 characters, as the others)


def address_subject(ip: str) -> str:
    """One subject per IPv4 address, and per IPv6 /64: whoever holds one address of a /64 usually
    holds them all, so counting single IPv6 addresses would throttle nothing."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        key = ip
    else:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if isinstance(addr, ipaddress.IPv6Address):
            key = str(ipaddress.IPv6Network((addr, 64), strict=False))
        else:
            key = str(addr)
    return "addr:" + hashlib.sha256(key.encode()).hexdigest()[:59]


def retry_after(failures: tuple[int, ...], limit: int, window_s: int, now: int) -> int:
    """Seconds until fewer than ``limit`` of ``failures`` (oldest first) lie inside the window."""
    if len(failures) < limit:
        return 0
    frees_up = failures[len(failures) - limit] + window_s
    return max(1, frees_up - now)


class LoginThrottle:
    def __init__(
        self, store: LoginAttemptStore, clock: Clock, policy: ThrottlePolicy | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self.policy = policy or ThrottlePolicy()

    def begin(self, email: str, client_ip: str | None) -> Attempt:
        """Reserves one failure for the account and the address.

        Raises LoginThrottled (recording nothing) when either is at its limit."""
        now = int(self._clock.now())
        limits = {account_subject(email): self.policy.per_account}
        if client_ip:
            limits[address_subject(client_ip)] = self.policy.per_address
        reservation = self._reserve(limits, self.policy.window_s, now)
        if reservation.blocked is not None:
            limit = limits[reservation.blocked]
            wait = retry_after(reservation.blocked_failures, limit, self.policy.window_s, now)
            raise LoginThrottled(wait, by_address=reservation.blocked.startswith("addr:"))
        return Attempt(reservation.ids)

    def succeeded(self, attempt: Attempt) -> None:
        """The attempt's password or code was right: it is no failure. (A password followed by
        a second factor still to give is only this: see ``signed_in``.)"""
        self._store.forgive_attempt(attempt.ids)

    def signed_in(self, attempt: Attempt, email: str) -> None:
        """The account's owner signed in: the attempt and the account's earlier failures are
        forgiven (the network's stay). Not after the password alone when a second factor
        follows, or knowing the password would reset the count of guessed codes."""
        self._store.forgive_attempt(attempt.ids)
        self._store.forget_failures(account_subject(email))

    def reset_requested(self, client_ip: str | None) -> None:
        """Counts a password reset request from ``client_ip`` (each emails a link).

        Raises LoginThrottled (recording nothing) when the address is at its limit."""
        self._count_email(
            client_ip, reset_subject, self.policy.resets_per_address, self.policy.window_s,
            "password reset requests",
        )  # fmt: skip

    def signup_requested(self, client_ip: str | None, *, what: str = "sign-ups") -> None:
        """Counts a sign-up, or a request for a new verification link, from ``client_ip`` (each
        emails an address the caller typed, or signed up with, without proving it theirs).

        Raises LoginThrottled (recording nothing) when the address is at its limit; its message
        speaks of ``what``."""
        self._count_email(
            client_ip, signup_subject, self.policy.signups_per_address,
            self.policy.signup_window_s, what,
        )  # fmt: skip

    def _count_email(
        self, client_ip: str | None, subject_of: Callable[[str], str], limit: int, window_s: int,
        what: str,
    ) -> None:  # fmt: skip
        if not client_ip:
            return
        now = int(self._clock.now())
        subject = subject_of(client_ip)
        reservation = self._reserve({subject: limit}, window_s, now)
        if reservation.blocked is not None:
            wait = retry_after(reservation.blocked_failures, limit, window_s, now)
            raise LoginThrottled(wait, by_address=True, what=what)

    def _reserve(self, limits: dict[str, int], window_s: int, now: int) -> AttemptReservation:
        # Rows older than the longest window are of no count any more: each reservation clears
        # them (not those of the window at hand, which would forget a longer one's).
        longest = max(self.policy.window_s, self.policy.signup_window_s)
        return self._store.reserve_attempt(
            limits, since=now - window_s, at=now, purge_before=now - longest
        )

    def forget_account(self, email: str) -> None:
        """Clears the account's failures: its owner proved the mailbox (a password reset), so an
        attacker's wrong guesses no longer keep them from signing in. The network's stay."""
        self._store.forget_failures(account_subject(email))
