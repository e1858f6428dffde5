"""The API keys page's Rotate action and the allowlists of "Create new secret key", against a real
keyplane and its gateway: a rotated key's new secret is shown once and works, the old one works
for the grace period chosen and is refused after it (the injected clock moves on), and the
allowed IPs and models typed in the form are what the gateway enforces."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_accounts_web import OWNER_PASSWORD, PASSWORD, text_of
from test_dashboard_keys import SignIn, browser_for, created_secret, join  # noqa: F401
from test_key_access import CHAT, EMBED, call

from conftest import Keyplane, start_keyplane
from keyplane.accounts.models import OrgRole
from keyplane.accounts.org_ports import ProjectRole
from keyplane.audit.models import Actor, ActorType, AuditFilter
from keyplane.clock import FrozenClock
from keyplane.keys.format import key_id, parse
from kptest import ServerThread, wait_until


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(time.time())


@pytest.fixture
def kp(tmp_path: Path, simulator: ServerThread, clock: FrozenClock) -> Iterator[Keyplane]:
    instance = start_keyplane(tmp_path, simulator.url + "/v1", clock=clock)
    yield instance
    instance.server.stop()
    instance.container.close()


def id_of(secret: str) -> str:
    parsed = parse(secret)
    assert parsed is not None
    return key_id(parsed.public_id)


def rotate_links(page: httpx.Response) -> list[str]:
    return re.findall(r'href="/api-keys/(key_\w+)/rotate"', page.text)


def refused(kp: Keyplane, secret: str) -> bool:
    return call(kp, secret).status_code == 401


def test_rotating_shows_the_new_secret_once_and_the_old_one_works_until_the_grace_ends(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
    clock: FrozenClock,
) -> None:
    old_secret, old_id = kp.key, id_of(kp.key)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    assert rotate_links(owner.get("/api-keys")) == [old_id]
    page = owner.get(f"/api-keys/{old_id}/rotate")
    assert page.status_code == 200
    text = text_of(page)
    assert "Rotate secret key" in text and kp.key[-4:] in text
    assert all(c in text for c in ("None: it stops now", "1 hour", "1 day", "7 days"))

    shown = owner.post(f"/api-keys/{old_id}/rotate", {"grace": "1h"})
    assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
    new_secret = created_secret(shown)
    assert new_secret != old_secret and new_secret.startswith("sk-kp-proj-")
    until = time.gmtime(int(clock.now()) + 3600)
    said = text_of(shown)
    assert "Save your new key" in said and "Copy" in said
    assert f"keeps working until {time.strftime('%b', until)} {until.tm_mday}, " in said
    assert f"{time.strftime('%H:%M:%S', until)} UTC" in said

    assert call(kp, new_secret).status_code == 200
    assert call(kp, old_secret).status_code == 200  # in its grace period

    # A reload of the page showing the secret sends the form again: no second secret.
    form_id = re.search(r'name="form_id" value="([^"]+)"', page.text)
    assert form_id is not None
    again = owner.client.post(
        f"/api-keys/{old_id}/rotate",
        data={"grace": "1h", "form_id": form_id.group(1), "csrf_token": owner.csrf_token()},
    )
    assert again.status_code == 409 and "rotated already" in text_of(again)
    assert new_secret not in again.text
    keys = kp.container.keys.list(kp.org.id, kp.project.id)
    [new] = [k for k in keys if k.rotated_from == old_id]
    assert new.id == id_of(new_secret) and new.name == "test key"

    # The same audit entry as the Admin API's rotation, by the signed-in user.
    [event] = kp.container.audit.query(
        kp.org.id, AuditFilter(event_types=["api_key.rotated"])
    ).events
    assert event.actor.type is ActorType.SESSION and event.actor.user_id == kp.owner.id
    assert event.target_id == new.id and event.project_id == kp.project.id
    assert event.details["data"]["rotated_from"] == old_id
    assert event.details["data"]["grace_period_seconds"] == 3600
    assert new_secret not in str(event.details)

    listing = owner.get("/api-keys")
    assert "Rotated · stops" in text_of(listing) and new_secret not in listing.text
    assert rotate_links(listing) == [new.id]  # not the old one again: its replacement
    refused_again = owner.get(f"/api-keys/{old_id}/rotate")
    assert refused_again.status_code == 400 and "rotated already" in text_of(refused_again)

    clock.advance(3600)
    wait_until(lambda: refused(kp, old_secret), timeout=2.0)
    assert "expired" in call(kp, old_secret).json()["error"]["message"]
    assert call(kp, new_secret).status_code == 200


def test_rotating_without_a_grace_period_stops_the_old_secret_at_once(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    old_secret, old_id = kp.key, id_of(kp.key)
    _, restricted = kp.new_key("office", allowed_cidrs=["192.0.2.0/24"])
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    owner.get(f"/api-keys/{old_id}/rotate")
    forged = owner.post(f"/api-keys/{old_id}/rotate", {"grace": "none"}, csrf=False)
    assert forged.status_code == 403 and "nothing was changed" in text_of(forged)
    owner.get(f"/api-keys/{old_id}/rotate")
    bad = owner.post(f"/api-keys/{old_id}/rotate", {"grace": "30d"})
    assert bad.status_code == 400 and "Choose how long the old secret keeps working" in text_of(bad)
    assert len(kp.container.keys.list(kp.org.id)) == 2  # nothing made
    shown = owner.post(f"/api-keys/{old_id}/rotate", {"grace": "none"})  # the form shown again
    new_secret = created_secret(shown)
    assert "The old secret stopped working now" in text_of(shown)
    wait_until(lambda: refused(kp, old_secret), timeout=2.0)
    assert call(kp, new_secret).status_code == 200

    # The replacement keeps the old key's allowlist.
    owner.get(f"/api-keys/{id_of(restricted)}/rotate")
    rotated = created_secret(owner.post(f"/api-keys/{id_of(restricted)}/rotate", {"grace": "7d"}))
    assert call(kp, rotated, client=("192.0.2.7", 1)).status_code == 200
    denied = call(kp, rotated, client=("198.51.100.1", 1))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ip_not_allowed"


def test_who_may_revoke_a_key_may_rotate_it(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    """Owners rotate any key; a Reader none, a member of the key's project included (its project
    role gives a Reader no say over keys)."""
    owner_id = id_of(kp.key)
    join(kp, "rita@example.com", OrgRole.READER)
    member = join(kp, "max@example.com", OrgRole.READER)
    setup = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    kp.container.orgs.add_project_member(
        setup, kp.org.id, kp.project.id, member.id, ProjectRole.OWNER
    )
    for email in ("rita@example.com", "max@example.com"):
        reader = browser_for(email, PASSWORD)
        assert rotate_links(reader.get("/api-keys")) == []
        assert reader.get(f"/api-keys/{owner_id}/rotate").status_code == 403
        reader.get("/api-keys")
        assert reader.post(f"/api-keys/{owner_id}/rotate", {"grace": "none"}).status_code == 403
    assert {k.rotated_from for k in kp.container.keys.list(kp.org.id)} == {None}

    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    assert rotate_links(owner.get("/api-keys")) == [owner_id]
    owner.get(f"/api-keys/{owner_id}/rotate")
    assert created_secret(owner.post(f"/api-keys/{owner_id}/rotate", {"grace": "1d"}))
    assert owner.get("/api-keys/key_doesnotexist/rotate").status_code == 404
    replaced = {k.rotated_from for k in kp.container.keys.list(kp.org.id)} - {None}
    assert replaced == {owner_id}


def test_allowlists_typed_in_the_create_form_are_enforced_by_the_gateway(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    owner.get("/api-keys/new")
    r = owner.post(
        "/api-keys",
        {"name": "office", "project": kp.project.id, "owner": "you", "permissions": "all",
         "allowed_ips": "192.0.2.0/24,\r\n 2001:db8::/32\r\n",
         "allowed_models": "gpt-4o-mini\r\ntext-embedding-3-small"},
    )  # fmt: skip
    secret = created_secret(r)
    assert call(kp, secret, client=("192.0.2.7", 1)).status_code == 200
    assert call(kp, secret, "/embeddings", EMBED, client=("2001:db8::5", 1)).status_code == 200
    denied = call(kp, secret, client=("198.51.100.1", 1))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ip_not_allowed"
    other_model = call(kp, secret, body={**CHAT, "model": "gpt-4o"}, client=("192.0.2.7", 1))
    assert other_model.status_code == 404
    assert other_model.json()["error"]["code"] == "model_not_found"

    owner.get("/api-keys/new")
    service_account = {"name": "ci bot", "project": kp.project.id, "owner": "service_account",
                       "permissions": "all", "allowed_ips": "10.0.0.0/8"}  # fmt: skip
    bot = created_secret(owner.post("/api-keys", service_account))
    assert call(kp, bot, client=("10.1.2.3", 1)).status_code == 200
    assert call(kp, bot).status_code == 403  # from 127.0.0.1

    listing = text_of(owner.get("/api-keys"))
    assert "IP: 2 ranges" in listing and "Models: 2" in listing and "IP: 10.0.0.0/8" in listing
    assert 'title="IP: 192.0.2.0/24, 2001:db8::/32"' in owner.page
    created = kp.container.audit.query(kp.org.id, AuditFilter(event_types=["api_key.created"]))
    data = {e.details["data"]["name"]: e.details["data"] for e in created.events}
    assert data["office"]["allowed_ips"] == ["192.0.2.0/24", "2001:db8::/32"]
    assert data["office"]["allowed_models"] == ["gpt-4o-mini", "text-embedding-3-small"]
    assert data["ci bot"]["allowed_ips"] == ["10.0.0.0/8"]
    assert data["ci bot"]["allowed_models"] is None


def test_bad_allowlists_are_form_errors_that_keep_what_was_typed(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    before = len(kp.container.keys.list(kp.org.id))
    accounts_before = len(kp.container.orgs.service_accounts(kp.org.id, kp.project.id))
    base = {"name": "typed name", "project": kp.project.id, "permissions": "all"}
    cases = [
        ({"allowed_ips": "10.0.0.0/8\n10.0.0.300/8"}, "'10.0.0.300/8' is not an IP address or "
         "CIDR range.", "key-ips"),
        ({"allowed_ips": "office"}, "'office' is not an IP address or CIDR range.", "key-ips"),
        ({"allowed_models": "m" * 201}, "Allowed models are non-empty names", "key-models"),
    ]  # fmt: skip
    for owner_kind in ("you", "service_account"):
        for fields, message, field in cases:
            owner.get("/api-keys/new")
            r = owner.post("/api-keys", {**base, "owner": owner_kind, **fields})
            assert r.status_code == 400 and message in text_of(r), (fields, text_of(r))
            assert re.search(rf'<textarea id="{field}"[^>]* aria-invalid="true"', r.text)
            typed = next(iter(fields.values()))
            assert f">{typed}</textarea>" in r.text and 'value="typed name"' in r.text
    assert len(kp.container.keys.list(kp.org.id)) == before
    assert len(kp.container.orgs.service_accounts(kp.org.id, kp.project.id)) == accounts_before
