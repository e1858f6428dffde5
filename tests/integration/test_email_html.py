"""Every email keyplane sends arrives as ``multipart/alternative``: its plain text and an HTML part
on the shared layout that carries the same links (their ``?org=`` too), with the names people typed
(an organization called ``<script>…``, a project with ``&`` and ``"``) escaped in the HTML and
readable as typed in the text. Each case sends its email through the code that sends it, the
outbox, the dispatcher and SMTP to a real mail server (aiosmtpd). The links of the emails about a
key or the organization's billing open the page they name, for their organization, signed in."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from markupsafe import escape
from sqlalchemy import update
from test_accounts_web import Browser, link_in, token_of
from test_payments import BUYER, NO_FUNDS, VISA

import kphttp
from conftest import make_settings
from keyplane import bootstrap, gateway_assembly
from keyplane.accounts.models import OrgRole, Project, User
from keyplane.accounts.org_ports import InviteProject, ProjectRole
from keyplane.audit.models import Actor, ActorType
from keyplane.billing.payment_ports import ProviderReport
from keyplane.billing.periods import period_of
from keyplane.billing.recharge import RECHARGE_RETRY_S
from keyplane.billing.wallet import OrgMoney
from keyplane.billing.watcher import SpendWatcher
from keyplane.clock import FrozenClock
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.notify.dispatcher import EmailDispatcher
from keyplane.storage.payment_tables import payments
from kptest import ServerThread, wait_until
from smtp_support import Inbox, Received, SmtpServer

PUBLIC_URL = "https://keyplane.example.com"
ORG_NAME = '<script>alert("org")</script> Tom & "Jerry"'
PROJECT_NAME = "<img src=x onerror=alert(1)> R&D 'labs'"
KEY_NAME = '"><b>key</b> & co'
ADMIN_KEY_NAME = "<i>ops</i> & 'admin'"
PASSWORD = "correct horse battery"
USD = 1_000_000
DAY = 86400
HOUR = 3600


@dataclass
class World:
    c: bootstrap.Container
    clock: FrozenClock
    inbox: Inbox
    owner: User
    org_id: str
    project: Project
    key: ApiKey
    admin: ApiKey | None = None  # an admin key, made by the kinds about one

    def admin_key(self) -> ApiKey:
        if self.admin is None:
            self.admin, _ = self.c.keys.create(
                kind=KeyKind.ADMIN, org_id=self.org_id, project_id=None, name=ADMIN_KEY_NAME,
                owner_type="user", owner_id=self.owner.id, created_by=self.owner.id,
            )  # fmt: skip
        return self.admin

    def watcher(self) -> SpendWatcher:
        """The spend watcher as the gateway builds it (gateway_assembly)."""
        c = self.c
        return SpendWatcher(
            c.money_store, c.outbox, c.clock, billing_emails=c.billing_emails,
            org_name=c.accounts.org_name, project_name=c.accounts.project_name,
            public_url=c.settings.public_url, publish=c.webhooks.publish, audit=c.audit,
        )  # fmt: skip

    def owner_actor(self) -> Actor:
        return Actor(ActorType.SESSION, "a session", user_id=self.owner.id, email=self.owner.email)


@pytest.fixture
def world(tmp_path: Path, smtp: tuple[Inbox, SmtpServer]) -> Iterator[World]:
    inbox, server = smtp
    clock = FrozenClock(1_800_000_000.0)
    settings = make_settings(
        tmp_path, smtp_port=server.port, public_url=PUBLIC_URL, email_dispatch_interval_s=0.05
    )
    c = bootstrap.build(settings, clock=clock)
    owner, org, _ = c.accounts.initialize(
        email="owner@example.com", password=PASSWORD, org_name=ORG_NAME
    )
    c.auth.signup.address_proven(owner.id)
    project = c.accounts.create_project(org.id, PROJECT_NAME)
    key, _ = c.keys.create(
        kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name=KEY_NAME,
        owner_type="user", owner_id=owner.id, created_by=owner.id,
    )  # fmt: skip
    c.billing.open_account(org.id, tier="free", welcome_credit=0)
    yield World(c, clock, inbox, owner, org.id, project, key)
    c.close()


# -- each kind of email, sent the way keyplane sends it -----------------------------------------
def sign_up(w: World) -> None:
    w.c.auth.signup.sign_up("newcomer@example.com", "a long enough passphrase")


def sign_up_taken(w: World) -> None:
    w.c.auth.signup.sign_up("owner@example.com", "a long enough passphrase")


def password_reset(w: World) -> None:
    w.c.auth.signup.request_password_reset("owner@example.com")


def invitation(w: World) -> None:
    w.c.orgs.invite(
        w.owner_actor(), w.org_id, "invitee@example.com", OrgRole.READER,
        [InviteProject(w.project.id, ProjectRole.MEMBER)],
    )  # fmt: skip


def password_changed(w: World) -> None:
    """Through the dashboard: a password reset by email sends the owner a notice."""
    app, _ = gateway_assembly.build_app(w.c)
    server = ServerThread(app).start()
    browser = Browser(kphttp.Client(base_url=server.url, follow_redirects=False))
    try:
        browser.get("/password/forgot")
        browser.post("/password/forgot", {"email": "owner@example.com"})
        link = link_in(w.inbox, "owner@example.com", "/password/reset")
        browser.get(link)
        browser.post("/password/reset", {"token": token_of(link), "password": "a new passphrase"})
        wait_until(
            lambda: any("was changed" in str(m.message["Subject"]) for m in w.inbox.received)
        )
    finally:
        browser.close()
        server.stop()


def purchase(w: World) -> None:
    """A receipt, and the move up from the free tier that $5 paid is."""
    w.c.payments.add_method(w.org_id, VISA)
    w.c.payments.purchase(w.org_id, 5 * USD, actor=BUYER)


def reversed_by_stripe(w: World, kind: str) -> None:
    """A purchase refunded in part in Stripe's Dashboard, or disputed (billing/reversals.py), as
    Stripe's webhook reports it: the line names its PaymentIntent as Stripe's would."""
    w.c.payments.add_method(w.org_id, VISA)
    paid = w.c.payments.purchase(w.org_id, 5 * USD, actor=BUYER)
    with w.c.engine.begin() as conn:
        conn.execute(update(payments).where(payments.c.id == paid.id).values(provider_ref="pi_1"))
    ref, status = ("ch_1", "") if kind == "refund" else ("du_1", "needs_response")
    report = ProviderReport(f"evt_{kind}", kind, "pi_1", ref, 2 * USD, status)
    assert w.c.payments.reverse(report) is not None


def recharge_declined(w: World, times: int) -> None:
    w.c.billing.update_settings(
        w.org_id, auto_recharge=True, recharge_threshold=5 * USD, recharge_target=20 * USD
    )
    w.c.payments.add_method(w.org_id, NO_FUNDS)
    for _ in range(times):
        w.c.payments.run_recharges()
        w.clock.advance(RECHARGE_RETRY_S)


def spend_alert(w: World, project: bool) -> None:
    project_id = w.project.id if project else None
    w.c.billing.add_alert(w.org_id, USD, project_id=project_id)
    money, period = OrgMoney(w.org_id), period_of(w.clock.now())
    money.spent[period] = 2 * USD
    money.project_spent[(w.project.id, period)] = 2 * USD
    w.watcher().check([w.org_id], {w.org_id: money})


def low_balance(w: World) -> None:
    w.c.billing.update_settings(w.org_id, low_balance_alert=USD)
    w.watcher().check([w.org_id], {})


def new_network(w: World, key: ApiKey | None = None) -> None:
    key_id = (key or w.key).id
    w.c.anomalies.check({(w.org_id, key_id, "198.51.100.7"): None}, {})
    w.c.anomalies.check({(w.org_id, key_id, "203.0.113.9"): None}, {})


def spend_spike(w: World) -> None:
    hour = int(w.clock.now()) // HOUR
    w.c.anomalies.check({}, {(w.org_id, w.key.id, hour - h): 100_000 for h in range(1, 49)})
    w.c.anomalies.check({}, {(w.org_id, w.key.id, hour): 6 * USD})


def leaked(w: World, key: ApiKey | None = None) -> None:
    reporter = Actor(ActorType.SYSTEM, "secret scanning")
    w.c.leaks.revoke(
        key or w.key, "https://github.com/acme/app/blob/main/.env#L3", reporter,
        "a secret scanning report",
    )  # fmt: skip


def rotation(w: World) -> None:
    w.clock.advance(90 * DAY)
    w.c.rotation.check_all()


def admin_rotation(w: World) -> None:
    w.admin_key()  # as old as the project key: both are reminded of, each in its own email
    rotation(w)


@dataclass(frozen=True)
class Kind:
    send: Callable[[World], None]
    subject: str  # a part of the subject of the email it sends
    names: tuple[str, ...] = ()  # names people typed that its text shows
    # Its links, each with the heading of the page it opens: "{org}", "{key}" and "{project}"
    # stand for the World's (only the kinds whose links are checked page by page say them).
    pages: tuple[tuple[str, str], ...] = ()


REVOKE = ("/api-keys/{key}/revoke?org={org}", "Revoke secret key")
ADMIN = repr(ADMIN_KEY_NAME)  # (the subjects about the admin key name it)
PROJECT_USAGE = ("/usage?project={project}&org={org}", "Usage")
PAYMENT_METHODS = ("/billing/payment-methods?org={org}", "Payment methods")


KINDS = {
    "email verification": Kind(sign_up, "Verify your email address"),
    "sign-up with a taken address": Kind(sign_up_taken, "Someone tried to sign up"),
    "password reset": Kind(password_reset, "Reset your keyplane password"),
    "invitation": Kind(invitation, "You are invited", (ORG_NAME, PROJECT_NAME)),
    "password changed": Kind(password_changed, "Your keyplane password was changed"),
    "receipt": Kind(purchase, "Receipt for", (ORG_NAME,)),
    "tier promotion": Kind(
        purchase, "moved up to Tier 1", (ORG_NAME,), (("/limits?org={org}", "Limits"),)
    ),
    "auto-recharge declined": Kind(
        lambda w: recharge_declined(w, 1),
        "failed: your card has insufficient funds",
        (ORG_NAME,),
        (PAYMENT_METHODS,),
    ),
    "auto-recharge turned off": Kind(
        lambda w: recharge_declined(w, 3),
        "is turned off",
        (ORG_NAME,),
        (PAYMENT_METHODS, ("/billing?org={org}#auto-recharge", "Billing")),
    ),
    "spend alert": Kind(lambda w: spend_alert(w, False), "of spend in", (ORG_NAME,)),
    "project spend alert": Kind(
        lambda w: spend_alert(w, True), "of spend in", (ORG_NAME, PROJECT_NAME)
    ),
    "low balance": Kind(low_balance, "is below $1.00", (ORG_NAME,)),
    "refund": Kind(lambda w: reversed_by_stripe(w, "refund"), "credit taken back", (ORG_NAME,)),
    "dispute": Kind(lambda w: reversed_by_stripe(w, "dispute"), "credit taken back", (ORG_NAME,)),
    "new network": Kind(
        new_network, "Unusual use", (ORG_NAME, repr(KEY_NAME)), (REVOKE, PROJECT_USAGE)
    ),
    "spend spike": Kind(
        spend_spike, "Unusual use", (ORG_NAME, repr(KEY_NAME)), (REVOKE, PROJECT_USAGE)
    ),
    "leaked key": Kind(
        leaked,
        "leaked and was revoked",
        (ORG_NAME, PROJECT_NAME, repr(KEY_NAME)),
        (("/api-keys/new?org={org}", "Create new secret key"), PROJECT_USAGE),
    ),
    "rotation reminder": Kind(
        rotation,
        "Rotate the API key",
        (ORG_NAME, PROJECT_NAME),
        (("/api-keys/{key}/rotate?org={org}", "Rotate secret key"),),
    ),
    # An admin key's emails link to its page on Admin keys (its usage is no project's).
    "admin key new network": Kind(
        lambda w: new_network(w, w.admin_key()),
        f"Unusual use of the API key {ADMIN}",
        (ORG_NAME, ADMIN),
        (("/admin-keys/{admin}/revoke?org={org}", "Revoke admin key"),),
    ),
    "admin key leaked": Kind(
        lambda w: leaked(w, w.admin_key()),
        f"The API key {ADMIN} leaked",
        (ORG_NAME, ADMIN),
        (("/admin-keys/new?org={org}", "Create new admin key"),),
    ),
    "admin key rotation reminder": Kind(
        admin_rotation,
        f"Rotate the API key {ADMIN}",
        (ORG_NAME, ADMIN),
        (("/admin-keys/{admin}/rotate?org={org}", "Rotate admin key"),),
    ),
}


def deliver(w: World) -> None:
    """Sends what the outbox holds through the dispatcher and SMTP (the mail server has each
    message once this returns: it stores a message before it accepts it)."""
    dispatcher = EmailDispatcher(w.c.outbox, w.c.mailer, w.c.clock)
    while asyncio.run(dispatcher.run_once()):
        pass


def text_of(mail: Received, subtype: str) -> str:
    part = mail.message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    content = part.get_content()  # type: ignore[attr-defined]
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


@pytest.mark.parametrize("name", list(KINDS))
def test_each_email_has_an_html_part_with_the_same_links_and_names_escaped(
    world: World, name: str
) -> None:
    kind = KINDS[name]
    kind.send(world)
    deliver(world)
    mails = [m for m in world.inbox.received if kind.subject in str(m.message["Subject"])]
    assert mails, [str(m.message["Subject"]) for m in world.inbox.received]
    for mail in mails:
        msg = mail.message
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        text, page = text_of(mail, "plain"), text_of(mail, "html")

        # The same links: each the text shows is a link of the HTML, and the HTML has no other.
        links = set(re.findall(rf"{re.escape(PUBLIC_URL)}/\S+", text))
        hrefs = {html.unescape(h) for h in re.findall(r'href="([^"]*)"', page)}
        assert hrefs == links
        for link in links:  # a page of one organization opens that one
            if "/billing" in link or "/usage" in link:
                assert f"org={world.org_id}" in link
        if links:  # the main link is a button
            assert "display:inline-block" in page

        # Names as typed in the text, escaped in the HTML: no markup of theirs gets through.
        for typed in kind.names:
            assert typed in text
            assert str(escape(typed)) in page
        lowered = page.lower()
        assert "<script" not in lowered and "<img" not in lowered and "<b>" not in lowered

        # The shared layout: the product, a heading, the footer saying why it came.
        assert page.startswith("<!DOCTYPE html>")
        assert ">keyplane</td>" in page and "<h1 " in page
        assert "You received this email because " in page


def test_a_leak_reports_url_is_shown_never_linked(world: World) -> None:
    leaked(world)
    deliver(world)
    [mail] = world.inbox.received
    page = text_of(mail, "html")
    assert "https://github.com/acme/app/blob/main/.env#L3" in page
    assert 'href="https://github.com' not in page


@pytest.mark.parametrize("name", [name for name, kind in KINDS.items() if kind.pages])
def test_the_links_of_key_and_billing_emails_open_their_page_for_their_organization(
    world: World, name: str
) -> None:
    """What the email says to do can be done from it: the Owner, signed in, follows each link
    (``?org=`` chooses the organization, then the page opens without it) to the page it names."""
    kind = KINDS[name]
    kind.send(world)
    deliver(world)
    mails = [m for m in world.inbox.received if kind.subject in str(m.message["Subject"])]
    assert len(mails) == 1, [str(m.message["Subject"]) for m in world.inbox.received]
    text = text_of(mails[0], "plain")
    admin = world.admin
    ids = {"org": world.org_id, "key": world.key.id, "project": world.project.id,
           "admin": "" if admin is None else admin.id}  # fmt: skip
    expected = {PUBLIC_URL + path.format(**ids): heading for path, heading in kind.pages}
    assert set(re.findall(rf"{re.escape(PUBLIC_URL)}/\S+", text)) == set(expected)

    app, _ = gateway_assembly.build_app(world.c)
    server = ServerThread(app).start()
    browser = Browser(kphttp.Client(base_url=server.url, follow_redirects=False))
    try:
        browser.log_in_named("owner@example.com", PASSWORD, "Olive")
        for link, heading in expected.items():
            url = urlsplit(link)
            chosen = browser.get(f"{url.path}?{url.query}")  # (a fragment stays in the browser)
            rest = "&".join(p for p in url.query.split("&") if not p.startswith("org="))
            assert chosen.status_code == 303
            assert chosen.headers["location"] == url.path + (f"?{rest}" if rest else "")
            page = browser.get(chosen.headers["location"])
            assert page.status_code == 200, (link, page.text[:500])
            assert re.search(rf"<h1>{re.escape(heading)}\b", page.text), (link, heading)
            if url.fragment:
                assert f'id="{url.fragment}"' in page.text
            for key in (world.key, admin):
                if key is not None and key.id in url.path:  # that key's page
                    assert key.redacted_value in page.text
            if "project" in url.query:  # the usage of that project, not of the organization
                assert f'<option value="{world.project.id}" selected' in page.text
    finally:
        browser.close()
        server.stop()
