"""Members and Billing → Preferences in a real headless browser (Debian's Chromium through
Playwright), driven as a person does, with the keyboard where a person would: inviting someone
(who gets the email and joins from its link), changing a role, removing a member (their keys stop
working), withdrawing an invitation, the last Owner kept; the billing email and address saved, and
bad input refused with a clear form error and nothing saved. Also what a double submit, a form left
open while someone else acted and a Reader see."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from test_browser import browser, log_in  # noqa: F401  (fixture)

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.accounts.models import OrgRole, User
from keyplane.accounts.passwords import hash_password
from keyplane.audit.models import Actor, ActorType
from keyplane.billing.address import BillingAddress
from keyplane.ids import new_id
from keyplane.storage.auth_repository import SqlAuthStore
from kptest import ServerThread, wait_until
from smtp_support import Inbox, SmtpServer

PASSWORD = "another horse battery"
LAST_OWNER = "An organization needs at least one Owner: make someone else an Owner first."


@pytest.fixture
def kp(
    tmp_path: Path, simulator: ServerThread, smtp: tuple[Inbox, SmtpServer]
) -> Iterator[Keyplane]:
    instance = start_keyplane(
        tmp_path, simulator.url + "/v1", smtp_port=smtp[1].port, email_dispatch_interval_s=0.05
    )
    yield instance
    instance.server.stop()
    instance.container.close()


@pytest.fixture
def owner(browser: object, kp: Keyplane) -> Iterator[object]:  # noqa: F811
    """A tab in which Ada, the organization's Owner, is logged in; ``owner.context.new_page()``
    opens another tab of the same browser."""
    tabs = browser.new_context()  # type: ignore[attr-defined]
    page = tabs.new_page()
    log_in(page, kp.server.url)
    yield page
    tabs.close()


@pytest.fixture
def grace(kp: Keyplane, smtp: tuple[Inbox, SmtpServer]) -> User:
    """Grace Hopper, a Reader of the organization."""
    return member(kp, smtp[0], "grace@example.com", "Grace Hopper", OrgRole.READER)


def invitation_link(inbox: Inbox, to: str) -> str:
    """The path and query of the invitation link emailed to ``to`` (waiting for the email)."""

    def find() -> list[str]:
        bodies = [m.message.get_body(("plain",)) for m in inbox.received if to in m.rcpt_tos]
        text = " ".join(b.get_content() for b in bodies if b is not None)
        return re.findall(r"https?://[^/\s]+(/invites/accept\?token=[\w-]+)", text)

    return wait_until(find)[-1]


def person(kp: Keyplane, email: str, name: str) -> User:
    """A verified account with ``PASSWORD`` and a complete profile, in no organization yet."""
    now = int(time.time())
    user = User(new_id("user-"), email, name, hash_password(PASSWORD), now, now)
    SqlAuthStore(kp.container.engine).add_user(user)
    return user


def member(kp: Keyplane, inbox: Inbox, email: str, name: str, role: OrgRole) -> User:
    """An account that joined the organization as ``role`` from its emailed invitation."""
    user = person(kp, email, name)
    kp.container.orgs.invite(ada(kp), kp.org.id, email, role)
    token = invitation_link(inbox, email).partition("token=")[2]
    kp.container.orgs.accept_invite(ada(kp), token, user.id)
    return user


def ada(kp: Keyplane) -> Actor:
    """Ada, the Owner, acting from elsewhere (another browser, the Admin API)."""
    return Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)


def sign_in(page: object, base: str, email: str) -> None:
    """Logs ``email`` (a ``person``) in; the dashboard's home page shows."""
    page.goto(base + "/login")  # type: ignore[attr-defined]
    page.get_by_label("Email").fill(email)  # type: ignore[attr-defined]
    page.get_by_label("Password").fill(PASSWORD)  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    page.wait_for_url(base + "/")  # type: ignore[attr-defined]


def go_to_members(page: object, base: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Members").click()  # type: ignore[attr-defined]
    page.wait_for_url(base + "/members")  # type: ignore[attr-defined]


def members_row(page: object, email: str) -> object:
    table = page.get_by_role("table", name="Members of Acme")  # type: ignore[attr-defined]
    return table.get_by_role("row").filter(has_text=email)


def invitations(page: object) -> list[str]:
    """The rows of the Pending invitations table as read, one string each."""
    table = page.get_by_role("table", name="Pending invitations")  # type: ignore[attr-defined]
    if not table.count():
        return []
    return [" ".join(r.split()) for r in table.locator("tbody tr").all_inner_texts()]


# -- Members --------------------------------------------------------------------------------------
def test_invite_by_keyboard_and_the_invited_person_joins_from_the_email(
    browser: object,  # noqa: F811
    owner: Any,
    kp: Keyplane,
    smtp: tuple[Inbox, SmtpServer],
) -> None:
    inbox, page, base = smtp[0], owner, kp.server.url
    go_to_members(page, base)
    assert "No pending invitations." in page.inner_text("main")
    page.get_by_role("link", name="Invite member").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/members/invite")
    assert page.evaluate("document.activeElement.id") == "invite-emails"  # ready to type in
    page.keyboard.type("Grace@Example.com")
    page.keyboard.press("Tab")  # to the role: Reader, as chosen already
    assert page.evaluate("document.activeElement.value") == "reader"
    page.keyboard.press("ArrowDown")  # Owner
    assert page.get_by_label("Owner: can do everything", exact=False).is_checked()
    page.keyboard.press("ArrowUp")  # back to Reader
    page.keyboard.press("Tab")  # the projects to join too: none ticked
    assert page.get_by_label("Default project").evaluate("e => e === document.activeElement")
    assert not page.get_by_label("Default project").is_checked()
    page.keyboard.press("Tab")  # the role in them
    assert page.evaluate("document.activeElement.value") == "member"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Send invitation"
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/members?invited=*")
    assert page.get_by_role("status").inner_text() == (
        "Invitation sent to grace@example.com: the link in it works for 7 days."
    )
    assert [r.split(" Ada Owner ")[0] for r in invitations(page)] == ["grace@example.com Reader —"]

    # The email arrives; Grace opens its link, logs in, accepts, and is a Reader.
    link = invitation_link(inbox, "grace@example.com")
    mail = next(m for m in inbox.received if m.rcpt_tos == ["grace@example.com"])
    assert str(mail.message["Subject"]) == "You are invited to join Acme on keyplane"
    person(kp, "grace@example.com", "Grace Hopper")
    grace = browser.new_page()  # type: ignore[attr-defined]
    grace.goto(base + link)
    assert "You are invited to join the organization Acme on keyplane as Reader" in (
        grace.inner_text("main")
    )
    grace.get_by_role("link", name="Log in to accept").click()
    grace.get_by_label("Email").fill("grace@example.com")
    grace.get_by_label("Password").fill(PASSWORD)
    grace.keyboard.press("Enter")
    grace.get_by_role("button", name="Accept the invitation").click()
    grace.wait_for_url(lambda url: "/invites/accept" not in url)
    page.reload()
    assert invitations(page) == []
    row = members_row(page, "grace@example.com")
    assert "Grace Hopper" in row.inner_text()  # type: ignore[attr-defined]
    assert row.get_by_label("Role of Grace Hopper", exact=True).input_value() == "reader"  # type: ignore[attr-defined]


def test_bad_or_invited_addresses_are_refused_with_why(owner: Any, kp: Keyplane) -> None:
    page, base = owner, kp.server.url
    page.goto(base + "/members/invite")
    page.get_by_label("Email addresses").fill("heidi@example.com, <script>alert(1)</script>")
    page.get_by_role("button", name="Send invitation").click()
    alert = page.get_by_role("alert")
    assert alert.inner_text().startswith("Nothing was sent.")
    assert "<script>alert(1)</script>:" in alert.inner_text()
    assert page.get_by_label("Email addresses").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "invite-emails"  # to correct them
    assert "heidi@example.com, <script>alert(1)</script>" in page.input_value("#invite-emails")
    assert kp.container.orgs.invites(kp.org.id) == []

    # An address invited already is refused with why, while the others are sent.
    page.get_by_label("Email addresses").fill("heidi@example.com")
    page.get_by_role("button", name="Send invitation").click()
    page.wait_for_url(base + "/members?invited=*")
    page.goto(base + "/members/invite")
    page.get_by_label("Email addresses").fill("heidi@example.com, judy@example.com")
    page.get_by_role("button", name="Send invitation").click()
    assert page.get_by_role("status").inner_text() == (
        "Invitation sent to judy@example.com: the link in it works for 7 days."
    )
    assert [line for line in page.get_by_role("alert").inner_text().splitlines() if line] == [
        "Not sent:", "'heidi@example.com' already has a pending invitation.",
    ]  # fmt: skip
    assert page.input_value("#invite-emails") == "heidi@example.com"  # what is left, to edit
    assert sorted(i.email for i in kp.container.orgs.invites(kp.org.id)) == [
        "heidi@example.com", "judy@example.com",
    ]  # fmt: skip


def test_change_a_role_by_keyboard_and_the_last_owner_stays(
    owner: Any, kp: Keyplane, grace: User
) -> None:
    page, base = owner, kp.server.url
    go_to_members(page, base)
    page.get_by_label("Role of Grace Hopper", exact=True).focus()
    page.keyboard.press("ArrowUp")  # Owner
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == (
        "Save the role of Grace Hopper"
    )
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/members?changed=*")
    assert (
        page.get_by_role("status").inner_text()
        == "Grace Hopper (grace@example.com) is now an Owner."
    )
    assert page.get_by_label("Role of Grace Hopper", exact=True).input_value() == "owner"
    stale = owner.context.new_page()  # Ada may leave now: a tab asks her to confirm
    stale.goto(base + "/members/leave")
    stale.get_by_role("heading", name="Leave Acme?").wait_for()

    # Back to Reader: Ada is the only Owner again, and cannot make herself a Reader.
    page.get_by_label("Role of Grace Hopper", exact=True).select_option("reader")
    page.get_by_role("button", name="Save the role of Grace Hopper").click()
    page.wait_for_url(base + "/members?changed=*")
    assert (
        page.get_by_role("status").inner_text()
        == "Grace Hopper (grace@example.com) is now a Reader."
    )
    page.get_by_label("Role of Ada Owner", exact=True).select_option("reader")
    page.get_by_role("button", name="Save the role of Ada Owner").click()
    assert page.get_by_role("alert").inner_text() == LAST_OWNER
    assert (
        page.get_by_label("Role of Ada Owner", exact=True).input_value() == "owner"
    )  # as it is, not as sent
    # Nor leave the organization: said before asking to confirm, and if asked from a page shown
    # while there was another Owner.
    page.get_by_role("link", name="Leave organization").click()
    assert page.get_by_role("alert").inner_text() == (
        "You are the only Owner of Acme: make someone else an Owner before you leave."
    )
    assert not page.get_by_role("button", name="Leave organization").count()
    stale.get_by_role("button", name="Leave organization").click()
    assert stale.get_by_role("alert").inner_text() == LAST_OWNER
    roles = {m.user.email: m.role for m in kp.container.orgs.members(kp.org.id)}
    assert roles == {"owner@example.com": OrgRole.OWNER, "grace@example.com": OrgRole.READER}


def test_remove_a_member_and_their_keys_stop_working(owner: Any, kp: Keyplane, grace: User) -> None:
    _, secret = kp.container.orgs.create_project_key(
        ada(kp), kp.org.id, kp.project.id, "Grace's key", grace.id
    )
    client = openai.OpenAI(base_url=kp.base_url, api_key=secret, max_retries=0)
    assert [m.id for m in client.models.list()]
    page, base = owner, kp.server.url
    go_to_members(page, base)
    stale, stale_too = owner.context.new_page(), owner.context.new_page()
    for tab in (stale, stale_too):
        tab.goto(page.url)  # other tabs, left open on the same list

    page.get_by_role("link", name="Remove Grace Hopper").click()
    page.get_by_role("heading", name="Remove member").wait_for()
    assert "The key they own here stops working on every gateway within a second." in (
        page.inner_text("main")
    )
    page.get_by_role("button", name="Remove member").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/members?removed=*")
    assert page.get_by_role("status").inner_text() == (
        "grace@example.com is removed from Acme. The key they owned here stops working on every "
        "gateway within a second."
    )
    assert not members_row(page, "grace@example.com").count()  # type: ignore[attr-defined]
    models = {"Authorization": f"Bearer {secret}"}
    wait_until(lambda: kphttp.get(kp.base_url + "/models", headers=models).status_code == 401,
               timeout=1.0)  # fmt: skip  # every gateway refuses it within a second

    # The other tab still shows Grace: changing her role says she is gone, on the list.
    stale.get_by_label("Role of Grace Hopper", exact=True).select_option("owner")
    stale.get_by_role("button", name="Save the role of Grace Hopper").click()
    assert stale.get_by_role("alert").inner_text() == (
        "That person is no longer a member of this organization: nothing was changed."
    )
    assert not members_row(stale, "grace@example.com").count()  # type: ignore[attr-defined]
    # And so does her Remove link on a third tab.
    stale_too.get_by_role("link", name="Remove Grace Hopper").click()
    assert stale_too.get_by_role("alert").inner_text() == (
        "That person is no longer a member of this organization: nothing was changed."
    )
    client.close()


def test_withdraw_an_invitation_and_its_link_stops_working(
    browser: object,  # noqa: F811
    owner: Any,
    kp: Keyplane,
    smtp: tuple[Inbox, SmtpServer],
) -> None:
    page, base = owner, kp.server.url
    page.goto(base + "/members/invite")
    page.get_by_label("Email addresses").fill("heidi@example.com\nivan@example.com")
    page.get_by_role("button", name="Send invitation").click()
    page.wait_for_url(base + "/members?invited=*")
    link = invitation_link(smtp[0], "heidi@example.com")
    stale = owner.context.new_page()
    stale.goto(base + "/members")

    page.get_by_role("button", name="Revoke the invitation of heidi@example.com").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/members?withdrawn=*")
    assert page.get_by_role("status").inner_text() == (
        "The invitation of heidi@example.com is withdrawn: its link no longer works."
    )
    assert [r.split(" ")[0] for r in invitations(page)] == ["ivan@example.com"]
    heidi = browser.new_page()  # type: ignore[attr-defined]
    heidi.goto(base + link)
    assert heidi.get_by_role("heading", name="This invitation does not work").count()

    # Revoking it again from a tab left open says so, on the list, instead of a missing page.
    stale.get_by_role("button", name="Revoke the invitation of heidi@example.com").click()
    assert stale.get_by_role("alert").inner_text() == (
        "That invitation was withdrawn already: nothing was changed."
    )
    assert [r.split(" ")[0] for r in invitations(stale)] == ["ivan@example.com"]


def test_a_reader_sees_members_and_preferences_but_changes_nothing(
    browser: object,  # noqa: F811
    kp: Keyplane,
    grace: User,
) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    base = kp.server.url
    sign_in(page, base, "grace@example.com")
    go_to_members(page, base)
    main = page.get_by_role("main")
    assert "owner@example.com" in members_row(page, "owner@example.com").inner_text()  # type: ignore[attr-defined]
    assert not main.get_by_role("link", name="Invite member").count()
    assert not main.get_by_role("combobox").count() and not main.get_by_role("button").count()
    assert main.get_by_role("link", name="Remove", exact=False).count() == 0
    page.goto(base + "/members/invite")
    assert "Only the organization's Owners invite members." in page.inner_text("main")

    page.goto(base + "/billing/preferences")
    assert "Billing emails go to the Owners (owner@example.com)." in page.inner_text("main")
    assert "No billing address yet." in page.inner_text("main")
    assert not main.get_by_role("textbox").count() and not main.get_by_role("button").count()
    where = BillingAddress(country="FR", line1="1 rue <b>de</b> Rivoli", city="Paris")
    kp.container.billing.update_settings(
        kp.org.id, billing_email="accounts@example.com", billing_address=where
    )  # Ada saves them meanwhile
    page.reload()
    assert "Billing emails go to accounts@example.com." in page.inner_text("main")
    assert page.locator("main address").inner_text().splitlines()[:3] == [
        "1 rue <b>de</b> Rivoli", "Paris", "France",
    ]  # fmt: skip

    # Anyone may leave: Grace does, from the keyboard, after being told what it means.
    go_to_members(page, base)
    page.get_by_role("link", name="Leave organization").focus()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Leave Acme?").wait_for()
    assert "You lose access to Acme and its projects. You own no keys here." in (
        page.inner_text("main")
    )
    page.get_by_role("button", name="Leave organization").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/profile")  # in no organization now: asked to make one
    assert kp.container.orgs.member(kp.org.id, grace.id) is None
    assert page.get_by_label("Organization name").is_visible()
    assert not page.get_by_role("navigation", name="Main").count()


# -- Billing → Preferences ------------------------------------------------------------------------
def open_preferences(page: object, base: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()  # type: ignore[attr-defined]
    page.get_by_role("navigation", name="Billing").get_by_role("link", name="Preferences").click()  # type: ignore[attr-defined]
    page.wait_for_url(base + "/billing/preferences")  # type: ignore[attr-defined]


def test_set_the_billing_email_and_address_by_keyboard_and_see_them_saved(
    owner: Any, kp: Keyplane
) -> None:
    page, base = owner, kp.server.url
    open_preferences(page, base)
    page.get_by_role("textbox", name="Billing email").focus()
    page.keyboard.type("Accounts@Example.com")
    # Tab through the form in reading order: currency (read only), then the address.
    order = []
    for _ in range(9):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.labels[0]?.textContent.trim()"))
    assert order == [
        "Currency", "Name or company (optional)", "Country", "Address line 1",
        "Address line 2 (optional)", "City", "State, county, province, or region (optional)",
        "Postal code (optional)", "Tax ID (optional)",
    ]  # fmt: skip
    page.get_by_label("Name or company").fill("Acme <script>alert(1)</script> Ltd")
    page.get_by_label("Country").select_option(label="Germany")
    page.get_by_label("Address line 1").fill("Unter den Linden 1")
    page.get_by_label("City").fill("Berlin")
    page.get_by_label("Postal code").fill("10117")
    page.get_by_label("Tax ID").focus()
    page.keyboard.type("DE123456789")
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/billing/preferences?saved=1")
    assert page.get_by_role("status").inner_text() == "Billing preferences saved."
    assert page.get_by_role("textbox", name="Billing email").input_value() == "accounts@example.com"
    # A company name with markup in it is a name like any other: kept and shown as typed.
    assert page.get_by_label("Name or company").input_value() == (
        "Acme <script>alert(1)</script> Ltd"
    )
    assert page.get_by_label("Country").input_value() == "DE"
    assert page.get_by_label("City").input_value() == "Berlin"
    settings = kp.container.billing.settings(kp.org.id)
    assert settings.billing_email == "accounts@example.com"
    assert settings.billing_address is not None and settings.billing_address.tax_id == "DE123456789"

    # Emptying every address field removes the address.
    for label in ("Name or company", "Address line 1", "City", "Postal code", "Tax ID"):
        page.get_by_label(label).fill("")
    page.get_by_label("Country").select_option("")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(base + "/billing/preferences?saved=1")
    assert kp.container.billing.settings(kp.org.id).billing_address is None
    assert page.get_by_role("textbox", name="Billing email").input_value() == "accounts@example.com"


def test_bad_preferences_get_a_form_error_and_nothing_is_saved(owner: Any, kp: Keyplane) -> None:
    page, base = owner, kp.server.url
    open_preferences(page, base)
    before = kp.container.billing.settings(kp.org.id)
    # A hostile browser sends what the form would not let a person type.
    page.evaluate(
        "for (const e of document.querySelectorAll('input')) {"
        " e.removeAttribute('maxlength'); if (e.type === 'email') e.type = 'text'; }"
    )
    page.get_by_role("textbox", name="Billing email").fill("<script>alert(1)</script>")
    page.get_by_label("Country").select_option(label="France")
    page.get_by_label("Address line 1").fill("x" * 201)
    page.get_by_label("City").fill("Paris\x07")
    page.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    assert page.get_by_role("alert").inner_text() == (
        "The preferences were not saved: check the fields below."
    )
    email = page.get_by_role("textbox", name="Billing email")
    assert email.get_attribute("aria-invalid") == "true"
    assert email.input_value() == "<script>alert(1)</script>"  # shown again, as text
    assert page.locator("#" + email.get_attribute("aria-describedby").split()[-1]).inner_text() == (
        "Enter a valid email address, like you@example.com."
    )  # read out with the field
    assert page.locator("main [aria-describedby='']").count() == 0  # no field points at nothing
    assert "Address line 1 has at most 200 characters." in page.inner_text("main")
    line1 = page.get_by_label("Address line 1")
    assert line1.get_attribute("aria-invalid") == "true"
    assert page.get_by_label("City").get_attribute("aria-invalid") == "true"
    assert page.get_by_label("Country").input_value() == "FR"  # what was typed is kept
    assert page.get_by_label("Postal code").get_attribute("aria-invalid") is None
    assert kp.container.billing.settings(kp.org.id) == before

    # The first field in error has the focus, to correct from the keyboard; a required field
    # left out is named.
    assert page.evaluate("document.activeElement.id") == "pref-billing_email"
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.get_by_label("Address line 1").fill("1 rue de Rivoli")
    page.get_by_label("City").fill("")
    page.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    assert "Enter the city." in page.inner_text("main")
    assert kp.container.billing.settings(kp.org.id) == before
    assert page.evaluate("document.activeElement.id") == "pref-city"
    page.keyboard.type("Paris")
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/billing/preferences?saved=1")
    saved = kp.container.billing.settings(kp.org.id)
    assert saved.billing_email is None and saved.billing_address is not None
    assert saved.billing_address.lines() == ["1 rue de Rivoli", "Paris", "France"]


def test_a_form_left_open_while_another_owner_saved_saves_nothing_a_double_submit_saves(
    owner: Any, kp: Keyplane
) -> None:
    page, base = owner, kp.server.url
    open_preferences(page, base)
    other = owner.context.new_page()  # another tab, opened before the first one saves
    other.goto(base + "/billing/preferences")
    page.get_by_role("textbox", name="Billing email").fill("accounts@example.com")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(base + "/billing/preferences?saved=1")

    other.get_by_label("Country").select_option(label="Germany")
    other.get_by_label("Address line 1").fill("Unter den Linden 1")
    other.get_by_label("City").fill("Berlin")
    other.get_by_role("button", name="Save").click()
    other.get_by_role("alert").wait_for()
    assert other.get_by_role("alert").inner_text() == (
        "Someone else changed the billing preferences after this page was shown, so nothing was "
        "saved. They are shown below as they are now: make your change again."
    )
    assert other.get_by_role("textbox", name="Billing email").input_value() == (
        "accounts@example.com"
    )  # what the other tab saved, not what this one showed before
    assert other.get_by_label("City").input_value() == ""
    assert kp.container.billing.settings(kp.org.id).billing_address is None

    # Made again on the page as it is now, the change is saved, and the other one kept.
    other.get_by_label("Country").select_option(label="Germany")
    other.get_by_label("Address line 1").fill("Unter den Linden 1")
    other.get_by_label("City").fill("Berlin")
    # The same form sent twice (a double click): the second finds its own change, and says saved.
    form = other.locator("main form")
    form.evaluate(
        "async f => { await fetch(f.action, {method: 'POST', "
        "body: new URLSearchParams(new FormData(f))}); }"
    )
    other.get_by_role("button", name="Save").click()
    other.wait_for_url(base + "/billing/preferences?saved=1")
    assert other.get_by_role("status").inner_text() == "Billing preferences saved."
    settings = kp.container.billing.settings(kp.org.id)
    assert settings.billing_email == "accounts@example.com"
    assert settings.billing_address is not None and settings.billing_address.city == "Berlin"


def test_an_owner_made_a_reader_meanwhile_is_refused_with_why_and_nothing_changes(
    browser: object,  # noqa: F811
    kp: Keyplane,
    grace: User,
) -> None:
    kp.container.orgs.change_role(ada(kp), kp.org.id, grace.id, OrgRole.OWNER)
    tabs = browser.new_context()  # type: ignore[attr-defined]
    page, base = tabs.new_page(), kp.server.url
    sign_in(page, base, "grace@example.com")
    open_preferences(page, base)
    members = tabs.new_page()
    members.goto(base + "/members")
    kp.container.orgs.change_role(ada(kp), kp.org.id, grace.id, OrgRole.READER)

    page.get_by_role("textbox", name="Billing email").fill("grace@example.com")
    page.get_by_role("button", name="Save").click()
    page.get_by_role("heading", name="Request refused").wait_for()
    assert "Only the organization's Owners change its billing preferences." in (
        page.inner_text("main")
    )
    members.get_by_label("Role of owner@example.com", exact=True).select_option("reader")
    members.get_by_role("button", name="Save the role of owner@example.com").click()
    members.get_by_role("heading", name="Request refused").wait_for()
    assert "Only the organization's Owners change members' roles." in members.inner_text("main")
    assert kp.container.billing.settings(kp.org.id).billing_email is None
    roles = {m.user.email: m.role for m in kp.container.orgs.members(kp.org.id)}
    assert roles == {"owner@example.com": OrgRole.OWNER, "grace@example.com": OrgRole.READER}
    tabs.close()
