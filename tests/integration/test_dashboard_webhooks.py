"""The dashboard's Webhooks page against a real keyplane: the organization's endpoints and their
latest deliveries, an Owner adding one (its signing secret shown once, bad input shown again with
what was wrong) and deleting one, audited as the Admin API audits it; Readers only look; another
organization's endpoints are not found; forms need their CSRF token. The flow in a real browser
is in tests/e2e/test_browser.py."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from test_accounts_web import OWNER_PASSWORD, PASSWORD, Browser, text_of
from test_admin_billing import add_organization
from test_dashboard_keys import SignIn, browser_for, join  # noqa: F401  (fixtures)
from test_webhooks import admin_key

import kphttp
from conftest import Keyplane, fresh_postgres, initialized, start_keyplane
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import ActorType, AuditFilter
from keyplane.storage.webhook_tables import webhook_deliveries
from kptest import ServerThread

HOOK = "https://hooks.example/keyplane"
ON_BOTH = pytest.mark.parametrize(
    "kp", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def kp(
    request: pytest.FixtureRequest, tmp_path: Path, simulator: ServerThread
) -> Iterator[Keyplane]:
    """keyplane on SQLite (on PostgreSQL too where a test says ``ON_BOTH``), its webhook
    deliveries left to the tests: the dispatcher would not run within one."""
    database = getattr(request, "param", "sqlite")
    with contextlib.ExitStack() as stack:
        url = "" if database == "sqlite" else stack.enter_context(fresh_postgres())
        instance = start_keyplane(
            tmp_path, simulator.url + "/v1", database_url=url, webhook_dispatch_interval_s=3600
        )
        try:
            yield instance
        finally:
            instance.server.stop()
            instance.container.close()


def add(b: Browser, url: str, events: list[str], description: str = "") -> httpx.Response:
    """The add form, shown then sent (its one-time id and organization with it)."""
    b.get("/webhooks/new")
    return b.post("/webhooks", {"url": url, "events": events, "description": description})


def shown_secret(response: httpx.Response) -> str:
    match = re.search(r'id="secret" type="text" readonly value="([^"]+)"', response.text)
    assert match is not None, text_of(response)
    return match.group(1)


def details_of(kp: Keyplane, event_type: str) -> list[object]:
    found = kp.container.audit.query(kp.org.id, AuditFilter(event_types=[event_type]), limit=100)
    return [e.details for e in found.events]


def test_an_owner_adds_an_endpoint_sees_its_secret_once_and_deletes_it(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    empty = owner.get("/webhooks")
    assert empty.status_code == 200 and "No webhook endpoints yet" in text_of(empty)
    assert re.search(r'href="/webhooks" aria-current="page">Webhooks', empty.text)
    form = owner.get("/webhooks/new")
    for event, said in (("api_key.leaked", "a key found in public was revoked"),
                        ("organization.tier_promoted", "reached a higher usage tier")):  # fmt: skip
        assert f'value="{event}"' in form.text and said in text_of(form)

    created = add(owner, HOOK, ["spend_alert.triggered", "api_key.leaked"], "<b>on-call</b>")
    assert created.status_code == 200 and created.headers["cache-control"] == "no-store"
    secret = shown_secret(created)
    assert re.fullmatch(r"whsec_[\w-]{43}", secret)
    said = text_of(created)
    assert "you won't be able to view it again" in said and "Keyplane-Signature: t=" in said
    assert "HMAC-SHA-256" in said and "<b>on-call</b>" not in created.text

    [endpoint] = kp.container.webhooks.endpoints(kp.org.id)
    assert endpoint.url == HOOK and endpoint.description == "<b>on-call</b>"
    assert endpoint.events == ("api_key.leaked", "spend_alert.triggered")
    # The secret shown is the one deliveries are signed with.
    kp.container.webhooks.publish(kp.org.id, "api_key.leaked", {"api_key_id": "k"}, "leak:k")
    [delivery] = kp.container.webhook_store.claim_due(int(time.time()) + 1, 10, 60)
    assert delivery.endpoint_id == endpoint.id and delivery.secret == secret

    listing = owner.get("/webhooks")
    text = text_of(listing)
    assert secret not in listing.text and "whsec_" not in listing.text
    assert (
        HOOK in text and "<b>on-call</b>" in text and "&lt;b&gt;on-call&lt;/b&gt;" in listing.text
    )
    assert "spend_alert.triggered : spend this month crossed a notification threshold" in text
    assert "organization.tier_promoted" not in text
    when = time.gmtime(endpoint.created_at)
    assert f"Added {time.strftime('%b', when)} {when.tm_mday}, {when.tm_year}" in text

    # Audited as the Admin API audits the same change (its event names and details).
    api = {"authorization": f"Bearer {admin_key(kp)}"}
    twin = kphttp.post(kp.server.url + "/v1/organization/webhooks", headers=api, json={
        "url": HOOK, "events": ["spend_alert.triggered", "api_key.leaked"],
        "description": "<b>on-call</b>"})  # fmt: skip
    assert twin.status_code == 200, twin.text
    ours, theirs = details_of(kp, "webhook.created")[::-1]
    assert ours == theirs == {"data": {"url": HOOK, "description": "<b>on-call</b>",
                                       "events": ["api_key.leaked", "spend_alert.triggered"]}}  # fmt: skip
    [event] = [e for e in kp.container.audit.query(kp.org.id, AuditFilter(
        event_types=["webhook.created"])).events if e.target_id == endpoint.id]  # fmt: skip
    assert event.actor.type is ActorType.SESSION and event.actor.email == "owner@example.com"

    confirm = owner.get(f"/webhooks/{endpoint.id}/delete")
    assert confirm.status_code == 200 and HOOK in text_of(confirm)
    assert 'action="/webhooks/' + endpoint.id + '/delete"' in confirm.text
    assert "Delete endpoint" in confirm.text and "cannot be undone" in text_of(confirm)
    gone = owner.post(f"/webhooks/{endpoint.id}/delete", {})
    assert gone.status_code == 303 and gone.headers["location"] == "/webhooks"
    assert [e.id for e in kp.container.webhooks.endpoints(kp.org.id)] == [twin.json()["id"]]
    with kp.container.engine.connect() as conn:  # its delivery not made yet: dropped
        query = select(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint.id)
        assert conn.execute(query).all() == []
    kphttp.delete(kp.server.url + f"/v1/organization/webhooks/{twin.json()['id']}", headers=api)
    assert details_of(kp, "webhook.deleted") == [{"data": {"url": HOOK}}] * 2
    owner.get("/webhooks")
    again = owner.post(f"/webhooks/{endpoint.id}/delete", {})
    assert again.status_code == 404


def test_sending_the_add_form_again_adds_no_second_endpoint(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    """A reload of the page that showed the secret sends the form again."""
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    form = owner.get("/webhooks/new")
    fields = {"url": HOOK, "events": ["api_key.leaked"], "csrf_token": owner.csrf_token(),
              "org_id": kp.org.id}  # fmt: skip
    found = re.search(r'name="form_id" value="([^"]+)"', form.text)
    assert found is not None
    fields["form_id"] = found.group(1)
    first = owner.client.post("/webhooks", data=fields)
    assert first.status_code == 200 and shown_secret(first)
    again = owner.client.post("/webhooks", data=fields)
    assert again.status_code == 409 and "added already" in text_of(again)
    assert "whsec_" not in again.text
    assert len(kp.container.webhooks.endpoints(kp.org.id)) == 1


def test_the_admin_api_refuses_local_hosts_in_every_spelling(kp: Keyplane) -> None:
    api = {"authorization": f"Bearer {admin_key(kp)}"}
    for url in (
        "http://localhost/h",
        "http://localhost.:18999/h",
        "http://LOCALHOST.:18999/h",
        "http://127.1/",
        "http://0x7f000001/",
        "http://[::ffff:127.0.0.1]/",
        "http://0/",
    ):
        r = kphttp.post(kp.server.url + "/v1/organization/webhooks", headers=api,
                        json={"url": url, "events": ["api_key.leaked"]})  # fmt: skip
        assert r.status_code == 400, (url, r.text)
        error = r.json()["error"]
        assert error["param"] == "url" and "not a public address" in error["message"], url
    assert kp.container.webhooks.endpoints(kp.org.id) == []


@ON_BOTH
def test_bad_input_is_a_clear_error_that_keeps_what_was_typed(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    cases = [
        ("http://127.0.0.1:8080/hooks", ["api_key.leaked"], "", "url", "not a public address"),
        ("https://10.1.2.3/hooks", ["api_key.leaked"], "", "url", "not a public address"),
        ("http://localhost/hooks", ["api_key.leaked"], "", "url", "not a public address"),
        ("http://LOCALHOST.:18999/h", ["api_key.leaked"], "", "url", "not a public address"),
        ("http://0x7f000001/h", ["api_key.leaked"], "", "url", "not a public address"),
        ("ftp://hooks.example/x", ["api_key.leaked"], "", "url", "http:// or https://"),
        ("javascript:alert(1)", ["api_key.leaked"], "", "url", "http:// or https://"),
        ("https://user:pw@hooks.example/x", ["api_key.leaked"], "", "url", "no user name"),
        (
            "https://" + "h" * 2000 + ".example",
            ["api_key.leaked"],
            "",
            "url",
            "at most 2000 characters",
        ),
        ("https://hooks.example/\x00", ["api_key.leaked"], "", "url", "control characters"),
        ("https://hooks.example/a\nb", ["api_key.leaked"], "", "url", "control characters"),
        (HOOK, [], "typed note", "events", "Subscribe to at least one event type"),
        (HOOK, ["api_key.stolen"], "", "events", "Unknown event types"),
        (HOOK, ["api_key.leaked"], "x" * 201, "description", "at most 200 characters"),
        (HOOK, ["api_key.leaked"], "pager\x1b[2J", "description", "control characters"),
        (HOOK, ["api_key.leaked"], "a\u202eb", "description", "control characters"),
        (HOOK, ["api_key.leaked"], "nul\x00", "description", "control characters"),
    ]
    for url, events, description, field, message in cases:
        r = add(owner, url, events, description)
        said = text_of(r)
        assert r.status_code == 400 and message in said, (url, events, description, said)
        error = re.search(
            rf'<p class="field-error" id="webhook-{field}-error" role="alert">', r.text
        )
        assert error is not None, (field, r.text)
        if field == "url":
            assert re.search(r'id="webhook-url"[^>]*aria-invalid="true"', r.text)
        if field == "description":
            assert re.search(r'id="webhook-description"[^>]*aria-invalid="true"', r.text)
        if "\x00" not in url and "\n" not in url:
            assert f'value="{url}"' in r.text.replace("&amp;", "&")  # kept as typed
        for event in events:
            if event == "api_key.leaked":
                assert 'value="api_key.leaked" checked' in r.text  # still chosen
        if description == "typed note":
            assert 'value="typed note"' in r.text
        assert "whsec_" not in r.text
    hostile = add(owner, 'https://hooks.example/"><script>alert(1)</script>', [], "")
    assert hostile.status_code == 400 and "<script>alert(1)" not in hostile.text
    assert "&#34;&gt;&lt;script&gt;" in hostile.text or "&quot;&gt;&lt;script&gt;" in hostile.text
    assert kp.container.webhooks.endpoints(kp.org.id) == []
    assert details_of(kp, "webhook.created") == []


def test_an_organization_has_at_most_16_endpoints(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    for i in range(16):
        kp.container.webhooks.create(kp.org.id, f"{HOOK}/{i}", ["api_key.leaked"])
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    r = add(owner, HOOK, ["api_key.leaked"], "one more")
    assert r.status_code == 400 and "at most 16 webhooks" in text_of(r)
    assert 'id="webhook-form-error" role="alert"' in r.text and 'value="one more"' in r.text


def test_recent_deliveries_say_what_became_of_each_event(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    hooks, store = kp.container.webhooks, kp.container.webhook_store
    endpoint, _ = hooks.create(kp.org.id, HOOK, ["api_key.leaked", "api_key.spend_spike"])
    quiet, _ = hooks.create(kp.org.id, HOOK + "/quiet", ["organization.tier_promoted"])
    now = int(time.time())
    for i in range(7):  # oldest first, a minute apart
        kind = "api_key.spend_spike" if i == 6 else "api_key.leaked"
        store.enqueue(kp.org.id, f"event-{i}", kind, "{}", now - 3600 + 60 * i)
    newest = hooks.recent_deliveries(kp.org.id)[endpoint.id]
    assert [d.created_at for d in newest] == [now - 3600 + 60 * i for i in (6, 5, 4, 3, 2)]
    _spike, retried, given_up, delivered, _queued = newest
    store.failed(retried.id, now - 60, "HTTP 503", now + 300)
    store.failed(retried.id, now - 30, "HTTP 500", now + 600)
    for _ in range(10):
        store.failed(given_up.id, now - 20, "no answer: ConnectError: refused", None)
    store.delivered(delivered.id, now - 10, 204)

    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/webhooks")
    section = page.text.partition(f'id="{endpoint.id}-url"')[2].partition("</section>")[0]
    body = section.partition("<tbody>")[2].partition("</tbody>")[0]
    rows = [
        " ".join(re.sub(r"<[^>]+>", " ", r).split())
        for r in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]
    assert len(rows) == 5  # the newest five of seven
    assert rows[0].startswith("api_key.spend_spike Queued")
    assert rows[1].startswith(
        "api_key.leaked Retrying after 2 failed attempts (HTTP 500); next try"
    )
    assert rows[2].startswith(
        "api_key.leaked Failed after 10 attempts (no answer: ConnectError: refused)"
    )
    assert rows[3].startswith("api_key.leaked Delivered") and "(delivered " in rows[3]
    assert rows[4].startswith("api_key.leaked Queued")
    quiet_part = page.text.partition(f'id="{quiet.id}-url"')[2].partition("</section>")[0]
    assert "No deliveries yet." in quiet_part


def test_a_reader_sees_the_endpoints_but_no_forms(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    endpoint, _ = kp.container.webhooks.create(
        kp.org.id, HOOK, ["api_key.leaked"], "paging the on-call"
    )
    join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    home = reader.get("/")
    assert 'href="/webhooks"' in home.text  # in the main navigation
    page = reader.get("/webhooks")
    text = text_of(page)
    assert page.status_code == 200 and HOOK in text and "paging the on-call" in text
    assert "Add endpoint" not in page.text and "/delete" not in page.text
    assert 'method="post"' not in page.text.partition("<main")[2]
    assert reader.get("/webhooks/new").status_code == 403
    assert reader.get(f"/webhooks/{endpoint.id}/delete").status_code == 403
    reader.get("/")  # (a page with a form, for the CSRF token)
    refused = reader.post("/webhooks", {"url": HOOK + "/2", "events": "api_key.leaked",
                                        "org_id": kp.org.id})  # fmt: skip
    assert refused.status_code == 403 and "Only the organization's Owners" in text_of(refused)
    reader.get("/")
    assert reader.post(f"/webhooks/{endpoint.id}/delete", {}).status_code == 403
    assert [e.id for e in kp.container.webhooks.endpoints(kp.org.id)] == [endpoint.id]


def test_another_organizations_endpoint_is_not_found(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    other_org, _, _ = add_organization(kp.container, "globex")
    theirs, _ = kp.container.webhooks.create(other_org, "https://globex.example/hooks",
                                             ["api_key.leaked"])  # fmt: skip
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/webhooks")
    assert "globex.example" not in page.text and theirs.id not in page.text
    assert owner.get(f"/webhooks/{theirs.id}/delete").status_code == 404
    owner.get("/webhooks")
    assert owner.post(f"/webhooks/{theirs.id}/delete", {}).status_code == 404
    assert [e.id for e in kp.container.webhooks.endpoints(other_org)] == [theirs.id]


def test_a_form_needs_its_csrf_token_and_this_organization(
    kp: Keyplane,
    browser_for: SignIn,  # noqa: F811
) -> None:
    endpoint, _ = kp.container.webhooks.create(kp.org.id, HOOK, ["api_key.leaked"])
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    owner.get("/webhooks/new")
    fields = {"url": HOOK + "/2", "events": "api_key.leaked", "org_id": kp.org.id}
    for sent in (owner.post("/webhooks", fields, csrf=False),
                 owner.post("/webhooks", {**fields, "csrf_token": "forged"}, csrf=False),
                 owner.post(f"/webhooks/{endpoint.id}/delete", {}, csrf=False)):  # fmt: skip
        assert sent.status_code == 403 and "nothing was changed" in text_of(sent)
    owner.get("/webhooks/new")
    other_site = owner.client.post(
        "/webhooks", data={**fields, "csrf_token": owner.csrf_token()},
        headers={"origin": "https://evil.example"},
    )  # fmt: skip
    assert other_site.status_code == 403
    # A form shown for another organization (switched in another tab since) changes nothing.
    owner.get("/webhooks/new")
    switched = owner.post("/webhooks", {**fields, "org_id": "org_switched_to_since"})
    assert switched.status_code == 409 and "another organization" in text_of(switched)
    assert [e.id for e in kp.container.webhooks.endpoints(kp.org.id)] == [endpoint.id]


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_the_store_gives_each_endpoints_newest_deliveries(tmp_path: Path, database: str) -> None:
    with contextlib.ExitStack() as stack:
        url = "" if database == "sqlite" else stack.enter_context(fresh_postgres())
        c, _, org, _, _ = initialized(tmp_path, "http://sim/v1", database_url=url)
        stack.callback(c.close)
        other_org, _, _ = add_organization(c, "globex")
        first, _ = c.webhooks.create(org.id, HOOK, ["api_key.leaked"])
        second, _ = c.webhooks.create(
            org.id, HOOK + "/2", ["api_key.leaked", "api_key.spend_spike"]
        )
        idle, _ = c.webhooks.create(org.id, HOOK + "/3", ["organization.tier_promoted"])
        theirs, _ = c.webhooks.create(other_org, HOOK, ["api_key.leaked"])
        for i in range(4):
            c.webhook_store.enqueue(org.id, f"leak-{i}", "api_key.leaked", "{}", 1000 + i)
            c.webhook_store.enqueue(other_org, f"leak-{i}", "api_key.leaked", "{}", 1000 + i)
        c.webhook_store.enqueue(org.id, "spike", "api_key.spend_spike", "{}", 2000)
        recent = c.webhooks.recent_deliveries(org.id, 3)
        assert set(recent) == {first.id, second.id}  # none for the idle one, none of Globex's
        assert [d.created_at for d in recent[first.id]] == [1003, 1002, 1001]
        assert [(d.event_type, d.created_at) for d in recent[second.id]] == [
            ("api_key.spend_spike", 2000), ("api_key.leaked", 1003), ("api_key.leaked", 1002)
        ]  # fmt: skip
        assert all(d.status == "queued" and d.attempts == 0 for d in recent[first.id])
        newest = recent[first.id][0]
        c.webhook_store.failed(newest.id, 1100, "HTTP 500", 1200)
        c.webhook_store.delivered(recent[first.id][1].id, 1100, 200)
        c.webhook_store.failed(recent[first.id][2].id, 1100, "HTTP 410", None)
        after = c.webhooks.recent_deliveries(org.id, 3)[first.id]
        assert [(d.status, d.attempts, d.last_error) for d in after] == [
            ("retrying", 1, "HTTP 500"), ("delivered", 1, None), ("failed", 1, "HTTP 410")
        ]  # fmt: skip
        assert after[0].next_attempt_at == 1200 and after[1].delivered_at == 1100
        assert c.webhooks.recent_deliveries(other_org, 10)[theirs.id][0].created_at == 1003
        assert idle.id not in c.webhooks.recent_deliveries(org.id, 10)
