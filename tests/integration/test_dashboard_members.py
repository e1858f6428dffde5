"""The dashboard's Members page against a real keyplane and a real SMTP server: the members and the
invitations waiting, an Owner inviting people (the email arrives and its link joins them), changing
a role, removing a member (their keys revoked, audited as the Admin API's removal) and withdrawing
an invitation; the last Owner stays; a Reader sees the page and changes nothing but can leave;
bad input is shown again with what was wrong; forms need their CSRF token and organization."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_accounts_web import OWNER_PASSWORD, PASSWORD, Browser, link_in, text_of, token_of
from test_dashboard_keys import SignIn, browser_for  # noqa: F401  (fixture)
from test_webhooks import admin_key

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.accounts.models import OrgRole, User
from keyplane.accounts.org_ports import ProjectRole
from keyplane.accounts.passwords import hash_password
from keyplane.audit.models import Actor, ActorType, AuditFilter
from keyplane.clock import Clock, FrozenClock
from keyplane.ids import new_id
from keyplane.storage.auth_repository import SqlAuthStore
from kptest import ServerThread, just_before_month_end
from smtp_support import Inbox, SmtpServer, start_smtp

LAST_OWNER = "An organization needs at least one Owner: make someone else an Owner first."


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def mail_server(inbox: Inbox) -> Iterator[SmtpServer]:
    server = start_smtp(inbox)
    yield server
    server.stop()


@pytest.fixture
def clock() -> FrozenClock:
    """Half a second before a month ends: a test moves it past midnight between what was done on
    one day and what is done on the next, and the dates shown must follow."""
    return FrozenClock(just_before_month_end())


@pytest.fixture
def kp(
    tmp_path: Path, simulator: ServerThread, mail_server: SmtpServer, clock: FrozenClock
) -> Iterator[Keyplane]:
    instance = start_keyplane(
        tmp_path, simulator.url + "/v1", clock=clock, smtp_port=mail_server.port,
        email_dispatch_interval_s=0.05,
    )  # fmt: skip
    yield instance
    instance.server.stop()
    instance.container.close()


def account(kp: Keyplane, email: str) -> User:
    """A verified account with ``PASSWORD``, in no organization yet."""
    now = int(time.time())
    user = User(new_id("user-"), email, "", hash_password(PASSWORD), now, now)
    SqlAuthStore(kp.container.engine).add_user(user)
    return user


def join(kp: Keyplane, inbox: Inbox, email: str, role: OrgRole) -> User:
    """A verified account that joined the organization from its emailed invitation."""
    user = account(kp, email)
    owner = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    kp.container.orgs.invite(owner, kp.org.id, email, role)
    link = link_in(inbox, email, "/invites/accept")
    kp.container.orgs.accept_invite(owner, token_of(link), user.id)
    return user


def events(kp: Keyplane, event_type: str) -> list[tuple[ActorType, str | None, object]]:
    """(actor type, actor email, details) of each ``event_type`` entry, oldest first."""
    found = kp.container.audit.query(kp.org.id, AuditFilter(event_types=[event_type]), limit=100)
    return [(e.actor.type, e.actor.email, e.details) for e in reversed(found.events)]


def roles(kp: Keyplane) -> dict[str, OrgRole]:
    return {m.user.email: m.role for m in kp.container.orgs.members(kp.org.id)}


def pending(kp: Keyplane) -> list[str]:
    return [i.email for i in kp.container.orgs.invites(kp.org.id) if i.accepted_at is None]


def today(clock: Clock, ahead_s: int = 0) -> str:
    """The day keyplane's clock is on (or will be ``ahead_s`` on), as the dashboard shows a date
    ("Dec 6, 2026"). Never the wall clock's: that one may have passed midnight meanwhile."""
    when = time.gmtime(clock.now() + ahead_s)
    return f"{time.strftime('%b', when)} {when.tm_mday}, {when.tm_year}"


def browser_for_new(email: str, kp: Keyplane) -> Browser:
    """A browser logged in to an account in no organization yet (no profile to complete)."""
    b = Browser(kphttp.Client(base_url=kp.server.url, follow_redirects=False))
    assert b.log_in(email, PASSWORD).status_code == 303
    return b


def tables(response: httpx.Response) -> list[list[list[str]]]:
    """Each table's rows as the cells read (a role's select as its chosen option)."""

    def chosen(select: re.Match[str]) -> str:
        found = re.search(r"selected>([^<]+)<", select.group(0))
        assert found is not None
        return found.group(1)

    found = []
    for body in re.findall(r"<tbody>(.*?)</tbody>", response.text, re.S):
        rows = []
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
            row = re.sub(r"<select.*?</select>", chosen, row, flags=re.S)
            row = re.sub(r'<label [^>]*class="visually-hidden">.*?</label>|<button[^>]*>Save</button>',
                         "", row, flags=re.S)  # fmt: skip
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            rows.append(
                [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", c)).split()) for c in cells]
            )
        found.append(rows)
    return found


def row(rows: list[list[str]], email: str) -> list[str]:
    """The members table's row of ``email`` (rows of the same second come in no set order)."""
    return next(r for r in rows if r[1] == email)


def role_changes(kp: Keyplane) -> list[tuple[ActorType, str | None, object]]:
    """The ``user.updated`` entries that changed a role (naming oneself is one too)."""
    return [e for e in events(kp, "user.updated") if "role" in str(e[2])]


def user_key(kp: Keyplane, user: User) -> str:
    """A project key owned by ``user``; its id."""
    actor = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    key, _ = kp.container.orgs.create_project_key(
        actor, kp.org.id, kp.project.id, f"{user.email}'s key", user.id
    )
    return key.id


def test_an_owner_invites_people_whose_email_link_makes_them_members(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
    clock: FrozenClock,
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/members")
    assert page.status_code == 200
    assert re.search(r'href="/members" aria-current="page">Members', page.text)
    [members] = tables(page)
    founded = today(clock)
    assert members == [["Olive You", "owner@example.com", "Owner", founded, "Leave organization"]]
    assert "No pending invitations" in text_of(page) and 'href="/members/invite"' in page.text
    clock.advance(1)  # midnight: the invitations are the next day's (and month's)

    form = owner.get("/members/invite")
    assert form.status_code == 200 and 'name="emails"' in form.text
    sent = owner.post(
        "/members/invite", {"emails": " Grace@Example.com,\nheidi@example.com ", "role": "reader"}
    )
    assert sent.status_code == 303 and sent.headers["location"].startswith("/members?invited=")
    listing = owner.get(sent.headers["location"])
    assert "Invitation sent to grace@example.com, heidi@example.com" in text_of(listing)
    expires = today(clock, 7 * 86400)
    assert sorted(tables(listing)[1]) == [
        ["grace@example.com", "Reader", "—", "Olive", expires, "Revoke"],
        ["heidi@example.com", "Reader", "—", "Olive", expires, "Revoke"],
    ]
    assert events(kp, "invite.sent") == [
        (ActorType.SESSION, "owner@example.com", {"data": {"email": e, "role": "reader"}})
        for e in ("grace@example.com", "heidi@example.com")
    ]

    # The email arrives, and its link joins the account it was sent to.
    link = link_in(inbox, "grace@example.com", "/invites/accept")
    mail = next(m for m in inbox.received if m.rcpt_tos == ["grace@example.com"])
    assert str(mail.message["Subject"]) == "You are invited to join Acme on keyplane"
    account(kp, "grace@example.com")
    grace = browser_for_new("grace@example.com", kp)
    assert f"join the organization {kp.org.name} on keyplane as Reader" in text_of(grace.get(link))
    joined = grace.post("/invites/accept", {"token": token_of(link)})
    assert joined.status_code == 303
    grace.get("/profile")
    grace.post("/profile", {"name": "Grace Hopper"})
    assert roles(kp)["grace@example.com"] is OrgRole.READER
    members, invites = tables(owner.get("/members"))
    assert row(members, "grace@example.com") == [
        "Grace Hopper",
        "grace@example.com",
        "Reader",
        today(clock),
        "Remove",
    ]
    assert row(members, "owner@example.com")[3] == founded != today(clock)
    assert [row[0] for row in invites] == ["heidi@example.com"]
    grace.close()


def test_an_invitation_from_the_form_joins_the_projects_ticked_on_accepting(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
    clock: FrozenClock,
) -> None:
    """The form offers the active projects with one role for them (the Admin API's ``projects``);
    the list, the email and the invitation's page say which; accepting joins them."""
    setup = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    orgs = kp.container.orgs
    bot = orgs.create_project(setup, kp.org.id, "Billing bot")
    old = orgs.create_project(setup, kp.org.id, "Old")
    orgs.archive_project(setup, kp.org.id, old.id)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    form = owner.get("/members/invite").text
    offered = re.findall(r'name="projects" value="([^"]+)"', form)
    assert sorted(offered) == sorted([kp.project.id, bot.id])  # not the archived one

    wrong = owner.post("/members/invite", {"emails": "kim@example.com", "role": "reader",
                                           "projects": [bot.id], "project_role": "admin"})  # fmt: skip
    assert wrong.status_code == 400 and "Choose Member or Owner" in text_of(wrong)
    assert f'value="{bot.id}" checked' in wrong.text  # the form comes back as it was sent
    for ticked, said in (([kp.project.id, "proj_\x00"], "Choose the projects from the list."),
                         ([old.id], "The project 'Old' is archived.")):  # fmt: skip
        owner.get("/members/invite")
        refused = owner.post("/members/invite", {"emails": "kim@example.com", "role": "reader",
                                                 "projects": ticked})  # fmt: skip
        assert refused.status_code in (400, 409) and said in text_of(refused), ticked
    assert pending(kp) == []
    owner.get("/members/invite")
    sent = owner.post("/members/invite", {"emails": "kim@example.com", "role": "reader",
                                          "projects": [bot.id], "project_role": "owner"})  # fmt: skip
    assert sent.status_code == 303
    listing = tables(owner.get(sent.headers["location"]))[1]
    assert listing == [
        [
            "kim@example.com",
            "Reader",
            "Billing bot (Owner)",
            "Olive",
            today(clock, 7 * 86400),
            "Revoke",
        ]
    ]
    [invite] = orgs.invites(kp.org.id)
    assert [(p.project_id, p.role.value) for p in invite.projects] == [(bot.id, "owner")]

    link = link_in(inbox, "kim@example.com", "/invites/accept")
    mail = next(m for m in inbox.received if m.rcpt_tos == ["kim@example.com"])
    body = mail.message.get_body(("plain",))
    assert body is not None
    assert "as Reader, and its project Billing bot (Owner)." in body.get_content()
    kim = account(kp, "kim@example.com")
    invitee = browser_for_new("kim@example.com", kp)
    page = text_of(invitee.get(link))
    assert "as Reader, and its project Billing bot (Owner)." in page
    assert invitee.post("/invites/accept", {"token": token_of(link)}).status_code == 303
    assert orgs.project_role(kp.org.id, bot.id, kim.id) is ProjectRole.OWNER
    assert orgs.project_role(kp.org.id, kp.project.id, kim.id) is None
    assert events(kp, "project_user.added") == [
        (ActorType.SESSION, "kim@example.com", {"data": {"role": "owner"}})
    ]
    invitee.close()


def test_an_invite_form_sent_twice_invites_once_and_says_so(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    """A double click on Send invitation: the second request finds the first's invitation and
    shows it as sent, not "already invited"; one invitation, one audit entry."""
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    form = owner.get("/members/invite").text
    form_id = re.search(r'name="form_id" value="([^"]+)"', form)
    assert form_id
    fields = {"emails": "ivan@example.com", "role": "reader", "form_id": form_id.group(1)}
    first = owner.post("/members/invite", fields)
    owner.page = form  # (the second click sends the same page's form)
    second = owner.post("/members/invite", fields)
    assert first.status_code == second.status_code == 303
    assert second.headers["location"] == first.headers["location"]
    assert "Invitation sent to ivan@example.com" in text_of(owner.get(second.headers["location"]))
    assert pending(kp) == ["ivan@example.com"]
    assert len(events(kp, "invite.sent")) == 1
    # A form refused for what was typed may be corrected and sent again.
    form = owner.get("/members/invite").text
    form_id = re.search(r'name="form_id" value="([^"]+)"', form)
    assert form_id
    typo = owner.post("/members/invite", {"emails": "judy@", "role": "reader",
                                          "form_id": form_id.group(1)})  # fmt: skip
    assert typo.status_code == 400
    owner.page = form
    fixed = owner.post("/members/invite", {"emails": "judy@example.com", "role": "reader",
                                           "form_id": form_id.group(1)})  # fmt: skip
    assert fixed.status_code == 303
    assert sorted(pending(kp)) == ["ivan@example.com", "judy@example.com"]


def test_an_owner_changes_roles_but_the_last_owner_stays(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
) -> None:
    rita = join(kp, inbox, "rita@example.com", OrgRole.READER)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/members")
    assert f'action="/members/{kp.owner.id}/role"' in page.text

    # The only Owner cannot become a Reader, nor leave: the service's reason, on the page.
    refused = owner.post(f"/members/{kp.owner.id}/role", {"role": "reader"})
    assert refused.status_code == 409 and LAST_OWNER in text_of(refused)
    owner.get("/members/leave")
    refused = owner.post("/members/leave", {})
    assert refused.status_code == 409 and LAST_OWNER in text_of(refused)
    assert roles(kp)["owner@example.com"] is OrgRole.OWNER and role_changes(kp) == []

    promoted = owner.post(f"/members/{rita.id}/role", {"role": "owner"})
    assert promoted.headers["location"] == f"/members?changed={rita.id}"
    assert "rita@example.com is now an Owner." in text_of(owner.get(promoted.headers["location"]))
    assert roles(kp)["rita@example.com"] is OrgRole.OWNER
    assert role_changes(kp) == [(ActorType.SESSION, "owner@example.com",
                                           {"before": {"role": "reader"},
                                            "after": {"role": "owner"}})]  # fmt: skip
    # With another Owner, the first may become a Reader: and then sees no forms.
    owner.get("/members")
    demoted = owner.post(f"/members/{kp.owner.id}/role", {"role": "reader"})
    assert demoted.status_code == 303 and roles(kp)["owner@example.com"] is OrgRole.READER
    page = owner.get("/members")
    assert 'name="role"' not in page.text and "Invite member" not in page.text

    rita_b = browser_for("rita@example.com", PASSWORD)
    rita_b.get("/members")
    for bad, status in (("admin", 400), ("", 400)):
        r = rita_b.post(f"/members/{kp.owner.id}/role", {"role": bad})
        assert r.status_code == status and "Choose Owner or Reader." in text_of(r)
    rita_b.get("/members")
    assert rita_b.post("/members/user-nobody/role", {"role": "owner"}).status_code == 404


def test_removing_a_member_revokes_their_keys_as_the_admin_api_does(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
) -> None:
    rita = join(kp, inbox, "rita@example.com", OrgRole.OWNER)
    sam = join(kp, inbox, "sam@example.com", OrgRole.READER)
    rita_key, sam_key = user_key(kp, rita), user_key(kp, sam)
    rita_b = browser_for("rita@example.com", PASSWORD)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)

    listing = owner.get("/members")
    assert f'href="/members/{rita.id}/remove"' in listing.text
    assert f'href="/members/{kp.owner.id}/remove"' not in listing.text  # oneself: Leave instead
    confirm = owner.get(f"/members/{rita.id}/remove")
    said = text_of(confirm)
    assert confirm.status_code == 200 and "rita@example.com leaves this organization" in said
    assert "The key they own here stops working on every gateway" in said
    gone = owner.post(f"/members/{rita.id}/remove", {})
    assert gone.status_code == 303 and gone.headers["location"] == f"/members?removed={rita.id}"
    assert "rita@example.com is removed from Acme. The key they owned here stops working" in (
        text_of(owner.get(gone.headers["location"]))
    )
    # A notice names only what was done here: not a member, not a made-up id.
    for made_up in (f"removed={kp.owner.id}", "removed=user-nobody", "changed=user-nobody"):
        assert "alert" not in owner.get(f"/members?{made_up}").text
    assert "rita@example.com" not in roles(kp) and "rita@example.com" not in text_of(
        owner.get("/members")
    )
    assert kp.container.keys.get(kp.org.id, rita_key).revoked_at is not None
    assert kp.container.keys.get(kp.org.id, sam_key).revoked_at is None
    # Rita's session is in no organization now.
    assert rita_b.get("/members").headers["location"].startswith("/profile")
    # Recorded exactly as the Admin API records removing Sam.
    api = {"authorization": f"Bearer {admin_key(kp)}"}
    r = kphttp.delete(kp.server.url + f"/v1/organization/users/{sam.id}", headers=api)
    assert r.status_code == 200, r.text
    ours, theirs = events(kp, "user.deleted")
    assert ours == (ActorType.SESSION, "owner@example.com",
                    {"data": {"email": "rita@example.com", "role": "owner"},
                     "revoked_keys": [rita_key]})  # fmt: skip
    assert theirs[2] == {"data": {"email": "sam@example.com", "role": "reader"},
                         "revoked_keys": [sam_key]}  # fmt: skip

    owner.get("/members")
    again = owner.post(f"/members/{rita.id}/remove", {})  # a double submit
    assert again.status_code == 404 and "no longer a member" in text_of(again)
    assert owner.get("/members/user-nobody/remove").status_code == 404
    owner.get("/members")
    itself = owner.post(f"/members/{kp.owner.id}/remove", {})
    assert itself.status_code == 400 and "use Leave organization" in text_of(itself)
    assert "owner@example.com" in roles(kp)


def test_an_owner_withdraws_an_invitation_and_its_link_stops_working(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
    clock: FrozenClock,
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    owner.get("/members/invite")
    owner.post("/members/invite", {"emails": "ivan@example.com", "role": "owner"})
    link = link_in(inbox, "ivan@example.com", "/invites/accept")
    [invite] = kp.container.orgs.invites(kp.org.id)
    page = owner.get("/members")
    assert f'action="/members/invites/{invite.id}/revoke"' in page.text
    assert tables(page)[1] == [
        ["ivan@example.com", "Owner", "—", "Olive", today(clock, 7 * 86400), "Revoke"]
    ]
    r = owner.post(f"/members/invites/{invite.id}/revoke", {})
    assert r.status_code == 303 and r.headers["location"] == f"/members?withdrawn={invite.id}"
    assert "The invitation of ivan@example.com is withdrawn" in text_of(
        owner.get(r.headers["location"])
    )
    assert "alert" not in owner.get("/members?withdrawn=invite-nobody").text
    assert pending(kp) == [] and "No pending invitations" in text_of(owner.get("/members"))
    assert events(kp, "invite.deleted") == [(ActorType.SESSION, "owner@example.com",
                                             {"data": {"email": "ivan@example.com",
                                                       "role": "owner"}})]  # fmt: skip
    dead = owner.get(link)
    assert dead.status_code == 400 and "invalid, used or expired" in text_of(dead)
    owner.get("/members")
    again = owner.post(f"/members/invites/{invite.id}/revoke", {})  # a double submit
    assert again.status_code == 404 and "withdrawn already: nothing was changed" in text_of(again)


def test_a_reader_sees_the_members_but_changes_nothing(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
) -> None:
    rita = join(kp, inbox, "rita@example.com", OrgRole.READER)
    owner = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    invite = kp.container.orgs.invite(owner, kp.org.id, "ivan@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get("/members")
    members, invites = tables(page)
    assert page.status_code == 200 and row(members, "owner@example.com")[2] == "Owner"
    assert row(members, "rita@example.com")[:3] == ["Olive You", "rita@example.com", "Reader"]
    assert invites[0][:2] == ["ivan@example.com", "Reader"]
    for offered in ('href="/members/invite"', 'name="role"', "/remove", "/revoke"):
        assert offered not in page.text
    assert 'href="/members/leave"' in page.text
    before = len(kp.container.audit.query(kp.org.id, AuditFilter(), limit=1000).events)

    refusals = {
        "/members/invite": "Only the organization's Owners invite members.",
        f"/members/{kp.owner.id}/remove": "Only the organization's Owners remove members.",
    }
    for path, message in refusals.items():
        r = reader.get(path)
        assert r.status_code == 403 and message in text_of(r)
    reader.get("/members")
    posts = {
        "/members/invite": {"emails": "mallory@example.com", "role": "owner"},
        f"/members/{rita.id}/role": {"role": "owner"},
        f"/members/{kp.owner.id}/role": {"role": "reader"},
        f"/members/{kp.owner.id}/remove": {},
        f"/members/invites/{invite.id}/revoke": {},
    }
    for path, fields in posts.items():
        r = reader.post(path, fields)
        assert r.status_code == 403 and "Only the organization's Owners" in text_of(r), path
        reader.get("/members")
    assert roles(kp) == {"owner@example.com": OrgRole.OWNER, "rita@example.com": OrgRole.READER}
    assert pending(kp) == ["ivan@example.com"]
    assert len(kp.container.audit.query(kp.org.id, AuditFilter(), limit=1000).events) == before
    assert not any("mallory" in m.rcpt_tos[0] for m in inbox.received)


def test_a_reader_leaves_and_their_keys_stop_working(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
) -> None:
    rita = join(kp, inbox, "rita@example.com", OrgRole.READER)
    key_id = user_key(kp, rita)
    reader = browser_for("rita@example.com", PASSWORD)
    confirm = reader.get("/members/leave")
    said = text_of(confirm)
    assert confirm.status_code == 200 and "Leave Acme?" in said
    assert "The key you own here stops working" in said
    r = reader.post("/members/leave", {})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "rita@example.com" not in roles(kp)
    assert kp.container.keys.get(kp.org.id, key_id).revoked_at is not None
    assert reader.get("/").headers["location"].startswith("/profile")  # in no organization now
    assert events(kp, "user.deleted") == [(ActorType.SESSION, "rita@example.com",
                                           {"data": {"email": "rita@example.com",
                                                     "role": "reader"},
                                            "revoked_keys": [key_id]})]  # fmt: skip


def test_bad_invitations_are_refused_with_what_was_wrong(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    cases = [
        ({"emails": "not-an-email", "role": "reader"}, "not-an-email: Enter a valid email address"),
        ({"emails": "ok@example.com, bad@host", "role": "reader"}, "bad@host: Enter a valid"),
        ({"emails": "<b>x</b>@example.com", "role": "reader"}, "<b>x</b>@example.com: Enter"),
        ({"emails": "", "role": "reader"}, "Enter the email address of the person to invite."),
        ({"emails": "ok@example.com", "role": "admin"}, "Choose Owner or Reader."),
        ({"emails": ",".join(f"p{n}@example.com" for n in range(21)), "role": "reader"},
         "Invite at most 20 people at a time."),
    ]  # fmt: skip
    for fields, message in cases:
        owner.get("/members/invite")
        r = owner.post("/members/invite", fields)
        said = text_of(r)
        assert r.status_code == 400 and message in said and "Nothing was sent." in said, said
        assert "<b>" not in r.text  # escaped, in the message and in the field
        assert html.escape(fields["emails"], quote=False) in r.text  # kept as typed
    assert pending(kp) == []

    # A member, or an address invited already, is refused; the others are invited.
    owner.get("/members/invite")
    owner.post("/members/invite", {"emails": "ivan@example.com", "role": "reader"})
    owner.get("/members/invite")
    r = owner.post(
        "/members/invite",
        {"emails": "owner@example.com ivan@example.com\njudy@example.com", "role": "owner"},
    )
    said = text_of(r)
    assert r.status_code == 409 and "Invitation sent to judy@example.com: the link" in said
    assert "Not sent: 'owner@example.com' is already a member" in said
    assert "'owner@example.com' is already a member of this organization." in said
    assert "'ivan@example.com' already has a pending invitation." in said
    assert ">owner@example.com\nivan@example.com</textarea>" in r.text  # the refused, to edit
    assert sorted(pending(kp)) == ["ivan@example.com", "judy@example.com"]
    link_in(inbox, "ivan@example.com", "/invites/accept")  # sent once, by the first form
    link_in(inbox, "judy@example.com", "/invites/accept")
    assert len([m for m in inbox.received if m.rcpt_tos == ["ivan@example.com"]]) == 1


def test_names_are_shown_as_text(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
) -> None:
    join(kp, inbox, "eve@example.com", OrgRole.READER)
    eve = Browser(kphttp.Client(base_url=kp.server.url, follow_redirects=False))
    try:
        eve.log_in_named("eve@example.com", PASSWORD, name='<img src=x onerror="alert(1)">')
    finally:
        eve.close()
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/members")
    assert "<img src=x" not in page.text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page.text
    assert row(tables(page)[0], "eve@example.com")[:3] == [
        '<img src=x onerror="alert(1)">',
        "eve@example.com",
        "Reader",
    ]


def test_forms_need_their_csrf_token_and_organization(
    kp: Keyplane,
    inbox: Inbox,
    browser_for: SignIn,  # noqa: F811
) -> None:
    rita = join(kp, inbox, "rita@example.com", OrgRole.READER)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    owner.get("/members/invite")
    forged = {"emails": "mallory@example.com", "role": "owner", "org_id": kp.org.id}
    r = owner.post("/members/invite", forged, csrf=False)
    assert r.status_code == 403 and "nothing was changed" in text_of(r)
    owner.get("/members")
    r = owner.post(f"/members/{rita.id}/role", {"role": "owner", "csrf_token": "forged"})
    assert r.status_code == 403 and roles(kp)["rita@example.com"] is OrgRole.READER
    # A form shown for another organization (switched in another tab) changes nothing here.
    owner.get("/members")
    r = owner.post(f"/members/{rita.id}/remove", {"org_id": "org-elsewhere"})
    assert r.status_code == 409 and "shown for another organization" in text_of(r)
    owner.get("/members/invite")
    r = owner.post("/members/invite", {**forged, "org_id": "org-elsewhere"})
    assert r.status_code == 409
    assert "rita@example.com" in roles(kp) and pending(kp) == []
