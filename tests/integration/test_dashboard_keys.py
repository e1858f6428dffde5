"""The dashboard's API keys page against a real keyplane: who may create and revoke which keys (the
Admin API's rule, applied to the signed-in user), bad form input, and the audit log. The whole
flow in a real browser is in tests/e2e/test_browser.py."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from test_accounts_web import OWNER_PASSWORD, PASSWORD, Browser, text_of

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.accounts.models import OrgRole, User
from keyplane.accounts.org_ports import ProjectRole
from keyplane.accounts.passwords import hash_password
from keyplane.audit.models import Actor, ActorType, AuditFilter
from keyplane.ids import new_id
from keyplane.keys.format import KEY_PATTERN
from keyplane.storage.auth_repository import SqlAuthStore
from kptest import ServerThread

TOKEN = re.compile(r"token=([\w-]+)")


@pytest.fixture
def kp(tmp_path: Path, simulator: ServerThread) -> Iterator[Keyplane]:
    instance = start_keyplane(tmp_path, simulator.url + "/v1")
    yield instance
    instance.server.stop()
    instance.container.close()


@pytest.fixture
def browser_for(kp: Keyplane) -> Iterator[Callable[[str, str], Browser]]:
    """Signed-in browsers (closed at the end)."""
    opened: list[Browser] = []

    def open_as(email: str, password: str) -> Browser:
        b = Browser(kphttp.Client(base_url=kp.server.url, follow_redirects=False))
        opened.append(b)
        b.log_in_named(email, password)
        return b

    yield open_as
    for b in opened:
        b.close()


SignIn = Callable[[str, str], Browser]


def join(kp: Keyplane, email: str, role: OrgRole) -> User:
    """A verified user who joined the organization through an invitation."""
    now = int(time.time())
    user = User(new_id("user-"), email, "", hash_password(PASSWORD), now, now)
    SqlAuthStore(kp.container.engine).add_user(user)
    owner = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    kp.container.orgs.invite(owner, kp.org.id, email, role)
    # As of a day from now: the server's dispatcher may have claimed the mail first and, with no
    # mail server to take it, put it off for a retry; it is in the outbox all the same.
    mails = kp.container.outbox.claim_due(time.time() + 86400, 1000, 60)
    match = TOKEN.search([m.body_text for m in mails if email in m.to][-1])
    assert match is not None
    kp.container.orgs.accept_invite(owner, match.group(1), user.id)
    return user


def created_secret(response: httpx.Response) -> str:
    match = re.search(r'id="secret" type="text" readonly value="([^"]+)"', response.text)
    assert match is not None, text_of(response)
    return match.group(1)


def test_an_owner_creates_user_and_service_account_keys_with_permissions(
    kp: Keyplane, browser_for: SignIn
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/api-keys/new")
    assert page.status_code == 200 and kp.project.name in page.text
    r = owner.post(
        "/api-keys",
        {"name": "<img src=x onerror=alert(1)>", "project": kp.project.id, "owner": "you",
         "permissions": "restricted", "perm_chat": "write", "perm_models": "read"},
    )  # fmt: skip
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    secret = created_secret(r)
    assert KEY_PATTERN.fullmatch(secret) and "<img src=x" not in r.text  # escaped
    owner.get("/api-keys/new")
    r = owner.post(
        "/api-keys",
        {"name": "ci bot", "project": kp.project.id, "owner": "service_account",
         "permissions": "read_only"},
    )  # fmt: skip
    bot_secret = created_secret(r)
    assert bot_secret.startswith("sk-kp-svcacct-")
    listing = owner.get("/api-keys")
    text = text_of(listing)
    assert "ci bot (service account)" in text and "Read only" in text and "Restricted" in text
    assert secret not in listing.text and bot_secret not in listing.text
    stored = {k.owner_type + ":" + k.name: k for k in kp.container.keys.list(kp.org.id)}
    assert stored["user:<img src=x onerror=alert(1)>"].scopes == ("chat.write", "models.read")
    assert stored["service_account:ci bot"].scopes == ("api.all.read",)  # named, in one step
    events = kp.container.audit.query(kp.org.id, AuditFilter(event_types=["api_key.created"]))
    assert all(e.actor.type is ActorType.SESSION for e in events.events) and len(events.events) == 2


def test_revoking_says_which_key_was_revoked(kp: Keyplane, browser_for: SignIn) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    key_id = next(k.id for k in kp.container.keys.list(kp.org.id))
    redacted = kp.container.keys.get(kp.org.id, key_id).redacted_value
    status = re.compile(r'role="status">([^<]*)<')
    assert not status.search(owner.get(f"/api-keys?revoked={key_id}").text)  # not revoked (yet)
    assert not status.search(owner.get("/api-keys?revoked=key_nope").text)
    owner.get(f"/api-keys/{key_id}/revoke")
    r = owner.post(f"/api-keys/{key_id}/revoke", {})
    assert r.status_code == 303 and r.headers["location"] == f"/api-keys?revoked={key_id}"
    said = status.search(owner.get(r.headers["location"]).text)
    assert said is not None
    assert said.group(1) == f"{redacted} is revoked: every gateway refuses it within a second."


def test_bad_form_input_is_a_clear_error_that_keeps_what_was_typed(
    kp: Keyplane, browser_for: SignIn
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    before = len(kp.container.keys.list(kp.org.id))
    base = {"project": kp.project.id, "owner": "you", "name": "typed name"}
    cases = [
        ({"permissions": "restricted"}, "at least one group"),  # would otherwise mean All
        ({"permissions": "admin"}, "Choose All, Restricted or Read only"),
        (
            {"permissions": "restricted", "perm_chat": "root"},
            "Choose None, Read or Write for Model capabilities",
        ),
        ({"name": "x" * 201, "permissions": "all"}, "1 to 200 characters"),
        ({"name": "a\u202eb", "permissions": "all"}, "control"),
    ]
    for fields, message in cases:
        owner.get("/api-keys/new")
        r = owner.post("/api-keys", {**base, **fields})
        assert r.status_code == 400 and message in text_of(r), (fields, text_of(r))
        assert 'value="typed name"' in r.text or "name" in fields
    owner.get("/api-keys/new")
    r = owner.post("/api-keys", {**base, "project": "proj_of_someone_else", "permissions": "all"})
    assert r.status_code == 400 and "Choose one of the projects" in text_of(r)
    owner.get("/api-keys/new")  # choices per group with All: refused, never a wider key
    r = owner.post("/api-keys", {**base, "permissions": "all", "perm_models": "read"})
    assert r.status_code == 400 and "choose Restricted" in text_of(r)
    assert len(kp.container.keys.list(kp.org.id)) == before


def test_sending_the_create_form_again_makes_no_second_key(
    kp: Keyplane, browser_for: SignIn
) -> None:
    """A reload of the page that showed the secret sends the form again: no second key."""
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    form = owner.get("/api-keys/new")
    form_id = re.search(r'name="form_id" value="([^"]+)"', form.text)
    assert form_id is not None
    fields = {"name": "once", "project": kp.project.id, "owner": "you", "permissions": "all",
              "form_id": form_id.group(1), "csrf_token": owner.csrf_token(),
              "org_id": kp.org.id}  # fmt: skip
    first = owner.client.post("/api-keys", data=fields)
    assert first.status_code == 200 and created_secret(first)
    again = owner.client.post("/api-keys", data=fields)
    assert again.status_code == 409 and "created already" in text_of(again)
    assert [k.name for k in kp.container.keys.list(kp.org.id)].count("once") == 1


def test_a_reader_sees_keys_but_changes_none_whatever_their_project_role(
    kp: Keyplane, browser_for: SignIn
) -> None:
    """BRIEF C1: a Reader cannot change keys, also once added to a project (as a Member, or an
    Owner of it), not even a key they own: no Create or Revoke offered, and 403 if they try."""
    owner_secret = kp.key
    join(kp, "rita@example.com", OrgRole.READER)
    maxr = join(kp, "max@example.com", OrgRole.READER)
    setup = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    # The QA steps: the Owner adds the Reader to the project from its page, role Member.
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = text_of(owner.get(f"/projects/{kp.project.id}"))
    assert "max@example.com (Reader)" in page
    assert "Organization readers can view this project but not change it or its keys" in page
    r = owner.post(f"/projects/{kp.project.id}/members", {"user_id": maxr.id, "role": "member"})
    assert r.status_code == 303
    theirs, _ = kp.container.orgs.create_project_key(
        setup, kp.org.id, kp.project.id, "theirs", maxr.id
    )
    [owner_key] = [k for k in kp.container.keys.list(kp.org.id) if k.id != theirs.id]
    before = len(kp.container.keys.list(kp.org.id))

    for email, role in (("rita@example.com", None), ("max@example.com", ProjectRole.MEMBER),
                        ("max@example.com", ProjectRole.OWNER)):  # fmt: skip
        if role is ProjectRole.OWNER:
            kp.container.orgs.change_project_role(
                setup, kp.org.id, kp.project.id, maxr.id, ProjectRole.OWNER
            )
        reader = browser_for(email, PASSWORD)
        page = reader.get("/api-keys")
        assert page.status_code == 200 and owner_secret[-4:] in text_of(page)
        assert "Create new secret key" not in page.text and "Revoke" not in page.text, role
        refused = reader.get("/api-keys/new")
        assert refused.status_code == 403
        assert "Your role does not allow creating API keys" in text_of(refused)
        reader.get("/api-keys")
        fields = {"project": kp.project.id, "owner": "you", "permissions": "all"}
        made = reader.post("/api-keys", {**fields, "org_id": kp.org.id})
        assert made.status_code == 403 and "Your role does not allow" in text_of(made)
        for key in (owner_key, theirs):
            assert reader.get(f"/api-keys/{key.id}/revoke").status_code == 403
            reader.get("/api-keys")
            assert reader.post(f"/api-keys/{key.id}/revoke", {}).status_code == 403
        project = reader.get(f"/projects/{kp.project.id}")
        assert 'action="/projects/' not in project.text  # nothing they may change there
    assert len(kp.container.keys.list(kp.org.id)) == before
    assert all(k.revoked_at is None for k in kp.container.keys.list(kp.org.id))
    assert reader.get("/api-keys/key_doesnotexist/revoke").status_code == 404
