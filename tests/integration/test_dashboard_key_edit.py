"""The API keys page's Edit action against a real keyplane and its gateway: the form shows the key
as it is, each field saved (rate limits included) is what the gateway enforces within a second, bad
input is a form error that keeps what was typed, only who may update keys through the Admin API
may edit, and the change is audited as the Admin API's update is."""
# ruff: noqa: F811  (kp and browser_for, the tests' arguments, are test_dashboard_keys' fixtures)

from __future__ import annotations

import re

import httpx
from test_accounts_web import OWNER_PASSWORD, PASSWORD, text_of
from test_dashboard_key_rotation import id_of
from test_dashboard_keys import SignIn, browser_for, join, kp  # noqa: F401 (fixtures)
from test_key_access import EMBED, call

from conftest import Keyplane
from keyplane.accounts.models import OrgRole
from keyplane.accounts.org_ports import ProjectRole
from keyplane.audit.models import Actor, ActorType, AuditFilter
from keyplane.keys.permissions import ALL_READ
from keyplane.limits.ratelimit import ModelLimits
from kptest import wait_until

OFFICE = ("192.0.2.7", 1)
ELSEWHERE = ("198.51.100.1", 1)


def edit_links(page: httpx.Response) -> list[str]:
    return re.findall(r'href="/api-keys/(key_\w+)/edit"', page.text)


def selected(page: httpx.Response, group: str) -> str:
    select = re.search(rf'<select id="perm-{group}".*?</select>', page.text, re.S)
    assert select is not None
    choice = re.search(r'<option value="(\w+)" selected>', select.group(0))
    assert choice is not None
    return choice.group(1)


def checked_permission(page: httpx.Response) -> str:
    found = re.findall(r'name="permissions" value="(\w+)" checked', page.text)
    assert len(found) == 1, found
    return str(found[0])


def textarea(page: httpx.Response, name: str) -> str:
    found = re.search(rf'name="{name}"[^>]*>([^<]*)</textarea>', page.text)
    assert found is not None
    return found.group(1)


def field_value(page: httpx.Response, name: str) -> str:
    found = re.search(rf'<input id="key-\w+" name="{name}"[^>]* value="([^"]*)"', page.text)
    assert found is not None, name
    return found.group(1)


def test_the_edit_form_shows_the_key_as_it_is(kp: Keyplane, browser_for: SignIn) -> None:
    key_id, _ = kp.new_key(
        "office bot", scopes=["chat.write", "models.read"],
        allowed_cidrs=["192.0.2.0/24", "2001:db8::/32"], allowed_models=["gpt-4o-mini"],
    )  # fmt: skip
    read_only, _ = kp.new_key("reader", scopes=[ALL_READ])
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    listing = owner.get("/api-keys")
    assert set(edit_links(listing)) == {key_id, read_only, id_of(kp.key)}
    page = owner.get(f"/api-keys/{key_id}/edit")
    assert page.status_code == 200
    shown = text_of(page)
    assert f"{kp.project.name} · owned by owner@example.com" in shown
    assert (
        'name="name" type="text" maxlength="200" placeholder="My Test Key" value="office bot"'
        in (page.text)
    )
    assert checked_permission(page) == "restricted"
    assert selected(page, "chat") == "write" and selected(page, "models") == "read"
    assert selected(page, "embeddings") == "none"
    assert textarea(page, "allowed_ips") == "192.0.2.0/24\n2001:db8::/32"
    assert textarea(page, "allowed_models") == "gpt-4o-mini"
    for name in ("max_requests_per_1_minute", "max_tokens_per_1_minute", "max_requests_per_1_day"):
        assert field_value(page, name) == ""  # no limit of its own
    assert 'name="project"' not in page.text and 'name="owner"' not in page.text  # not changeable
    page = owner.get(f"/api-keys/{read_only}/edit")
    assert checked_permission(page) == "read_only" and selected(page, "chat") == "none"
    assert textarea(page, "allowed_ips") == "" and textarea(page, "allowed_models") == ""
    assert checked_permission(owner.get(f"/api-keys/{id_of(kp.key)}/edit")) == "all"


def test_each_field_saved_is_what_the_gateway_enforces_within_a_second(
    kp: Keyplane, browser_for: SignIn
) -> None:
    """The gateway caches keys; a change reaches it through the key change feed it reads every
    ``key_poll_interval_s``: refused or allowed again within a second of saving."""
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    key_id = id_of(kp.key)
    assert call(kp, kp.key).status_code == 200  # cached by the gateway from now on

    def save(**fields: str) -> None:
        owner.get(f"/api-keys/{key_id}/edit")
        form = {"name": "test key", "permissions": "all", "allowed_ips": "", "allowed_models": ""}
        r = owner.post(f"/api-keys/{key_id}/edit", {**form, **fields})
        assert r.status_code == 303, text_of(r)
        assert r.headers["location"] == f"/api-keys?updated={key_id}"

    save(permissions="read_only")
    refused = wait_until(lambda: (r := call(kp, kp.key)).status_code == 401 and r, timeout=1.0)
    assert refused.json()["error"]["message"].endswith("Missing scopes: chat.write.")
    assert call(kp, kp.key, "/models", None).status_code == 200

    save(permissions="restricted", perm_embeddings="write")
    wait_until(lambda: call(kp, kp.key, "/embeddings", EMBED).status_code == 200, timeout=1.0)
    assert call(kp, kp.key).status_code == 401
    assert call(kp, kp.key, "/models", None).status_code == 401  # models: None

    save(allowed_ips="192.0.2.0/24")
    wait_until(lambda: call(kp, kp.key, client=OFFICE).status_code == 200, timeout=1.0)
    denied = call(kp, kp.key, client=ELSEWHERE)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ip_not_allowed"

    save(allowed_models="text-embedding-3-small")
    wait_until(lambda: call(kp, kp.key).status_code == 404, timeout=1.0)
    assert call(kp, kp.key).json()["error"]["code"] == "model_not_found"
    assert call(kp, kp.key, "/embeddings", EMBED).status_code == 200

    save(name="renamed key")  # everything else back to All, from anywhere, every model
    wait_until(lambda: call(kp, kp.key, client=ELSEWHERE).status_code == 200, timeout=1.0)
    listing = owner.get(f"/api-keys?updated={key_id}")
    notice = re.search(r'role="status">([^<]*)<', listing.text)
    assert notice is not None and notice.group(1) == (
        f"renamed key ({kp.key[:11]}…{kp.key[-4:]}) is saved: every gateway applies the change "
        "within a second."
    )
    row = next(r for r in re.findall(r"<tr>.*?</tr>", listing.text, re.S) if kp.key[-4:] in r)
    assert "renamed key" in row and ">All<" in row and "key-note" not in row


def test_rate_limits_saved_are_what_the_gateway_enforces_within_a_second(
    kp: Keyplane, browser_for: SignIn
) -> None:
    """The key's own limits lower the tier's for every model; a field cleared lifts its limit."""
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    key_id = id_of(kp.key)
    assert call(kp, kp.key).status_code == 200  # cached by the gateway from now on

    def save(rpm: str, rpd: str) -> None:
        owner.get(f"/api-keys/{key_id}/edit")
        form = {"name": "test key", "permissions": "all", "max_requests_per_1_minute": rpm,
                "max_tokens_per_1_minute": "", "max_requests_per_1_day": rpd}  # fmt: skip
        r = owner.post(f"/api-keys/{key_id}/edit", form)
        assert r.status_code == 303, text_of(r)

    save(rpm="2", rpd="1,000")
    refused = wait_until(lambda: (r := call(kp, kp.key)).status_code == 429 and r, timeout=1.0)
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert (
        f"in API key {key_id} of organization {kp.org.id} on requests per min (RPM): Limit 2, "
        "Used 2, Requested 1." in error["message"]
    )  # two requests went through under the key's limit, the third is refused
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    listing = owner.get("/api-keys")
    row = next(r for r in re.findall(r"<tr>.*?</tr>", listing.text, re.S) if kp.key[-4:] in r)
    assert ">Limits: 2 RPM · 1,000 RPD<" in row
    page = owner.get(f"/api-keys/{key_id}/edit")
    assert field_value(page, "max_requests_per_1_minute") == "2"
    assert field_value(page, "max_requests_per_1_day") == "1000"
    assert field_value(page, "max_tokens_per_1_minute") == ""

    save(rpm="100", rpd="1000")  # raised: the two used count against 100, not a minute's wait
    wait_until(lambda: call(kp, kp.key).status_code == 200, timeout=1.0)
    save(rpm="", rpd="1000")  # a field cleared lifts that limit, the others stay
    assert kp.container.orgs.project_key_limits(key_id) == ModelLimits(rpd=1000)
    assert ">Limits: 1,000 RPD<" in owner.get("/api-keys").text
    save(rpm="", rpd="")  # no limit of its own left: the tier's alone apply again
    wait_until(lambda: call(kp, kp.key).status_code == 200, timeout=1.0)
    assert kp.container.orgs.project_key_limits(key_id) is None
    assert "key-note" not in owner.get("/api-keys").text
    updates = kp.container.audit.query(kp.org.id, AuditFilter(event_types=["api_key.updated"]))
    assert [e.details["after"]["rate_limits"] for e in updates.events] == [
        {"rpm": None, "tpm": None, "rpd": None},
        {"rpm": None, "tpm": None, "rpd": 1000},
        {"rpm": 100, "tpm": None, "rpd": 1000},
        {"rpm": 2, "tpm": None, "rpd": 1000},
    ]  # newest first


def test_bad_input_is_a_form_error_that_keeps_what_was_typed(
    kp: Keyplane, browser_for: SignIn
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    key_id = id_of(kp.key)
    base = {"name": "typed name", "permissions": "all"}
    cases = [
        ({"name": "  "}, "1 to 200 characters", "key-name"),
        ({"name": "x" * 201}, "1 to 200 characters", "key-name"),
        ({"name": "a\u202eb"}, "control", "key-name"),
        ({"permissions": "admin"}, "Choose All, Restricted or Read only", None),
        ({"permissions": "restricted"}, "at least one group", None),
        ({"permissions": "restricted", "perm_chat": "root"}, "Choose None, Read or Write", None),
        ({"perm_models": "read"}, "choose Restricted", None),  # never a key wider than meant
        ({"allowed_ips": "10.0.0.0/8\n10.0.0.300/8"}, "'10.0.0.300/8' is not an IP address",
         "key-ips"),
        ({"allowed_models": "m" * 201}, "Allowed models are non-empty names", "key-models"),
        ({"max_requests_per_1_minute": "ten"}, "Requests per minute must be a whole number of 1 "
         "or more", "key-rpm"),
        ({"max_requests_per_1_day": "0"}, "Requests per day must be a whole number", "key-rpd"),
        ({"max_tokens_per_1_minute": "-5"}, "Tokens per minute must be a whole number", "key-tpm"),
        ({"max_requests_per_1_minute": "3000000000"},
         "max_requests_per_1_minute must be at most 2,147,483,647", "key-rpm"),
        ({"max_tokens_per_1_minute": "1" + "0" * 16}, "up to 1,000,000,000,000,000", "key-tpm"),
    ]  # fmt: skip
    for fields, message, field in cases:
        owner.get(f"/api-keys/{key_id}/edit")
        r = owner.post(f"/api-keys/{key_id}/edit", {**base, **fields})
        assert r.status_code == 400 and message in text_of(r), (fields, text_of(r))
        if field is not None:
            tag = "textarea" if field in ("key-ips", "key-models") else "input"
            assert re.search(rf'<{tag} id="{field}"[^>]* aria-invalid="true"', r.text), fields
        if "name" not in fields:
            assert 'value="typed name"' in r.text
        for name in ("allowed_ips", "allowed_models"):
            if name in fields:
                assert textarea(r, name) == fields[name]
        for name in ("max_requests_per_1_minute", "max_tokens_per_1_minute"):
            if name in fields:
                assert field_value(r, name) == fields[name]
        if fields == {"perm_models": "read"}:
            assert checked_permission(r) == "all" and selected(r, "models") == "read"
    key = kp.container.keys.get(kp.org.id, key_id)
    assert key.name == "test key" and key.scopes is None and key.allowed_cidrs is None
    assert kp.container.orgs.project_key_limits(key_id) is None
    updates = kp.container.audit.query(kp.org.id, AuditFilter(event_types=["api_key.updated"]))
    assert updates.events == []
    # Without the form's CSRF token, nothing is changed either.
    owner.get(f"/api-keys/{key_id}/edit")
    forged = owner.post(f"/api-keys/{key_id}/edit", {**base, "org_id": kp.org.id}, csrf=False)
    assert forged.status_code == 403
    assert kp.container.keys.get(kp.org.id, key_id).name == "test key"


def test_an_empty_allowlist_set_through_the_admin_api_stays_closed(
    kp: Keyplane, browser_for: SignIn
) -> None:
    """``allowed_models: []`` (no model) cannot be typed: saving the form leaves it so, rather
    than lift it."""
    key_id, secret = kp.new_key("closed", allowed_models=[])
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get(f"/api-keys/{key_id}/edit")
    assert "This key allows no model now: left empty, it stays so." in text_of(page)
    r = owner.post(f"/api-keys/{key_id}/edit", {"name": "closed", "permissions": "all"})
    assert r.status_code == 303
    assert kp.container.keys.get(kp.org.id, key_id).allowed_models == ()
    assert call(kp, secret).status_code == 404


def test_only_who_may_update_keys_may_edit_them(kp: Keyplane, browser_for: SignIn) -> None:
    """The Admin API's rule for project_api_keys.update: organization Owners and project owners;
    a Reader changes no key, whatever their project role, not even one they own."""
    join(kp, "rita@example.com", OrgRole.READER)
    maxr = join(kp, "max@example.com", OrgRole.READER)
    setup = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    kp.container.orgs.add_project_member(
        setup, kp.org.id, kp.project.id, maxr.id, ProjectRole.OWNER
    )
    theirs, _ = kp.container.orgs.create_project_key(
        setup, kp.org.id, kp.project.id, "theirs", maxr.id
    )
    for email in ("rita@example.com", "max@example.com"):
        reader = browser_for(email, PASSWORD)
        listing = reader.get("/api-keys")
        assert listing.status_code == 200 and edit_links(listing) == [], email
        for key_id in (theirs.id, id_of(kp.key)):
            refused = reader.get(f"/api-keys/{key_id}/edit")
            assert refused.status_code == 403
            assert "Your role does not allow editing this key." in text_of(refused)
            reader.get("/api-keys")
            sent = {"name": "mine now", "permissions": "all", "org_id": kp.org.id}
            assert reader.post(f"/api-keys/{key_id}/edit", sent).status_code == 403
    assert {k.name for k in kp.container.keys.list(kp.org.id)} == {"test key", "theirs"}

    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    assert owner.get("/api-keys/key_doesnotexist/edit").status_code == 404
    owner.get("/api-keys")
    sent = {"name": "x", "permissions": "all", "org_id": kp.org.id}
    assert owner.post("/api-keys/key_doesnotexist/edit", sent).status_code == 404
    # A key replaced by a rotation: its replacement is the one to edit.
    old_id = id_of(kp.key)
    owner.get(f"/api-keys/{old_id}/rotate")
    assert owner.post(f"/api-keys/{old_id}/rotate", {"grace": "1d"}).status_code == 200
    listing = owner.get("/api-keys")
    assert old_id not in edit_links(listing) and len(edit_links(listing)) == 2
    stale = owner.get(f"/api-keys/{old_id}/edit")
    assert stale.status_code == 400 and "rotated already: edit its replacement" in text_of(stale)


def test_saving_is_audited_as_the_admin_api_update(kp: Keyplane, browser_for: SignIn) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    key_id = id_of(kp.key)
    owner.get(f"/api-keys/{key_id}/edit")
    r = owner.post(
        f"/api-keys/{key_id}/edit",
        {"name": " ci key ", "permissions": "restricted", "perm_chat": "write",
         "perm_models": "read", "allowed_ips": "192.0.2.0/24, 10.0.0.0/8",
         "allowed_models": "gpt-4o-mini"},
    )  # fmt: skip
    assert r.status_code == 303
    [event] = kp.container.audit.query(
        kp.org.id, AuditFilter(event_types=["api_key.updated"])
    ).events
    assert event.actor.type is ActorType.SESSION and event.actor.email == "owner@example.com"
    assert event.target_id == key_id and event.project_id == kp.project.id
    assert event.details == {
        "before": {"name": "test key", "scopes": [], "allowed_models": None, "allowed_ips": None},
        "after": {"name": "ci key", "scopes": ["chat.write", "models.read"],
                  "allowed_models": ["gpt-4o-mini"],
                  "allowed_ips": ["192.0.2.0/24", "10.0.0.0/8"]},
    }  # fmt: skip
    log = text_of(owner.get("/audit-log"))
    assert "api_key.updated" in log and "name: test key → ci key" in log
    owner.get(f"/api-keys/{key_id}/edit")  # saved again as it is: nothing changed, nothing said
    same = {"name": "ci key", "permissions": "restricted", "perm_chat": "write",
            "perm_models": "read", "allowed_ips": "192.0.2.0/24\n10.0.0.0/8",
            "allowed_models": "gpt-4o-mini"}  # fmt: skip
    assert owner.post(f"/api-keys/{key_id}/edit", same).status_code == 303
    updates = kp.container.audit.query(kp.org.id, AuditFilter(event_types=["api_key.updated"]))
    assert len(updates.events) == 1
