"""What the owner of an account hears when its credentials change (OWASP ASVS 2.2.3): an email to
the account's address, and an entry in the audit log of each of its organizations. A change the
owner did not make (a stolen session, a reset link intercepted) is then seen, and where it came
from is on record."""

from __future__ import annotations

from fastapi import Request

from keyplane.accounts.models import User
from keyplane.accounts.sessions import MAX_USER_AGENT
from keyplane.audit.models import Actor, ActorType
from keyplane.notify.email_html import render_html
from keyplane.web.dashboard.session import client_ip, context

# event: (subject, what happened, as the email says it)
CHANGES = {
    "user.password_changed": (
        "Your keyplane password was changed",
        "The password of your keyplane account was changed with a reset link, and every session "
        "of the account was ended.",
    ),
    "user.two_factor_enabled": (
        "Two-factor authentication was turned on",
        "Two-factor authentication was turned on for your keyplane account: logging in now asks "
        "for a code from an authenticator app.",
    ),
    "user.two_factor_disabled": (
        "Two-factor authentication was turned off",
        "Two-factor authentication was turned off for your keyplane account: logging in now asks "
        "for the password only.",
    ),
    "user.recovery_codes_replaced": (
        "New two-factor recovery codes",
        "New recovery codes were made for your keyplane account; the earlier ones no longer work.",
    ),
}


def session_actor(request: Request, user: User, session_ref: str) -> Actor:
    """The audit log's actor for a change ``user`` made to their own account: the session, with
    the address and browser it came from."""
    agent = request.headers.get("user-agent", "")[:MAX_USER_AGENT] or None
    return Actor(
        ActorType.SESSION, session_ref, user_id=user.id, email=user.email,
        ip_address=client_ip(request), user_agent=agent,
    )  # fmt: skip


def account_changed(request: Request, user: User, event: str, session_ref: str = "") -> None:
    """Emails the account's owner and records ``event`` (one of ``CHANGES``) in the audit log of
    each of their organizations, with the address and browser the change came from. Called in
    the change's unit of work (``AuditService.atomic``): the change, its entries and the email,
    or none of them."""
    ctx = context(request)
    services, now = ctx.services, ctx.services.clock.now()
    actor = session_actor(request, user, session_ref)
    ip, agent = actor.ip_address, actor.user_agent
    for membership in ctx.auth.signup.memberships(user.id):
        services.audit.record(membership.org.id, actor, event, target_id=user.id)
    subject, what = CHANGES[event]
    when = f"from {ip}" if ip else "from an unknown address"
    forgot = f"{services.settings.public_url}/password/forgot"
    body = (
        f"{what}\n\nThis was done {when}"
        f"{f' with {agent}' if agent else ''}.\n\n"
        "If it was not you, reset your password now and check your account's security page:\n\n"
        f"  {forgot}\n"
    )
    page = render_html(
        "account_changed.html", subject=f"[keyplane] {subject}", heading=subject, what=what,
        when=when, agent=agent, url=forgot,
    )  # fmt: skip
    services.outbox.enqueue(
        f"notice:{event}:{user.id}:{int(now * 1000)}", [user.email], f"[keyplane] {subject}", body,
        page, now=now,
    )  # fmt: skip
