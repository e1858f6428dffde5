"""Sign-up with email verification, profile completion, and password reset by email.

Nothing here tells a stranger whether an address has an account: signing up with a taken address
answers exactly like a fresh sign-up (the address's owner gets an email saying so), and asking for
a password reset answers the same whether or not the address is known.

Each sign-up, and each request for a new verification link, emails an address nobody has proved
theirs yet: they are counted per client address (``ThrottlePolicy.signups_per_address``), so one
network cannot make keyplane mail every address it can think of, and one account gets at most one
verification email a minute.

Links carry a random token of 256 bits; the database keeps only its SHA-256, so a copy of the
database opens no account. Each token works once, and for a limited time.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from keyplane.accounts.auth_ports import (
    LoginAttemptStore,
    Membership,
    OneTimeToken,
    SessionStore,
    TokenPurpose,
    TokenStore,
    UserDirectory,
)
from keyplane.accounts.models import Organization, OrgRole, Project, User
from keyplane.accounts.passwords import MIN_LENGTH, hash_password
from keyplane.accounts.service import DEFAULT_PROJECT
from keyplane.accounts.throttle import LoginThrottle, ThrottlePolicy
from keyplane.audit.models import Actor
from keyplane.audit.service import AuditService, changed
from keyplane.clock import Clock
from keyplane.emails import normalize_email
from keyplane.errors import Conflict, InvalidRequest, KeyplaneError
from keyplane.ids import new_id
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox
from keyplane.text import refuse_control_characters

MAX_PASSWORD_LENGTH = 256  # long enough for any passphrase; bounds the cost of hashing one
MAX_NAME_LENGTH = 200
VERIFY_TTL_S = 24 * 3600
RESET_TTL_S = 3600
RESEND_INTERVAL_S = 60  # at most one verification or reset email a minute per account


class TokenRefused(KeyplaneError):
    """A link's token is unknown, used or expired; ``message`` says which and what to do."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "invalid" | "used" | "expired"


class EmailNotVerified(InvalidRequest):
    """The account has to verify its email address before it can do this."""


class SignUpStore(UserDirectory, TokenStore, SessionStore, LoginAttemptStore, Protocol):
    """What sign-up needs: users, single-use tokens, sessions (ended by a reset), and the
    throttle's counts."""


@dataclass(frozen=True, slots=True)
class Profile:
    """What the profile page needs to know: whether it still asks for an organization."""

    user: User
    needs_organization: bool


def can_create_keys(user: User) -> bool:
    """Whether a user may create API keys: only once their email address is verified (BRIEF C1).
    Accounts made by ``keyplane init`` count as verified."""
    return user.email_verified_at is not None


def new_token() -> tuple[str, str]:
    """Returns (token for the link, its hash for the database)."""
    raw = secrets.token_urlsafe(32)
    return raw, hash_token(raw)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@functools.cache
def common_passwords() -> frozenset[str]:
    text = resources.files("keyplane.accounts").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.lower() for line in text.splitlines() if line and not line.startswith("#")
    )


def check_password(password: str, *, email: str = "") -> None:
    """Raises InvalidRequest (param ``password``) for a password keyplane will not accept."""
    if len(password) < MIN_LENGTH:
        raise InvalidRequest(
            f"Choose a password of at least {MIN_LENGTH} characters.", param="password"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"A password has at most {MAX_PASSWORD_LENGTH} characters.", param="password"
        )
    lowered = password.lower()
    local = email.partition("@")[0].lower()
    if lowered in common_passwords() or len(set(lowered)) < 4:
        raise InvalidRequest(
            "This password is too common: it appears in lists attackers try first. "
            "Choose another one (a few unrelated words make a good password).",
            param="password",
        )
    if email and lowered in (email.lower(), local):
        raise InvalidRequest("Your password cannot be your email address.", param="password")


def clean_name(value: str, what: str, param: str) -> str:
    value = " ".join(value.split())
    if not value or len(value) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"{what} needs 1 to {MAX_NAME_LENGTH} characters.", param=param)
    return refuse_control_characters(value, what, param)


class SignupService:
    def __init__(
        self,
        store: SignUpStore,
        outbox: Outbox,
        clock: Clock,
        *,
        public_url: str,
        verify_ttl_s: int = VERIFY_TTL_S,
        reset_ttl_s: int = RESET_TTL_S,
        throttle: ThrottlePolicy | None = None,
        audit: AuditService | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._clock = clock
        self._throttle = LoginThrottle(store, clock, throttle)
        self._audit = audit
        self._public_url = public_url.rstrip("/")
        self._ttl = {
            TokenPurpose.VERIFY_EMAIL: verify_ttl_s,
            TokenPurpose.RESET_PASSWORD: reset_ttl_s,
        }

    # -- sign-up and verification -----------------------------------------------------------
    def sign_up(self, email: str, password: str, *, client_ip: str | None = None) -> User | None:
        """Creates an unverified account and emails it a verification link.

        Returns the new user, or None when the address already has an account (its owner gets
        an email about the attempt instead); callers must answer both the same way. Raises
        InvalidRequest for a bad address or an unacceptable password, and LoginThrottled when
        ``client_ip`` signed up too often (a refused form counts for nothing: it emails no one).
        """
        email = normalize_email(email)
        check_password(password, email=email)
        # Counted whether the address is new or taken: the answer must be the same.
        self._throttle.signup_requested(client_ip)
        # Hash before looking the address up, so both outcomes take the same time.
        password_hash = hash_password(password)
        now = int(self._clock.now())
        existing = self._store.user_by_email(email)
        if existing is None:
            user = User(new_id("user-"), email, "", password_hash, now)
            try:
                self._store.add_user(user)
            except Conflict:
                existing = self._store.user_by_email(email)
            else:
                self._send_link(user, TokenPurpose.VERIFY_EMAIL, now)
                return user
        if existing is not None:
            subject = "Someone tried to sign up to keyplane with your email address"
            login, forgot = f"{self._public_url}/login", f"{self._public_url}/password/forgot"
            self._outbox.enqueue(
                f"auth:signup-again:{existing.id}:{now // 3600}",
                [existing.email],
                subject,
                "Someone (maybe you) tried to create a keyplane account with this email address, "
                "which already has one.\n\n"
                f"To log in: {login}\n"
                f"Forgot your password? {forgot}\n\n"
                "If it was not you, you can ignore this email: nothing was changed.\n",
                render_html(
                    "signup_again.html", subject=subject, login_url=login, forgot_url=forgot
                ),
                now=now,
            )
        return None

    def resend_verification(self, user_id: str, *, client_ip: str | None = None) -> bool:
        """Emails a new verification link unless the address is verified or one was sent in the
        last minute. Returns whether an email was sent. Raises LoginThrottled when ``client_ip``
        signed up or asked for links too often (one sign-up must not be a way to mail its
        address every minute without end)."""
        user = self._store.user(user_id)
        if user is None or user.email_verified_at is not None:
            return False
        now = int(self._clock.now())
        latest = self._store.latest_token_at(user.id, TokenPurpose.VERIFY_EMAIL)
        if latest is not None and now - latest < RESEND_INTERVAL_S:
            return False
        self._throttle.signup_requested(client_ip, what="requests for a verification email")
        self._send_link(user, TokenPurpose.VERIFY_EMAIL, now)
        return True

    def check_token(self, purpose: TokenPurpose, raw: str) -> OneTimeToken:
        """Returns the usable token behind a link without using it (for the page the link opens).

        Raises TokenRefused."""
        token = self._store.token(purpose, hash_token(raw)) if raw else None
        self._refuse_unless_usable(purpose, token, int(self._clock.now()))
        assert token is not None
        return token

    def verify_email(self, raw: str) -> User:
        """Uses a verification token. Returns the verified user. Raises TokenRefused."""
        user_id = self._use(TokenPurpose.VERIFY_EMAIL, raw).user_id
        self._store.mark_email_verified(user_id, int(self._clock.now()))
        user = self._store.user(user_id)
        assert user is not None
        return user

    def address_proven(self, user_id: str) -> None:
        """The user used a link emailed to their address (an invitation for it): the address is
        verified, as a verification link would have done (no-op when it already is)."""
        self._store.mark_email_verified(user_id, int(self._clock.now()))

    def can_create_keys(self, user_id: str) -> bool:
        """Whether the user may create API keys: only once their email address is verified."""
        user = self._store.user(user_id)
        return user is not None and can_create_keys(user)

    def require_can_create_keys(self, user_id: str) -> None:
        """Raises EmailNotVerified unless ``can_create_keys``."""
        if not self.can_create_keys(user_id):
            raise EmailNotVerified(
                "Verify your email address before creating API keys: open the link in the email "
                "keyplane sent you (or ask for a new one from the dashboard)."
            )

    # -- profile ------------------------------------------------------------------------------
    def user(self, user_id: str) -> User | None:
        return self._store.user(user_id)

    def memberships(self, user_id: str) -> Sequence[Membership]:
        """Returns the user's organizations and roles, oldest first."""
        return self._store.memberships(user_id)

    def profile(self, user_id: str) -> Profile:
        user = self._store.user(user_id)
        if user is None:
            raise InvalidRequest("No such user.")
        return Profile(user, needs_organization=not self._store.memberships(user_id))

    def complete_profile(
        self, user_id: str, *, name: str, org_name: str | None, actor: Actor | None = None
    ) -> Profile:
        """Sets the user's name and, if they belong to no organization yet, creates theirs (with
        them as Owner) and its ``Default project``. With an ``actor`` (the user's session), the
        changes go into the audit log, in their transaction: a new name in each of the user's
        organizations (``user.updated``); a new organization as ``organization.created``,
        ``user.added`` (its Owner) and ``project.created``, the events and details the Admin API
        records for a member and a project.

        Raises EmailNotVerified, InvalidRequest."""
        profile = self.profile(user_id)
        if profile.user.email_verified_at is None:
            raise EmailNotVerified("Verify your email address first.")
        name = clean_name(name, "Your name", "name")
        org_name = (
            clean_name(org_name or "", "An organization name", "org_name")
            if profile.needs_organization
            else None
        )
        with nullcontext() if self._audit is None else self._audit.atomic():
            self._store.set_name(user_id, name)
            if name != profile.user.name:
                change = changed({"name": profile.user.name}, {"name": name})
                for membership in self._store.memberships(user_id):
                    self._record(actor, membership.org.id, "user.updated", user_id, details=change)
            if org_name is not None:
                now = int(self._clock.now())
                org = Organization(new_id("org-"), org_name, now)
                project = Project(new_id("proj_"), org.id, DEFAULT_PROJECT, now)
                self._store.add_organization(user_id, org, project)
                # OpenAI's log has no event for an organization's creation (its sign-up makes
                # one unseen); keyplane records one, so the log starts with who created it.
                self._record(actor, org.id, "organization.created", org.id, {"name": org.name})
                owner = {"email": profile.user.email, "role": OrgRole.OWNER.value}
                self._record(actor, org.id, "user.added", user_id, owner)
                self._record(
                    actor, org.id, "project.created", project.id, {"name": project.name},
                    project_id=project.id,
                )  # fmt: skip
        return self.profile(user_id)

    def _record(
        self, actor: Actor | None, org_id: str, event_type: str, target_id: str,
        data: Mapping[str, Any] | None = None, *, details: Mapping[str, Any] | None = None,
        project_id: str | None = None,
    ) -> None:  # fmt: skip
        if actor is None or self._audit is None:
            return
        self._audit.record(
            org_id, actor, event_type, target_id=target_id, project_id=project_id,
            details=details if data is None else {"data": data},
        )  # fmt: skip

    # -- password reset -----------------------------------------------------------------------
    def request_password_reset(self, email: str) -> None:
        """Emails a reset link if the address has an account (at most one a minute); answers the
        same either way. Raises InvalidRequest for something that is not an address."""
        user = self._store.user_by_email(normalize_email(email))
        if user is None:
            return
        now = int(self._clock.now())
        latest = self._store.latest_token_at(user.id, TokenPurpose.RESET_PASSWORD)
        if latest is not None and now - latest < RESEND_INTERVAL_S:
            return
        self._send_link(user, TokenPurpose.RESET_PASSWORD, now)

    def reset_password(self, raw: str, new_password: str) -> User:
        """Sets a new password with a reset token, ends every session of the account (whoever
        knew the old password is signed out) and counts the address as verified (the link
        proved it). Returns the user. Raises TokenRefused, InvalidRequest."""
        token = self.check_token(TokenPurpose.RESET_PASSWORD, raw)
        user = self._store.user(token.user_id)
        assert user is not None
        # Check the password before using the token: a rejected password must not burn the link.
        check_password(new_password, email=user.email)
        password_hash = hash_password(new_password)
        self._use(TokenPurpose.RESET_PASSWORD, raw)
        now = int(self._clock.now())
        self._store.set_password(user.id, password_hash)
        self._store.delete_user_sessions(user.id)
        self._store.mark_email_verified(user.id, now)
        return user

    # -- internals ----------------------------------------------------------------------------
    def _send_link(self, user: User, purpose: TokenPurpose, now: int) -> None:
        raw, token_hash = new_token()
        ttl = self._ttl[purpose]
        self._store.add_token(
            OneTimeToken(token_hash, purpose, user.id, now, now + ttl),
            supersede=purpose is TokenPurpose.RESET_PASSWORD,
        )
        if purpose is TokenPurpose.VERIFY_EMAIL:
            subject = "Verify your email address for keyplane"
            url, hours = f"{self._public_url}/verify?token={raw}", ttl // 3600
            body = (
                "Welcome to keyplane!\n\n"
                "Open this link to verify your email address:\n\n"
                f"{url}\n\n"
                f"The link works once, within {hours} hours. If you did not sign up "
                "for keyplane, you can ignore this email.\n"
            )
            page = render_html("verify_email.html", subject=subject, url=url, hours=hours)
        else:
            subject = "Reset your keyplane password"
            url, minutes = f"{self._public_url}/password/reset?token={raw}", max(1, ttl // 60)
            body = (
                "Someone (maybe you) asked to reset the password of your keyplane account.\n\n"
                "Open this link to choose a new password:\n\n"
                f"{url}\n\n"
                f"The link works once, within {minutes} minutes. If you did not ask, "
                "ignore this email: your password stays as it is.\n"
            )
            page = render_html("password_reset.html", subject=subject, url=url, minutes=minutes)
        self._outbox.enqueue(
            f"auth:{purpose.value}:{token_hash[:32]}", [user.email], subject, body, page, now=now
        )

    def _use(self, purpose: TokenPurpose, raw: str) -> OneTimeToken:
        now = int(self._clock.now())
        token_hash = hash_token(raw) if raw else ""
        used = self._store.use_token(purpose, token_hash, now) if raw else None
        if used is not None:
            return used
        self._refuse_unless_usable(purpose, self._store.token(purpose, token_hash), now)
        # Usable a moment ago, used by a concurrent request now.
        raise TokenRefused(_used_message(purpose), reason="used")

    @staticmethod
    def _refuse_unless_usable(purpose: TokenPurpose, token: OneTimeToken | None, now: int) -> None:
        if token is None:
            raise TokenRefused(
                "This link is not valid. Check that you opened the whole link from the email, "
                "or ask for a new one.",
                reason="invalid",
            )
        if token.used_at is not None:
            raise TokenRefused(_used_message(purpose), reason="used")
        if token.expires_at <= now:
            raise TokenRefused("This link has expired. Ask for a new one.", reason="expired")


def _used_message(purpose: TokenPurpose) -> str:
    if purpose is TokenPurpose.VERIFY_EMAIL:
        return "This verification link has already been used. Log in to continue."
    return (
        "This password reset link has already been used (or a newer one was sent). "
        "Ask for a new one if you still need to reset your password."
    )
