"""The dashboard's Admin keys page against a real keyplane and its Admin API: a new admin key's
secret is shown once and calls the Admin API, revoking one stops it there within a second,
rotating one gives a new secret while the old works out its grace period (the injected clock moves
on), Readers see the list and change nothing, and each change is the audit entry the Admin API's
(or, for a rotation, the ``keyplane`` command's) is. The create-and-copy flow in a real browser is
in tests/e2e/test_browser_admin_keys.py."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from test_accounts_web import OWNER_PASSWORD, PASSWORD, Browser, text_of
from test_dashboard_key_rotation import clock, id_of, kp  # noqa: F401  (fixtures)
from test_dashboard_keys import SignIn, browser_for, created_secret, join  # noqa: F401

import kphttp
from conftest import Keyplane
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import Actor, ActorType, AuditEvent, AuditFilter
from keyplane.clock import FrozenClock
from keyplane.keys.format import KeyKind
from kptest import wait_until

HOSTILE = '<img src=x onerror=alert(1)> "ops" & co'


@pytest.fixture
def owner(browser_for: SignIn) -> Browser:  # noqa: F811
    """The Owner, signed in to the dashboard."""
    return browser_for("owner@example.com", OWNER_PASSWORD)


def admin_api(
    site: Keyplane, secret: str, method: str = "GET", path: str = "", **kw: Any
) -> httpx.Response:
    """An Admin API call under /v1/organization/admin_api_keys with ``secret``."""
    return kphttp.request(
        method, f"{site.server.url}/v1/organization/admin_api_keys{path}",
        headers={"authorization": f"Bearer {secret}"}, **kw,
    )  # fmt: skip


def refused(site: Keyplane, secret: str) -> bool:
    return admin_api(site, secret).status_code == 401


def first_admin_key(site: Keyplane) -> str:
    """An admin key the Owner made with the Admin API's service (as ``keyplane init`` does)."""
    owner = Actor(ActorType.SESSION, "sess_setup", user_id=site.owner.id, email=site.owner.email)
    _, secret = site.container.orgs.create_admin_key(
        owner, site.org.id, "setup", site.owner.id, expires_in_s=None
    )
    return secret


def events(site: Keyplane, event_type: str) -> list[AuditEvent]:
    return list(
        site.container.audit.query(site.org.id, AuditFilter(event_types=[event_type])).events
    )


def create_on_page(owner: Browser, name: str) -> httpx.Response:
    form = owner.get("/admin-keys/new")
    assert form.status_code == 200 and "Create new admin key" in text_of(form)
    return owner.post("/admin-keys", {"name": name})


def test_an_owner_creates_an_admin_key_shown_once_that_calls_the_admin_api(
    kp: Keyplane,  # noqa: F811
    owner: Browser,
) -> None:
    listing = owner.get("/admin-keys")
    assert listing.status_code == 200 and "No admin keys yet" in text_of(listing)
    assert '<a href="/admin-keys" aria-current="page">Admin keys</a>' in listing.text  # the nav
    assert 'href="/admin-keys/new"' in listing.text

    shown = create_on_page(owner, HOSTILE)
    assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
    secret = created_secret(shown)
    assert secret.startswith("sk-kp-admin-") and "<img src=x" not in shown.text  # escaped
    said = text_of(shown)
    assert "Save your key" in said and "Copy" in said and f"{HOSTILE} (Admin API)" in said

    # It calls the Admin API (and the gateway refuses it, as every admin key).
    answer = admin_api(kp, secret)
    assert answer.status_code == 200
    [listed] = answer.json()["data"]
    assert listed["id"] == id_of(secret) and listed["name"] == HOSTILE
    assert listed["owner"]["email"] == "owner@example.com"
    gateway = kphttp.get(kp.base_url + "/models", headers={"authorization": f"Bearer {secret}"})
    assert gateway.status_code == 401

    page = owner.get("/admin-keys")
    text = text_of(page)
    assert HOSTILE in text and "<img src=x" not in page.text and secret not in page.text
    assert listed["redacted_value"] in text and "owner@example.com" in text  # created by

    # The same audit entry as the Admin API's create, by the signed-in user's session.
    made = admin_api(kp, secret, "POST", json={"name": "made with the Admin API"})
    assert made.status_code == 200
    by_page, by_api = {}, {}
    for event in events(kp, "api_key.created"):
        (by_api if event.actor.type is ActorType.API_KEY else by_page)[event.target_id] = event
    ours = by_page[id_of(secret)]
    assert ours.actor.type is ActorType.SESSION and ours.actor.user_id == kp.owner.id
    assert ours.project_id is None and secret not in str(ours.details)
    theirs = by_api[made.json()["id"]]
    assert ours.details["data"] == {
        **theirs.details["data"], "name": HOSTILE, "redacted_value": listed["redacted_value"]
    }  # fmt: skip


def test_sending_the_create_form_again_makes_no_second_admin_key(
    kp: Keyplane,  # noqa: F811
    owner: Browser,
) -> None:
    form = owner.get("/admin-keys/new")
    fields = {"name": "once", "csrf_token": owner.csrf_token(), "org_id": kp.org.id,
              "form_id": re.findall(r'name="form_id" value="([^"]+)"', form.text)[0]}  # fmt: skip
    assert created_secret(owner.client.post("/admin-keys", data=fields))
    again = owner.client.post("/admin-keys", data=fields)
    assert again.status_code == 409 and "created already" in text_of(again)
    assert 'href="/admin-keys">Admin keys</a>' in again.text
    assert [k.name for k in kp.container.orgs.admin_keys(kp.org.id)] == ["once"]

    # A bad name is the form's error, and the form may be sent again once corrected.
    owner.get("/admin-keys/new")
    for name, message in (("", "1 to 200 characters"), ("a\u202eb", "control")):
        bad = owner.post("/admin-keys", {"name": name})
        assert bad.status_code == 400 and message in text_of(bad), text_of(bad)
        assert re.search(r'<input id="key-name"[^>]* aria-invalid="true"', bad.text)
    assert created_secret(owner.post("/admin-keys", {"name": "corrected"}))
    assert len(kp.container.orgs.admin_keys(kp.org.id)) == 2


def test_revoking_an_admin_key_asks_first_and_stops_it_within_a_second(
    kp: Keyplane,  # noqa: F811
    owner: Browser,
) -> None:
    secret = created_secret(create_on_page(owner, "ci"))
    other = first_admin_key(kp)
    assert admin_api(kp, secret).status_code == 200
    key = id_of(secret)

    page = owner.get(f"/admin-keys/{key}/revoke")
    assert page.status_code == 200 and "Revoke admin key" in text_of(page)
    assert kp.container.keys.get(kp.org.id, key).redacted_value in text_of(page)
    forged = owner.post(f"/admin-keys/{key}/revoke", {}, csrf=False)
    assert forged.status_code == 403 and "nothing was changed" in text_of(forged)
    assert admin_api(kp, secret).status_code == 200

    owner.get(f"/admin-keys/{key}/revoke")
    done = owner.post(f"/admin-keys/{key}/revoke", {})
    assert done.status_code == 303 and done.headers["location"] == f"/admin-keys?revoked={key}"
    started = time.monotonic()
    wait_until(lambda: refused(kp, secret), timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert admin_api(kp, secret).json()["error"]["code"] == "invalid_api_key"
    notice = text_of(owner.get(done.headers["location"]))
    assert f"{kp.container.keys.get(kp.org.id, key).redacted_value} is revoked" in notice
    assert owner.get(f"/admin-keys/{key}/revoke").status_code == 404  # gone from the list

    # The same audit entry as the Admin API's delete.
    assert admin_api(kp, other, "DELETE", f"/{id_of(other)}").status_code == 200
    ours, theirs = sorted(events(kp, "api_key.deleted"), key=lambda e: e.target_id != key)
    assert ours.actor.type is ActorType.SESSION and ours.actor.user_id == kp.owner.id
    assert theirs.actor.type is ActorType.API_KEY
    assert ours.details["data"].keys() == theirs.details["data"].keys()
    assert ours.details["data"]["kind"] == "admin" and ours.project_id is None


def test_rotating_an_admin_key_shows_the_new_secret_once_and_the_old_works_out_its_grace(
    kp: Keyplane,  # noqa: F811
    owner: Browser,
    clock: FrozenClock,  # noqa: F811
) -> None:
    old_secret = created_secret(create_on_page(owner, "ops"))
    old = id_of(old_secret)
    assert re.findall(r'href="/admin-keys/(key_\w+)/rotate"', owner.get("/admin-keys").text) == [
        old
    ]
    page = owner.get(f"/admin-keys/{old}/rotate")
    assert page.status_code == 200 and "Rotate admin key" in text_of(page)
    bad = owner.post(f"/admin-keys/{old}/rotate", {"grace": "30d"})
    assert bad.status_code == 400 and "Choose how long" in text_of(bad)

    shown = owner.post(f"/admin-keys/{old}/rotate", {"grace": "1h"})
    new_secret = created_secret(shown)
    assert new_secret.startswith("sk-kp-admin-") and new_secret != old_secret
    assert "Save your new key" in text_of(shown) and "keeps working until" in text_of(shown)
    again = owner.client.post(
        f"/admin-keys/{old}/rotate",
        data={"grace": "1h", "csrf_token": owner.csrf_token(),
              "form_id": re.findall(r'name="form_id" value="([^"]+)"', bad.text)[0]},
    )  # fmt: skip
    assert again.status_code == 409 and "rotated already" in text_of(again)
    assert admin_api(kp, new_secret).status_code == 200
    assert admin_api(kp, old_secret).status_code == 200  # in its grace period

    listing = owner.get("/admin-keys")
    assert "Rotated · stops" in text_of(listing) and new_secret not in listing.text
    new = id_of(new_secret)
    assert re.findall(r'href="/admin-keys/(key_\w+)/rotate"', listing.text) == [new]
    assert owner.get(f"/admin-keys/{old}/rotate").status_code == 400  # rotated already

    # As ``keyplane keys rotate`` records it, by the signed-in user.
    [event] = events(kp, "api_key.rotated")
    assert event.actor.type is ActorType.SESSION and event.actor.user_id == kp.owner.id
    assert event.target_id == new and event.project_id is None
    data = event.details["data"]
    assert data["rotated_from"] == old and data["grace_period_seconds"] == 3600
    assert data["kind"] == "admin" and new_secret not in str(event.details)

    clock.advance(3600)
    wait_until(lambda: refused(kp, old_secret), timeout=2.0)
    assert admin_api(kp, new_secret).status_code == 200


def test_a_reader_sees_the_admin_keys_and_creates_rotates_or_revokes_none(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
    owner: Browser,
) -> None:
    """As the Admin API: ``admin_api_keys.list`` is every member's, the changes Owners' only."""
    secret = first_admin_key(kp)
    key = id_of(secret)
    join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get("/admin-keys")
    assert page.status_code == 200 and "setup" in text_of(page) and secret[-4:] in text_of(page)
    assert "owner@example.com" in text_of(page)  # created by
    for offered in ("/admin-keys/new", "/revoke", "/rotate"):
        assert offered not in page.text
    refused_form = reader.get("/admin-keys/new")
    assert refused_form.status_code == 403
    assert "Your role does not allow creating admin keys" in text_of(refused_form)
    reader.get("/admin-keys")
    made = reader.post("/admin-keys", {"name": "mine", "org_id": kp.org.id})
    assert made.status_code == 403
    for action, fields in (("revoke", {}), ("rotate", {"grace": "none"})):
        assert reader.get(f"/admin-keys/{key}/{action}").status_code == 403
        reader.get("/admin-keys")
        assert reader.post(f"/admin-keys/{key}/{action}", fields).status_code == 403
    assert [k.id for k in kp.container.orgs.admin_keys(kp.org.id)] == [key]
    assert admin_api(kp, secret).status_code == 200

    assert owner.get("/admin-keys/key_doesnotexist/revoke").status_code == 404
    assert owner.get("/admin-keys/key_doesnotexist/rotate").status_code == 404
    # A project key is not an admin key: not found here.
    project_key = id_of(kp.key)
    assert owner.get(f"/admin-keys/{project_key}/revoke").status_code == 404
    assert all(k.kind is KeyKind.ADMIN for k in kp.container.orgs.admin_keys(kp.org.id))
