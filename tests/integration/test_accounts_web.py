"""The account pages of the dashboard, against a real keyplane (SQLite) and a real SMTP server.

Sign-up with email verification, profile, log in and out, sessions, CSRF, password reset, TOTP
with recovery codes, and the login throttle. Tests that need a client address other than
loopback talk to the same ASGI app in-process (Starlette's TestClient sets the socket address).
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pyotp
import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

import kphttp
from conftest import Keyplane, fresh_postgres, make_settings, start_keyplane
from keyplane import bootstrap, gateway_assembly
from keyplane.accounts.auth_ports import OneTimeToken, TokenPurpose
from keyplane.accounts.models import OrgRole, User
from keyplane.accounts.passwords import hash_password
from keyplane.accounts.signup import SignupService
from keyplane.accounts.throttle import account_subject
from keyplane.audit.models import Actor, ActorType, AuditFilter
from keyplane.clock import FrozenClock
from keyplane.storage import migrate
from keyplane.storage.auth_repository import SqlAuthStore
from keyplane.storage.engine import make_engine
from kptest import ServerThread, wait_until
from smtp_support import Inbox, SmtpServer, start_smtp

PASSWORD = "violet tractor on the moon"
OWNER_PASSWORD = "correct horse battery"  # conftest's first Owner
WRONG = "Incorrect email or password."

Client = httpx.Client | TestClient


class Browser:
    """A user agent with a cookie jar that fills in each form's CSRF token from the last page."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.page = ""

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.get(path, **kwargs)
        self.page = response.text
        return response

    def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> httpx.Response:
        fields = {"csrf_token": self.csrf_token(), **data} if csrf else data
        for name in ("form_id", "org_id"):  # hidden fields go with the form, as in a browser
            hidden = re.search(rf'name="{name}" value="([^"]+)"', self.page)
            if hidden and name not in fields:
                fields[name] = hidden.group(1)
        response = self.client.post(path, data=fields)
        self.page = response.text
        return response

    def csrf_token(self) -> str:
        match = re.search(r'name="csrf_token" value="([^"]*)"', self.page)
        assert match, "the last page had no form"
        return match.group(1)

    def log_in(self, email: str, password: str) -> httpx.Response:
        self.get("/login")
        return self.post("/login", {"email": email, "password": password})

    def log_in_named(self, email: str, password: str, name: str = "Olive") -> None:
        """Logs in and completes the profile (the account's organization exists already)."""
        self.log_in(email, password)
        self.get("/profile")
        self.post("/profile", {"name": name})

    def log_out(self) -> httpx.Response:
        self.get("/logout")
        return self.post("/logout", {})

    def close(self) -> None:
        self.client.close()


def text_of(response: httpx.Response) -> str:
    main = response.text.partition("<main")[2] or response.text
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", main)).split())


def link_in(inbox: Inbox, to: str, path: str, count: int = 1) -> str:
    """The path and query of the ``count``-th link to ``path`` sent to ``to``."""

    def find() -> list[str]:
        links = []
        for mail in inbox.received:
            if to in mail.rcpt_tos:
                body = mail.message.get_body(("plain",))
                assert body is not None
                links += re.findall(
                    rf"https?://[^/\s]+({re.escape(path)}\?token=[\w-]+)", body.get_content()
                )
        return links if len(links) >= count else []

    return wait_until(find)[count - 1]


def token_of(link: str) -> str:
    return link.partition("token=")[2]


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp(inbox: Inbox) -> Iterator[SmtpServer]:
    server = start_smtp(inbox)
    yield server
    server.stop()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def kp(
    tmp_path: Path, simulator: ServerThread, smtp: SmtpServer, clock: FrozenClock
) -> Iterator[Keyplane]:
    instance = start_keyplane(
        tmp_path, simulator.url + "/v1", clock=clock,
        smtp_port=smtp.port, email_dispatch_interval_s=0.05,
    )  # fmt: skip
    yield instance
    instance.server.stop()
    instance.container.close()


@pytest.fixture
def browser(kp: Keyplane) -> Iterator[Browser]:
    b = Browser(kphttp.Client(base_url=kp.server.url, follow_redirects=False))
    yield b
    b.close()


def signups(kp: Keyplane) -> SignupService:
    return SignupService(
        SqlAuthStore(kp.container.engine), kp.container.outbox, kp.container.clock,
        public_url=kp.container.settings.public_url,
    )  # fmt: skip


# -- sign-up ----------------------------------------------------------------------------------------
def test_sign_up_verify_once_profile_log_in_and_out(
    kp: Keyplane, browser: Browser, inbox: Inbox
) -> None:
    browser.get("/signup")
    r = browser.post("/signup", {"email": " Ada@Example.com ", "password": PASSWORD})
    assert r.status_code == 200 and "Check your email" in text_of(r)

    link = link_in(inbox, "ada@example.com", "/verify")
    user = SqlAuthStore(kp.container.engine).user_by_email("ada@example.com")
    assert user is not None and user.email_verified_at is None
    assert not signups(kp).can_create_keys(user.id)  # no keys before the address is verified

    # The link opens a confirmation page (mail scanners that fetch links use up nothing) ...
    r = browser.get(link)
    assert r.status_code == 200 and "Verify my email address" in r.text
    r = browser.post("/verify", {"token": token_of(link)})
    assert r.status_code == 200 and "Email address verified" in text_of(r)
    assert signups(kp).can_create_keys(user.id)
    # ... and works once.
    for again in (
        lambda: browser.get(link),
        lambda: browser.post("/verify", {"token": token_of(link)}),
    ):
        browser.get("/signup")
        r = again()
        assert r.status_code == 400
        assert "This verification link has already been used" in text_of(r)

    r = browser.log_in("ada@example.com", PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert browser.get("/").headers["location"] == "/profile"
    r = browser.get("/profile")
    assert 'name="org_name"' in r.text
    r = browser.post("/profile", {"name": "Ada Lovelace", "org_name": "Analytical Engines"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    r = browser.get("/")
    assert r.status_code == 200
    assert "Welcome, Ada Lovelace" in text_of(r)
    assert "Organization Analytical Engines" in text_of(r) and "Owner" in text_of(r)
    org = next(o for o in kp.container.accounts.organizations() if o.name == "Analytical Engines")
    assert [p.name for p in kp.container.accounts.projects(org.id)] == ["Default project"]
    assert [u.email for u in kp.container.accounts.owners(org.id)] == ["ada@example.com"]
    # The organization's audit log starts with its creation, by Ada's session.
    [project] = kp.container.accounts.projects(org.id)
    events = kp.container.audit.query(org.id, AuditFilter(), limit=10).events
    assert sorted((e.type, e.target_id, e.project_id, e.details) for e in events) == [
        ("organization.created", org.id, None, {"data": {"name": "Analytical Engines"}}),
        ("project.created", project.id, project.id, {"data": {"name": "Default project"}}),
        ("user.added", user.id, None, {"data": {"email": "ada@example.com", "role": "owner"}}),
    ]
    assert {(e.actor.type, e.actor.email, e.actor.ip_address) for e in events} == {
        (ActorType.SESSION, "ada@example.com", "127.0.0.1")
    }
    assert all(e.actor.id.startswith("sess_") for e in events)
    log = text_of(browser.get("/audit-log"))
    assert all(kind in log for kind in ("organization.created", "project.created", "user.added"))

    r = browser.log_out()
    assert r.status_code == 200 and "You are logged out" in text_of(r)
    assert browser.get("/").headers["location"] == "/login"
    assert browser.log_in("ada@example.com", PASSWORD).status_code == 303
    assert "Welcome, Ada Lovelace" in text_of(browser.get("/"))
    browser.log_out()


def test_an_invitation_link_opens_a_page_that_joins_the_invited_account_once(
    kp: Keyplane, browser: Browser, inbox: Inbox
) -> None:
    owner = Actor(ActorType.SESSION, "sess_test", user_id=kp.owner.id, email=kp.owner.email)
    kp.container.orgs.invite(owner, kp.org.id, "Grace@Example.com", OrgRole.READER)
    link = link_in(inbox, "grace@example.com", "/invites/accept")

    # Opening it changes nothing; without a session it asks to log in and comes back here.
    r = browser.get(link)
    assert r.status_code == 200
    assert f"join the organization {kp.org.name} on keyplane as Reader" in text_of(r)
    login = re.search(r'href="(/login\?next=[^"]+)"', r.text)
    assert login is not None and unquote(html.unescape(login.group(1))) == f"/login?next={link}"
    assert kp.container.orgs.invitation(token_of(link))[0].accepted_at is None

    # Another account sees whom it was for and cannot take it.
    browser.log_in("owner@example.com", OWNER_PASSWORD)
    r = browser.get(link)
    assert "You are logged in as owner@example.com" in text_of(r)
    assert "Accept the invitation" not in r.text
    r = browser.post("/invites/accept", {"token": token_of(link)})
    assert r.status_code == 400 and "sent to another email address" in text_of(r)
    browser.log_out()

    # The invited address signs up, verifies, logs in, accepts, and names itself: no new org.
    browser.get("/signup")
    browser.post("/signup", {"email": "grace@example.com", "password": PASSWORD})
    verify = link_in(inbox, "grace@example.com", "/verify")
    browser.get(verify)
    browser.post("/verify", {"token": token_of(verify)})
    browser.log_in("grace@example.com", PASSWORD)
    browser.get(link)
    r = browser.post("/invites/accept", {"token": token_of(link)})
    assert r.status_code == 303 and r.headers["location"] == "/"
    r = browser.get("/profile")
    assert 'name="org_name"' not in r.text
    r = browser.post("/profile", {"name": "Grace Hopper"})
    r = browser.get("/")
    assert f"Organization {kp.org.name}" in text_of(r) and "Reader" in text_of(r)
    members = {m.user.email: m.role for m in kp.container.orgs.members(kp.org.id)}
    assert members["grace@example.com"] is OrgRole.READER
    assert len(kp.container.accounts.organizations()) == 1

    # The link worked once.
    for again in (
        lambda: browser.get(link),
        lambda: browser.post("/invites/accept", {"token": token_of(link)}),
    ):
        browser.get("/account/security")
        r = again()
        assert r.status_code == 400 and "invalid, used or expired" in text_of(r)
    r = browser.get("/invites/accept?token=nonsense")
    assert r.status_code == 400 and "This invitation does not work" in text_of(r)


def test_accepting_an_invitation_proves_the_address_of_an_unverified_account(
    kp: Keyplane, browser: Browser, inbox: Inbox
) -> None:
    """The invitation came to that mailbox: an account signed up for it needs no second link."""
    owner = Actor(ActorType.SESSION, "sess_test", user_id=kp.owner.id, email=kp.owner.email)
    kp.container.orgs.invite(owner, kp.org.id, "erin@example.com", OrgRole.READER)
    link = link_in(inbox, "erin@example.com", "/invites/accept")
    browser.get("/signup")
    browser.post("/signup", {"email": "erin@example.com", "password": PASSWORD})
    browser.log_in("erin@example.com", PASSWORD)
    assert browser.get("/").headers["location"] == "/verify/pending"
    browser.get(link)
    r = browser.post("/invites/accept", {"token": token_of(link)})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert browser.get("/").headers["location"] == "/profile"  # verified: on to the profile
    members = {m.user.email: m for m in kp.container.orgs.members(kp.org.id)}
    assert members["erin@example.com"].user.email_verified_at is not None


def test_signing_up_from_an_invitation_leads_back_to_it_and_joins_that_organization(
    kp: Keyplane, browser: Browser, inbox: Inbox
) -> None:
    """As on GitHub: the invited person signs up from the invitation, logs in, accepts, and is in
    the organization that invited them, never asked to make one of their own."""
    owner = Actor(ActorType.SESSION, "sess_test", user_id=kp.owner.id, email=kp.owner.email)
    kp.container.orgs.invite(owner, kp.org.id, "grace@example.com", OrgRole.READER)
    link = link_in(inbox, "grace@example.com", "/invites/accept")
    page = browser.get(link)
    signup = re.search(r'href="(/signup\?[^"]+)"', page.text)
    assert signup is not None
    r = browser.get(html.unescape(signup.group(1)))
    assert 'value="grace@example.com"' in r.text and 'name="next"' in r.text
    nxt = re.search(r'name="next" value="([^"]+)"', r.text)
    assert nxt is not None and html.unescape(nxt.group(1)) == link
    r = browser.post("/signup", {"email": "grace@example.com", "password": PASSWORD,
                                 "next": html.unescape(nxt.group(1))})  # fmt: skip
    assert "Log in to accept the invitation" in text_of(r)
    assert "<h1>Accept the invitation</h1>" in r.text and "Check your email" not in r.text
    login = re.search(r'href="(/login\?next=[^"]+)"', r.text)
    assert login is not None
    browser.get(html.unescape(login.group(1)))
    r = browser.post("/login", {"email": "grace@example.com", "password": PASSWORD,
                                "next": unquote(html.unescape(login.group(1)).split("next=")[1])})  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == link
    browser.get(link)
    r = browser.post("/invites/accept", {"token": token_of(link)})
    assert r.status_code == 303
    r = browser.get("/profile")
    assert 'name="org_name"' not in r.text  # no organization of their own to make
    browser.post("/profile", {"name": "Grace Hopper"})
    assert f"Organization {kp.org.name}" in text_of(browser.get("/"))
    assert len(kp.container.accounts.organizations()) == 1


def test_a_member_of_two_organizations_switches_between_them(
    kp: Keyplane, browser: Browser, inbox: Inbox
) -> None:
    """Joining a second organization lands in it; the header's switcher goes back and forth, and
    only between the user's own organizations."""
    browser.get("/signup")
    browser.post("/signup", {"email": "dana@example.com", "password": PASSWORD})
    verify = link_in(inbox, "dana@example.com", "/verify")
    browser.get(verify)
    browser.post("/verify", {"token": token_of(verify)})
    browser.log_in("dana@example.com", PASSWORD)
    browser.get("/profile")
    browser.post("/profile", {"name": "Dana", "org_name": "Dana's Lab"})
    assert "Organization Dana's Lab" in text_of(browser.get("/"))
    owner = Actor(ActorType.SESSION, "sess_test", user_id=kp.owner.id, email=kp.owner.email)
    kp.container.orgs.invite(owner, kp.org.id, "dana@example.com", OrgRole.READER)
    link = link_in(inbox, "dana@example.com", "/invites/accept")
    browser.get(link)
    browser.post("/invites/accept", {"token": token_of(link)})
    home = browser.get("/")
    assert f"Organization {kp.org.name}" in text_of(home) and "your role: Reader" in text_of(home)
    own = next(o for o in kp.container.accounts.organizations() if o.name == "Dana's Lab")
    assert browser.post("/organization", {"org_id": own.id}).status_code == 303
    assert "Organization Dana's Lab" in text_of(browser.get("/"))
    browser.post("/organization", {"org_id": "org_of_someone_else"})  # not a member: ignored
    assert "Organization Dana's Lab" in text_of(browser.get("/"))

    # The links of keyplane's emails name their organization: following one switches to it, and
    # the pages after it stay there (one about another organization switches nothing).
    r = browser.get(f"/audit?org={kp.org.id}&page=2")
    assert r.status_code == 303 and r.headers["location"] == "/audit?page=2"
    assert f"Organization {kp.org.name}" in text_of(browser.get("/"))
    r = browser.get("/?org=org_of_someone_else")
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert f"Organization {kp.org.name}" in text_of(browser.get("/"))
    assert browser.get("//evil.example?org=x").headers["location"] == "/"  # never off the site


def test_signing_up_with_a_taken_address_looks_the_same_and_tells_its_owner(
    kp: Keyplane, browser: Browser, inbox: Inbox
) -> None:
    answers = []
    for email in ("owner@example.com", "fresh@example.com"):
        browser.get("/signup")
        r = browser.post("/signup", {"email": email, "password": PASSWORD})
        answers.append(
            (r.status_code, text_of(r).replace(email, "EMAIL"), r.headers.get("set-cookie"))
        )
    assert answers[0] == answers[1]
    wait_until(lambda: len(inbox.received) == 2)
    subjects = {r.rcpt_tos[0]: str(r.message["Subject"]) for r in inbox.received}
    assert subjects == {
        "owner@example.com": "Someone tried to sign up to keyplane with your email address",
        "fresh@example.com": "Verify your email address for keyplane",
    }


def test_bad_sign_ups_are_refused_with_a_reason(kp: Keyplane, browser: Browser) -> None:
    for fields, reason in [
        ({"email": "nobody", "password": PASSWORD}, "Enter a valid email address"),
        ({"email": "a@example.com", "password": "short"}, "at least 12 characters"),
        ({"email": "a@example.com", "password": "Password1234"}, "too common"),
    ]:
        browser.get("/signup")
        r = browser.post("/signup", fields)
        assert r.status_code == 400 and reason in text_of(r)
    assert SqlAuthStore(kp.container.engine).user_by_email("a@example.com") is None


def test_an_unverified_account_is_asked_to_verify_and_can_get_a_new_link(
    kp: Keyplane, browser: Browser, inbox: Inbox, clock: FrozenClock
) -> None:
    browser.get("/signup")
    browser.post("/signup", {"email": "new@example.com", "password": PASSWORD})
    first = link_in(inbox, "new@example.com", "/verify")
    assert browser.log_in("new@example.com", PASSWORD).status_code == 303
    assert browser.get("/").headers["location"] == "/verify/pending"
    assert browser.get("/profile").headers["location"] == "/verify/pending"
    browser.get("/verify/pending")
    r = browser.post("/verify/resend", {})
    assert "less than a minute ago" in text_of(r)
    clock.advance(61)
    r = browser.post("/verify/resend", {})
    assert "We sent a new link" in text_of(r)
    second = link_in(inbox, "new@example.com", "/verify", count=2)
    assert second != first
    r = browser.get(second)
    r = browser.post("/verify", {"token": token_of(second)})
    assert "Complete your profile" in r.text  # signed in: straight on to the profile


# -- log in, sessions, CSRF ---------------------------------------------------------------------------
def test_wrong_password_and_unknown_email_get_the_same_answer(
    kp: Keyplane, browser: Browser
) -> None:
    answers = []
    for email, password in [
        ("owner@example.com", "not the password"),
        ("nobody@example.com", "x" * 12),
    ]:
        r = browser.log_in(email, password)
        answers.append(
            (r.status_code, text_of(r).replace(email, "EMAIL"), "set-cookie" in r.headers)
        )
    assert answers[0] == answers[1]
    assert answers[0][0] == 401 and WRONG in answers[0][1]


def test_session_cookie_is_httponly_lax_and_not_secure_over_http(
    kp: Keyplane, browser: Browser
) -> None:
    r = browser.log_in("owner@example.com", OWNER_PASSWORD)
    cookie = r.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    assert name == "kp_session"
    flags = {f.strip().lower() for f in rest.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/"} <= flags
    assert "secure" not in flags
    assert not any(f.startswith(("max-age", "expires")) for f in flags)  # ends with the browser
    session_id = rest.split(";")[0]
    assert len(session_id) >= 43
    with kp.container.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT id_hash FROM web_sessions").scalars().all()
    assert session_id not in stored and len(stored) == 1  # only its hash is kept


def test_over_https_cookies_are_secure_host_only_and_hsts_is_sent(kp: Keyplane) -> None:
    app, _ = gateway_assembly.build_app(kp.container)
    with_https = Browser(TestClient(app, base_url="https://keyplane.test", follow_redirects=False))
    try:
        r = with_https.get("/login")
        assert r.headers["strict-transport-security"].startswith("max-age=")
        assert r.headers["set-cookie"].startswith("__Host-kp_csrf=")
        r = with_https.post("/login", {"email": "owner@example.com", "password": OWNER_PASSWORD})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-kp_session=")
        assert {"secure", "httponly", "samesite=lax", "path=/"} <= {
            f.strip().lower() for f in cookie.split(";")[1:]
        }
        assert with_https.get("/").headers["location"] == "/profile"  # signed in
    finally:
        with_https.close()


def test_behind_a_trusted_tls_proxy_cookies_are_secure_and_hsts_is_sent(
    tmp_path: Path, clock: FrozenClock
) -> None:
    """keyplane speaks plain HTTP behind a proxy that ends TLS: X-Forwarded-Proto from a trusted
    proxy makes the session cookie Secure and __Host-; the same header from anyone else does not
    (the scheme a client claims for itself is no proof)."""
    container = bootstrap.build(
        make_settings(tmp_path, trusted_proxies=["10.0.0.0/8"]), clock=clock
    )
    container.accounts.initialize(
        email="owner@example.com", password=OWNER_PASSWORD, org_name="Acme"
    )
    app, _ = gateway_assembly.build_app(container)
    https = {"x-forwarded-proto": "https"}
    proxy = TestClient(app, follow_redirects=False, client=("10.1.2.3", 50000), headers=https)
    outside = TestClient(app, follow_redirects=False, client=("198.51.100.7", 50000), headers=https)
    try:
        # (A cookie jar over plain HTTP would not send Secure cookies back, as the browser talking
        # HTTPS to the proxy does: the answers' headers show what the browser is told.)
        behind = proxy.get("/login")
        assert behind.headers["strict-transport-security"].startswith("max-age=")
        cookie = behind.headers["set-cookie"]
        assert cookie.startswith("__Host-kp_csrf=") and "; secure" in cookie.lower()
        direct = outside.get("/login")
        assert "strict-transport-security" not in direct.headers
        cookie = direct.headers["set-cookie"]
        assert cookie.startswith("kp_csrf=") and "secure" not in cookie.lower()
    finally:
        proxy.close()
        outside.close()
        container.close()


def test_every_form_post_needs_its_csrf_token(kp: Keyplane, browser: Browser) -> None:
    browser.get("/login")
    login = {"email": "owner@example.com", "password": OWNER_PASSWORD}
    assert browser.post("/login", login, csrf=False).status_code == 403
    assert browser.post("/login", {**login, "csrf_token": "forged"}, csrf=False).status_code == 403
    # A token from another browser (bound to its own cookie) is worth nothing here.
    with kphttp.Client(base_url=kp.server.url) as other:
        stranger = Browser(other)
        stranger.get("/login")
        foreign = stranger.csrf_token()
    assert browser.post("/login", {**login, "csrf_token": foreign}, csrf=False).status_code == 403
    browser.get("/login")
    r = browser.client.post(
        "/login", data={**login, "csrf_token": browser.csrf_token()},
        headers={"origin": "https://evil.example"},
    )  # fmt: skip
    assert r.status_code == 403 and "nothing was changed" in text_of(r)

    browser.get("/login")
    assert browser.post("/login", login).status_code == 303
    browser.get("/profile")
    for path, fields in [
        ("/profile", {"name": "Mallory"}),
        ("/logout", {}),
        ("/account/totp/setup", {}),
        ("/verify/resend", {}),
    ]:
        assert browser.post(path, fields, csrf=False).status_code == 403, path
    # None of them happened: still signed in, name unchanged.
    assert browser.get("/").headers["location"] == "/profile"
    assert kp.container.accounts.owners(kp.org.id)[0].name == ""


def test_sessions_end_after_30_idle_minutes_or_12_hours(
    kp: Keyplane, browser: Browser, clock: FrozenClock
) -> None:
    browser.log_in_named("owner@example.com", OWNER_PASSWORD)
    for _ in range(23):  # active every 29 minutes: 11 h 7 min
        clock.advance(29 * 60)
        assert browser.get("/").status_code == 200
    clock.advance(29 * 60)  # 11 h 36 min
    assert browser.get("/").status_code == 200
    clock.advance(25 * 60)  # past 12 h, though active
    assert browser.get("/").headers["location"] == "/login"

    browser.log_in("owner@example.com", OWNER_PASSWORD)
    clock.advance(30 * 60)  # idle
    assert browser.get("/").headers["location"] == "/login"


def test_next_only_leads_to_pages_of_this_site(kp: Keyplane, browser: Browser) -> None:
    r = browser.get("/account/security")
    assert r.headers["location"] == "/login?next=%2Faccount%2Fsecurity"
    r = browser.get("/login?next=%2Faccount%2Fsecurity")
    r = browser.post(
        "/login",
        {"email": "owner@example.com", "password": OWNER_PASSWORD, "next": "/account/security"},
    )
    assert r.headers["location"] == "/account/security"
    browser.log_out()
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        browser.get("/login")
        r = browser.post(
            "/login", {"email": "owner@example.com", "password": OWNER_PASSWORD, "next": evil}
        )
        assert r.headers["location"] == "/", evil
        browser.log_out()


def test_completing_the_profile_leads_on_to_the_page_asked_for(
    kp: Keyplane, browser: Browser
) -> None:
    browser.log_in("owner@example.com", OWNER_PASSWORD)
    r = browser.get("/account/security")
    assert r.headers["location"] == "/profile?next=%2Faccount%2Fsecurity"
    r = browser.get(r.headers["location"])
    assert "Complete your profile" in text_of(r)
    r = browser.post("/profile", {"name": "Olive", "next": "/account/security"})
    assert r.status_code == 303 and r.headers["location"] == "/account/security"
    r = browser.get("/profile")  # linked from every page's header
    assert "Your profile" in text_of(r) and 'href="/profile"' in r.text
    r = browser.post("/profile", {"name": "Olive Oyl", "next": "https://evil.example/"})
    assert r.headers["location"] == "/"
    assert "Welcome, Olive Oyl" in text_of(browser.get("/"))


def test_sign_ins_and_outs_are_in_the_organizations_audit_log(
    kp: Keyplane, browser: Browser
) -> None:
    assert browser.log_in("owner@example.com", "not the password").status_code == 401
    assert browser.log_in("nobody@example.com", "not the password").status_code == 401
    browser.log_in_named("owner@example.com", OWNER_PASSWORD)
    browser.log_out()
    types = ["login.failed", "login.succeeded", "logout.succeeded"]
    page = kp.container.audit.query(kp.org.id, AuditFilter(event_types=types), limit=10)
    events = sorted(page.events, key=lambda e: (e.effective_at, types.index(e.type)))
    assert [e.type for e in events] == types
    failed, succeeded, out = events
    assert failed.details == {"data": {"error_code": "invalid_password"}}
    assert {e.target_id for e in events} == {kp.owner.id}
    assert {e.actor.email for e in events} == {"owner@example.com"}
    assert {e.actor.ip_address for e in events} == {"127.0.0.1"}
    assert succeeded.actor.id == out.actor.id and succeeded.actor.id.startswith("sess_")


def test_a_form_sent_after_the_session_ended_leads_back_to_its_page(
    kp: Keyplane, browser: Browser, clock: FrozenClock
) -> None:
    browser.log_in_named("owner@example.com", OWNER_PASSWORD)
    assert browser.get("/account/security").status_code == 200
    clock.advance(30 * 60)  # the session ends while the page is open
    here = kp.server.url + "/account/security"
    token = browser.csrf_token()
    r = browser.client.post("/account/totp/setup", data={"csrf_token": token},
                            headers={"referer": here})  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Faccount%2Fsecurity"
    r = browser.client.post("/account/totp/setup", data={"csrf_token": token},
                            headers={"referer": "https://evil.example/account/security"})  # fmt: skip
    assert r.headers["location"] == "/login"
    # A page answers HEAD as its GET, without the body.
    head = browser.client.head("/login")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/html")


# -- password reset ---------------------------------------------------------------------------------
def test_password_reset_by_email_is_single_use_and_expires(
    kp: Keyplane, browser: Browser, inbox: Inbox, clock: FrozenClock
) -> None:
    victim_session = Browser(kphttp.Client(base_url=kp.server.url, follow_redirects=False))
    try:
        victim_session.log_in("owner@example.com", OWNER_PASSWORD)
        assert victim_session.get("/").headers["location"] == "/profile"

        for email in ("nobody@example.com", "owner@example.com"):
            browser.get("/password/forgot")
            r = browser.post("/password/forgot", {"email": email})
            assert (
                r.status_code == 200
                and "If" in text_of(r)
                and "has a keyplane account" in text_of(r)
            )
        link = link_in(inbox, "owner@example.com", "/password/reset")
        assert all(m.rcpt_tos == ["owner@example.com"] for m in inbox.received)

        r = browser.get(link)
        assert r.status_code == 200 and "Choose a new password" in text_of(r)
        r = browser.post("/password/reset", {"token": token_of(link), "password": "password1234"})
        assert r.status_code == 400 and "too common" in text_of(r)  # and the link still works:
        r = browser.post("/password/reset", {"token": token_of(link), "password": PASSWORD})
        assert r.status_code == 200 and "Password changed" in text_of(r)

        # Every session of the account ended; the old password is gone, the new one works.
        assert victim_session.get("/").headers["location"] == "/login"
        assert browser.log_in("owner@example.com", OWNER_PASSWORD).status_code == 401
        assert browser.log_in("owner@example.com", PASSWORD).status_code == 303
        browser.log_out()

        r = browser.get(link)
        assert r.status_code == 400 and "already been used" in text_of(r)
        browser.get("/login")
        r = browser.post(
            "/password/reset", {"token": token_of(link), "password": "another fine passphrase"}
        )
        assert r.status_code == 400 and "already been used" in text_of(r)

        # A link unused for an hour has expired.
        clock.advance(61)
        browser.get("/password/forgot")
        browser.post("/password/forgot", {"email": "owner@example.com"})
        late = link_in(inbox, "owner@example.com", "/password/reset", count=2)
        clock.advance(3600)
        r = browser.get(late)
        assert r.status_code == 400 and "This link has expired" in text_of(r)
        browser.get("/login")
        r = browser.post(
            "/password/reset", {"token": token_of(late), "password": "another fine passphrase"}
        )
        assert r.status_code == 400 and "expired" in text_of(r)
        assert browser.log_in("owner@example.com", PASSWORD).status_code == 303
    finally:
        victim_session.close()


def test_a_newer_reset_link_cancels_the_older_one(
    kp: Keyplane, browser: Browser, inbox: Inbox, clock: FrozenClock
) -> None:
    for _ in range(2):
        browser.get("/password/forgot")
        browser.post("/password/forgot", {"email": "owner@example.com"})
        clock.advance(61)
    old = link_in(inbox, "owner@example.com", "/password/reset", count=1)
    new = link_in(inbox, "owner@example.com", "/password/reset", count=2)
    assert browser.get(old).status_code == 400
    assert browser.get(new).status_code == 200


# -- two-factor -------------------------------------------------------------------------------------
def test_totp_then_log_in_needs_a_code_and_a_recovery_code_works_once(
    kp: Keyplane, browser: Browser, clock: FrozenClock
) -> None:
    browser.log_in_named("owner@example.com", OWNER_PASSWORD)
    r = browser.get("/account/security")
    assert "Off." in text_of(r)
    # The password first: a session someone else holds must not bind their authenticator.
    r = browser.post("/account/totp/setup", {"password": "not the password"})
    assert r.status_code == 400 and "totp-secret" not in r.text
    r = browser.post("/account/totp/setup", {"password": OWNER_PASSWORD})
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', r.text)
    setup_token = re.search(r'name="setup_token" value="([^"]+)"', r.text)
    assert secret and setup_token
    assert "otpauth://totp/keyplane:owner%40example.com?secret=" in html.unescape(r.text)
    assert re.search(r'<img class="qr" src="data:image/svg\+xml[^"]+"', r.text)  # to scan
    totp = pyotp.TOTP(secret.group(1))

    r = browser.post(
        "/account/totp/enable",
        {
            "setup_token": setup_token.group(1),
            "code": "000000" if totp.at(clock.now()) != "000000" else "111111",
        },
    )
    assert r.status_code == 400 and secret.group(1) in r.text  # the same secret, to try again
    r = browser.post(
        "/account/totp/enable", {"setup_token": setup_token.group(1), "code": totp.at(clock.now())}
    )
    assert r.status_code == 200 and "They are shown only now" in text_of(r)
    codes = re.findall(r"<code>([a-z2-7]{5}(?:-[a-z2-7]{5}){3})</code>", r.text)
    assert len(codes) == 10
    with kp.container.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT sealed_secret FROM user_second_factors").scalar_one()
        hashes = conn.exec_driver_sql("SELECT code_hash FROM recovery_codes").scalars().all()
    assert secret.group(1) not in stored and not set(codes) & set(hashes)

    # Once on, neither the same form sent again nor a new setup replaces the app or the codes
    # (another app only after turning it off, which asks for the password).
    form = {"setup_token": setup_token.group(1), "code": totp.at(clock.now())}
    r = browser.post("/account/totp/enable", form)
    assert r.status_code == 400 and "already on" in text_of(r) and "<code>" not in r.text
    r = browser.post("/account/totp/setup", {"password": OWNER_PASSWORD})
    assert r.status_code == 400 and "already on" in text_of(r) and "totp-secret" not in r.text
    with kp.container.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT sealed_secret FROM user_second_factors").all() == [
            (stored,)
        ]
        assert conn.exec_driver_sql("SELECT code_hash FROM recovery_codes").scalars().all() == (
            hashes
        )
    browser.log_out()

    # The password alone signs nobody in.
    r = browser.log_in("owner@example.com", OWNER_PASSWORD)
    assert r.headers["location"] == "/login/totp?next=%2F"
    assert browser.get("/").headers["location"] == "/login"
    browser.get("/login/totp")
    r = browser.post("/login/totp", {"code": totp.at(clock.now())})  # used to turn it on: replay
    assert r.status_code == 401 and "That code was already used. Wait for" in text_of(r)
    clock.advance(30)
    r = browser.post("/login/totp", {"code": totp.at(clock.now())})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "Welcome, Olive" in text_of(browser.get("/"))
    browser.log_out()

    # A recovery code works once.
    for attempt in ("first", "second"):
        browser.log_in("owner@example.com", OWNER_PASSWORD)
        browser.get("/login/totp")
        r = browser.post("/login/totp", {"code": codes[3].upper()})
        if attempt == "first":
            assert r.status_code == 303
            assert "Recovery codes left: 9" in text_of(browser.get("/account/security"))
            browser.log_out()
        else:
            assert r.status_code == 401
            assert (
                "That recovery code was already used. Each code works once: use another one."
                in text_of(r)
            )
    # One that was never issued is just wrong.
    r = browser.post("/login/totp", {"code": "aaaaa-bbbbb-ccccc-ddddd"})
    assert r.status_code == 401 and "That code is not right" in text_of(r)

    # A pending sign-in expires after five minutes.
    clock.advance(301)
    r = browser.post("/login/totp", {"code": codes[4]})
    assert r.status_code == 400 and "expired" in text_of(r)

    # Turning it off needs the password.
    browser.get("/login")
    browser.post("/login", {"email": "owner@example.com", "password": OWNER_PASSWORD})
    browser.get("/login/totp")
    browser.post("/login/totp", {"code": codes[5]})
    browser.get("/account/security")
    r = browser.post("/account/totp/disable", {"password": "wrong password!"})
    assert r.status_code == 400 and "password is not right" in text_of(r)
    r = browser.post("/account/totp/disable", {"password": OWNER_PASSWORD})
    assert "Two-factor authentication is off" in text_of(r)
    browser.log_out()
    assert browser.log_in("owner@example.com", OWNER_PASSWORD).headers["location"] == "/"


# -- throttling ----------------------------------------------------------------------------------
@pytest.fixture
def local(tmp_path: Path, clock: FrozenClock) -> Iterator[bootstrap.Container]:
    """A keyplane container whose app the tests call in-process, from any client address."""
    container = bootstrap.build(make_settings(tmp_path), clock=clock)
    owner, _, _ = container.accounts.initialize(
        email="owner@example.com", password=OWNER_PASSWORD, org_name="Acme"
    )
    store = SqlAuthStore(container.engine)
    store.set_name(owner.id, "Olive")
    now = int(clock.now())
    store.add_user(
        User("user-other", "other@example.com", "Otto", hash_password(PASSWORD), now, now)
    )
    yield container
    container.close()


def browser_at(container: bootstrap.Container, ip: str) -> Browser:
    app, _ = gateway_assembly.build_app(container)
    return Browser(TestClient(app, follow_redirects=False, client=(ip, 50000)))


def test_10_failed_logins_in_15_minutes_throttle_new_logins_not_existing_sessions(
    local: bootstrap.Container, clock: FrozenClock
) -> None:
    victim = browser_at(local, "198.51.100.7")
    attacker = browser_at(local, "203.0.113.66")
    elsewhere = browser_at(local, "192.0.2.10")
    try:
        assert victim.log_in("owner@example.com", OWNER_PASSWORD).status_code == 303
        attacker.get("/login")
        for i in range(10):
            r = attacker.post(
                "/login", {"email": "owner@example.com", "password": f"guess number {i}"}
            )
            assert r.status_code == 401, i
            clock.advance(60)

        # The 11th is refused even with the right password, with how long to wait: until the
        # first guess (10 minutes ago) leaves the 15-minute window.
        r = attacker.post("/login", {"email": "owner@example.com", "password": OWNER_PASSWORD})
        assert r.status_code == 429 and r.headers["retry-after"] == "300"
        assert (
            "Too many failed sign-in attempts for this account. Try again in 5 minutes."
            in text_of(r)
        )
        # The account is throttled from every address ...
        r = elsewhere.log_in("owner@example.com", OWNER_PASSWORD)
        assert r.status_code == 429 and "for this account" in text_of(r)
        # ... while other accounts still sign in, from the attacker's address too.
        assert attacker.log_in("other@example.com", PASSWORD).status_code == 303
        attacker.log_out()

        # The victim's session is untouched: it reads and changes things as before.
        assert "Welcome, Olive" in text_of(victim.get("/"))
        victim.get("/profile")
        assert victim.post("/profile", {"name": "Olive Owner"}).status_code == 303

        clock.advance(300)  # the first guess left the window: one more try
        assert elsewhere.log_in("owner@example.com", OWNER_PASSWORD).status_code == 303
    finally:
        for b in (victim, attacker, elsewhere):
            b.close()


def test_unknown_addresses_are_throttled_exactly_like_accounts(
    local: bootstrap.Container,
) -> None:
    """Nothing tells an attacker whether an address has an account: not the answers, not when
    the throttle starts, not its message."""
    answers: dict[str, list[tuple[int, str]]] = {}
    for email, ip in (("owner@example.com", "203.0.113.1"), ("nobody@example.com", "203.0.113.2")):
        browser = browser_at(local, ip)
        try:
            browser.get("/login")
            seen = []
            for i in range(11):
                r = browser.post("/login", {"email": email, "password": f"guess number {i}"})
                seen.append((r.status_code, text_of(r).replace(email, "EMAIL")))
            answers[email] = seen
        finally:
            browser.close()
    assert answers["owner@example.com"] == answers["nobody@example.com"]
    assert [status for status, _ in answers["nobody@example.com"]] == [401] * 10 + [429]


def test_a_successful_login_clears_the_accounts_failed_attempts(
    local: bootstrap.Container,
) -> None:
    browser = browser_at(local, "198.51.100.7")
    try:
        for _ in range(2):
            for i in range(9):
                r = browser.log_in("owner@example.com", f"typo number {i}")
                assert r.status_code == 401
            assert browser.log_in("owner@example.com", OWNER_PASSWORD).status_code == 303
            browser.log_out()
        # Had the first nine been kept, the tenth typo would have locked the account.
        assert browser.log_in("owner@example.com", "one more typo").status_code == 401
        assert browser.log_in("owner@example.com", OWNER_PASSWORD).status_code == 303
    finally:
        browser.close()


@pytest.mark.slow
def test_many_failed_logins_from_one_address_throttle_it_for_every_account(
    tmp_path: Path, clock: FrozenClock
) -> None:
    settings = make_settings(tmp_path, login_max_failures_per_address=30)
    container = bootstrap.build(settings, clock=clock)
    container.accounts.initialize(
        email="owner@example.com", password=OWNER_PASSWORD, org_name="Acme"
    )
    attacker = browser_at(container, "203.0.113.66")
    elsewhere = browser_at(container, "192.0.2.10")
    try:
        attacker.get("/login")
        for i in range(30):  # a few guesses at many accounts: none reaches 10
            r = attacker.post("/login", {"email": f"user{i % 5}@example.com", "password": "guess"})
            assert r.status_code == 401, i
        r = attacker.post("/login", {"email": "owner@example.com", "password": OWNER_PASSWORD})
        assert r.status_code == 429 and "from your network" in text_of(r)
        assert r.headers["retry-after"] == "900"
        assert elsewhere.log_in("owner@example.com", OWNER_PASSWORD).status_code == 303
    finally:
        attacker.close()
        elsewhere.close()
        container.close()


@pytest.mark.slow
def test_behind_a_trusted_proxy_each_caller_is_throttled_by_its_own_address(
    tmp_path: Path, clock: FrozenClock
) -> None:
    settings = make_settings(tmp_path, trusted_proxies=["10.0.0.0/8"])
    container = bootstrap.build(settings, clock=clock)
    container.accounts.initialize(
        email="owner@example.com", password=OWNER_PASSWORD, org_name="Acme"
    )
    app, _ = gateway_assembly.build_app(container)
    proxy = TestClient(app, follow_redirects=False, client=("10.1.2.3", 50000))
    outside = TestClient(app, follow_redirects=False, client=("198.51.100.7", 50000))
    try:
        attacker = Browser(proxy)
        attacker.get("/login", headers={"x-forwarded-for": "203.0.113.66"})
        for i in range(100):
            proxy.headers["x-forwarded-for"] = "203.0.113.66, 10.9.9.9"  # through two proxies
            r = attacker.post("/login", {"email": f"nobody{i}@example.com", "password": "guess!"})
            assert r.status_code == 401, i
        r = attacker.post("/login", {"email": "owner@example.com", "password": OWNER_PASSWORD})
        assert r.status_code == 429 and "from your network" in text_of(r)
        # Another caller behind the same proxy signs in; the header of a caller that is no proxy
        # is ignored (claiming the throttled address changes nothing for it).
        proxy.headers["x-forwarded-for"] = "192.0.2.10"
        assert attacker.log_in("owner@example.com", OWNER_PASSWORD).status_code == 303
        spoofer = Browser(outside)
        outside.headers["x-forwarded-for"] = "203.0.113.66"
        assert spoofer.log_in("owner@example.com", OWNER_PASSWORD).status_code == 303
    finally:
        proxy.close()
        outside.close()
        container.close()


def test_behind_a_proxy_that_rewrites_host_forms_from_the_public_url_are_accepted(
    tmp_path: Path, clock: FrozenClock
) -> None:
    container = bootstrap.build(
        make_settings(tmp_path, public_url="https://keys.example.com"), clock=clock
    )
    container.accounts.initialize(
        email="owner@example.com", password=OWNER_PASSWORD, org_name="Acme"
    )
    app, _ = gateway_assembly.build_app(container)
    # nginx's default passes its upstream's address as Host; the browser's Origin is the public URL
    client = TestClient(app, base_url="http://127.0.0.1:8080", follow_redirects=False)
    try:
        browser = Browser(client)
        login = {"email": "owner@example.com", "password": OWNER_PASSWORD}
        for origin, status in (("https://evil.example", 403), ("https://keys.example.com", 303)):
            browser.get("/login")
            r = client.post(
                "/login", data={**login, "csrf_token": browser.csrf_token()},
                headers={"origin": origin},
            )  # fmt: skip
            assert r.status_code == status, origin
    finally:
        client.close()
        container.close()


def failures_on_record(container: bootstrap.Container, count: int, clock: FrozenClock) -> None:
    """``count`` failed sign-ins of the Owner's account already on record."""
    store = SqlAuthStore(container.engine)
    for _ in range(count):
        store.reserve_attempt(
            {account_subject("owner@example.com"): count}, since=0, at=int(clock.now())
        )


def test_a_password_reset_lifts_the_lock_an_attackers_guesses_put_on_an_account(
    kp: Keyplane, browser: Browser, inbox: Inbox
) -> None:
    """Anyone can make 10 wrong guesses at an account; its owner, who can read its mailbox, gets
    back in through a password reset instead of waiting out the lock."""
    failures_on_record(kp.container, 10, kp.container.clock)  # type: ignore[arg-type]
    r = browser.log_in("owner@example.com", OWNER_PASSWORD)
    assert r.status_code == 429 and "for this account" in text_of(r)
    browser.get("/password/forgot")
    browser.post("/password/forgot", {"email": "owner@example.com"})
    link = link_in(inbox, "owner@example.com", "/password/reset")
    browser.get(link)
    r = browser.post("/password/reset", {"token": token_of(link), "password": PASSWORD})
    assert r.status_code == 200 and "Password changed" in text_of(r)
    assert browser.log_in("owner@example.com", PASSWORD).status_code == 303


def test_password_reset_requests_are_throttled_per_address(
    tmp_path: Path, clock: FrozenClock
) -> None:
    """Each request emails someone: one network cannot make keyplane mail every address."""
    settings = make_settings(tmp_path, password_reset_max_per_address=3)
    container = bootstrap.build(settings, clock=clock)
    sender = browser_at(container, "203.0.113.66")
    elsewhere = browser_at(container, "192.0.2.10")
    try:
        for i in range(3):
            sender.get("/password/forgot")
            r = sender.post("/password/forgot", {"email": f"person{i}@example.com"})
            assert r.status_code == 200 and "Check your email" in text_of(r), i
            clock.advance(60)
        sender.get("/password/forgot")
        r = sender.post("/password/forgot", {"email": "person9@example.com"})
        assert r.status_code == 429 and r.headers["retry-after"] == "720"
        assert (
            "Too many password reset requests from your network. Try again in 12 minutes."
            in text_of(r)
        )
        elsewhere.get("/password/forgot")
        r = elsewhere.post("/password/forgot", {"email": "person9@example.com"})
        assert r.status_code == 200
        clock.advance(720)
        sender.get("/password/forgot")
        assert sender.post("/password/forgot", {"email": "person9@example.com"}).status_code == 200
    finally:
        sender.close()
        elsewhere.close()
        container.close()


def mailed(container: bootstrap.Container) -> list[tuple[str, str]]:
    """(recipient, subject) of every email keyplane queued, sorted."""
    with container.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT recipients, subject FROM email_outbox").all()
    return sorted((json.loads(to)[0], subject) for to, subject in rows)


VERIFY = "Verify your email address for keyplane"
TAKEN = "Someone tried to sign up to keyplane with your email address"


def test_sign_ups_are_throttled_per_address(tmp_path: Path, clock: FrozenClock) -> None:
    """Each sign-up emails the address typed: one network cannot make keyplane mail every
    address, new or taken alike (the answers stay the same for both)."""
    settings = make_settings(tmp_path, signup_max_per_address=3)
    container = bootstrap.build(settings, clock=clock)
    container.accounts.initialize(
        email="owner@example.com", password=OWNER_PASSWORD, org_name="Acme"
    )
    sender = browser_at(container, "203.0.113.66")
    elsewhere = browser_at(container, "192.0.2.10")

    def sign_up(browser: Browser, email: str, password: str = PASSWORD) -> httpx.Response:
        browser.get("/signup")
        return browser.post("/signup", {"email": email, "password": password})

    try:
        # A refused form emails no one and counts for nothing.
        assert sign_up(sender, "person0@example.com", "short").status_code == 400
        for email in ("person0@example.com", "owner@example.com", "person1@example.com"):
            r = sign_up(sender, email)
            assert r.status_code == 200 and "Check your email" in text_of(r), email
            clock.advance(60)
        # Sign-ups count over an hour, longer than failed sign-ins (whose counting must not
        # forget them).
        clock.advance(1000)
        assert sender.log_in("owner@example.com", "not the password").status_code == 401
        for email in ("person2@example.com", "owner@example.com"):
            r = sign_up(sender, email)
            assert r.status_code == 429 and r.headers["retry-after"] == "2420", email
            assert "Too many sign-ups from your network. Try again in 41 minutes." in text_of(r)
        assert mailed(container) == [
            ("owner@example.com", TAKEN),
            ("person0@example.com", VERIFY),
            ("person1@example.com", VERIFY),
        ]
        assert sign_up(elsewhere, "person2@example.com").status_code == 200
        clock.advance(2420)
        assert sign_up(sender, "person3@example.com").status_code == 200
    finally:
        sender.close()
        elsewhere.close()
        container.close()


def test_new_verification_links_count_with_sign_ups_and_come_once_a_minute(
    tmp_path: Path, clock: FrozenClock
) -> None:
    """Asking for a new link again and again must not be a way around the sign-up throttle."""
    settings = make_settings(tmp_path, signup_max_per_address=3)  # two sign-ups, one new link
    container = bootstrap.build(settings, clock=clock)
    browser = browser_at(container, "203.0.113.66")
    try:
        browser.get("/signup")
        browser.post("/signup", {"email": "new@example.com", "password": PASSWORD})
        browser.get("/signup")  # the same address again: no second verification email
        browser.post("/signup", {"email": "new@example.com", "password": PASSWORD})
        assert browser.log_in("new@example.com", PASSWORD).status_code == 303
        browser.get("/verify/pending")
        r = browser.post("/verify/resend", {})
        assert r.status_code == 200 and "less than a minute ago" in text_of(r)
        assert mailed(container) == [("new@example.com", TAKEN), ("new@example.com", VERIFY)]
        clock.advance(61)
        r = browser.post("/verify/resend", {})
        assert r.status_code == 200 and "We sent a new link" in text_of(r)
        clock.advance(61)
        r = browser.post("/verify/resend", {})
        assert r.status_code == 429 and r.headers["retry-after"] == "3478"
        assert (
            "Too many requests for a verification email from your network. "
            "Try again in 58 minutes." in text_of(r)
        )
        assert [m for m in mailed(container) if m[1] == VERIFY] == [("new@example.com", VERIFY)] * 2
    finally:
        browser.close()
        container.close()


def test_credential_changes_are_emailed_to_the_owner_and_audited(
    kp: Keyplane, browser: Browser, inbox: Inbox, clock: FrozenClock
) -> None:
    """A change the owner did not make (a stolen session, say) is seen in the mailbox, and where
    it came from is in the audit log (OWASP ASVS 2.2.3)."""
    browser.log_in_named("owner@example.com", OWNER_PASSWORD)
    browser.get("/account/security")
    r = browser.post("/account/totp/setup", {"password": OWNER_PASSWORD})
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', r.text)
    token = re.search(r'name="setup_token" value="([^"]+)"', r.text)
    assert secret and token
    code = pyotp.TOTP(secret.group(1)).at(clock.now())
    browser.post("/account/totp/enable", {"setup_token": token.group(1), "code": code})
    browser.get("/account/security")
    browser.post("/account/recovery-codes", {"password": OWNER_PASSWORD})
    browser.get("/account/security")
    browser.post("/account/totp/disable", {"password": OWNER_PASSWORD})
    browser.log_out()
    browser.get("/password/forgot")
    browser.post("/password/forgot", {"email": "owner@example.com"})
    link = link_in(inbox, "owner@example.com", "/password/reset")
    browser.get(link)
    browser.post("/password/reset", {"token": token_of(link), "password": PASSWORD})

    expected = [
        "[keyplane] Two-factor authentication was turned on",
        "[keyplane] New two-factor recovery codes",
        "[keyplane] Two-factor authentication was turned off",
        "[keyplane] Your keyplane password was changed",
    ]

    def notices() -> list[str]:
        subjects = [str(m.message["Subject"]) for m in inbox.received]
        return [s for s in subjects if s in expected]

    # (One outbox run may send them in any order: the frozen clock gives them one timestamp.)
    assert sorted(wait_until(lambda: len(notices()) == 4 and notices())) == sorted(expected)
    mail = next(m for m in inbox.received if "password was changed" in str(m.message["Subject"]))
    assert mail.rcpt_tos == ["owner@example.com"]
    plain = mail.message.get_body(("plain",))
    assert plain is not None
    text = plain.get_content()  # type: ignore[attr-defined]
    assert "127.0.0.1" in text and "/password/forgot" in text
    events = kp.container.audit.query(kp.org.id, AuditFilter(event_types=[
        "user.two_factor_enabled", "user.recovery_codes_replaced", "user.two_factor_disabled",
        "user.password_changed",
    ])).events  # fmt: skip
    assert len(events) == 4 and all(e.actor.ip_address == "127.0.0.1" for e in events)


def test_wrong_totp_codes_count_as_failed_logins(
    local: bootstrap.Container, clock: FrozenClock
) -> None:
    user = Browser(TestClient(gateway_assembly.build_app(local)[0], follow_redirects=False))
    try:
        user.log_in("owner@example.com", OWNER_PASSWORD)
        user.get("/account/security")
        r = user.post("/account/totp/setup", {"password": OWNER_PASSWORD})
        secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', r.text)
        token = re.search(r'name="setup_token" value="([^"]+)"', r.text)
        assert secret and token
        totp = pyotp.TOTP(secret.group(1))
        user.post(
            "/account/totp/enable", {"setup_token": token.group(1), "code": totp.at(clock.now())}
        )
        user.log_out()
        clock.advance(30)

        failures_on_record(local, 9, clock)  # (password guesses from elsewhere) ...
        user.log_in("owner@example.com", OWNER_PASSWORD)  # (which the password alone keeps)
        user.get("/login/totp")
        wrong = "000000" if totp.at(clock.now()) != "000000" else "111111"
        assert user.post("/login/totp", {"code": wrong}).status_code == 401  # the 10th
        r = user.post("/login/totp", {"code": totp.at(clock.now())})
        assert r.status_code == 429 and "Try again in" in text_of(r)
    finally:
        user.close()


def test_wrong_passwords_on_the_security_page_count_as_failed_logins(
    local: bootstrap.Container, clock: FrozenClock
) -> None:
    """A stolen session is no way to guess the account's password without limit."""
    user = browser_at(local, "127.0.0.1")
    try:
        user.log_in("owner@example.com", OWNER_PASSWORD)
        user.get("/account/security")
        r = user.post("/account/totp/disable", {"password": OWNER_PASSWORD})
        assert r.status_code == 200  # (it was off: nothing to do, and no failure counted)
        failures_on_record(local, 8, clock)  # (guesses at the login page)
        for form in ("/account/recovery-codes", "/account/totp/disable"):  # the 9th, the 10th
            r = user.post(form, {"password": "not the password!"})
            assert r.status_code == 400 and "password is not right" in text_of(r)
        for form in ("/account/recovery-codes", "/account/totp/disable"):
            r = user.post(form, {"password": OWNER_PASSWORD})
            assert r.status_code == 429 and r.headers["retry-after"] == "900"
            assert "for this account. Try again in 15 minutes" in text_of(r)
        assert "Welcome, Olive" in text_of(user.get("/"))  # the session itself goes on
    finally:
        user.close()


# -- the store under concurrency ------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Engine]]:
    """Two engines on one fresh database, as two keyplane processes would have."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'auth.db'}"
        else:
            url = stack.enter_context(fresh_postgres())
        made = [make_engine(url) for _ in range(2)]
        try:
            migrate.upgrade(made[0])
            yield made
        finally:
            for engine in made:
                engine.dispose()


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Runs fn(0..n-1) in n threads released at once; returns the results in order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait(timeout=10)
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_failed_logins_never_get_past_the_limit(engines: list[Engine]) -> None:
    stores = [SqlAuthStore(e) for e in engines]
    account = account_subject("owner@example.com")
    results = race(
        24,
        lambda i: stores[i % 2].reserve_attempt(
            {account: 10, f"addr:{i}": 100}, since=1000, at=2000 + i
        ),
    )
    allowed = [r for r in results if r.blocked is None]
    assert len(allowed) == 10
    assert all(r.blocked == account and len(r.blocked_failures) == 10 for r in results if r.blocked)
    stores[0].forgive_attempt(allowed[0].ids)  # a success gives its attempt back
    assert stores[1].reserve_attempt({account: 10}, since=1000, at=3000).blocked is None
    assert stores[1].reserve_attempt({account: 10}, since=1000, at=3000).blocked == account
    # Failures older than the window no longer count.
    assert stores[0].reserve_attempt({account: 10}, since=2999, at=6000).blocked is None


def test_a_link_token_is_used_once_however_many_race_for_it(engines: list[Engine]) -> None:
    stores = [SqlAuthStore(e) for e in engines]
    stores[0].add_user(User("user-ada", "ada@example.com", "", "x", 1000))
    stores[0].add_token(OneTimeToken("h" * 64, TokenPurpose.VERIFY_EMAIL, "user-ada", 1000, 5000))
    results = race(12, lambda i: stores[i % 2].use_token(TokenPurpose.VERIFY_EMAIL, "h" * 64, 2000))
    assert sum(r is not None for r in results) == 1
