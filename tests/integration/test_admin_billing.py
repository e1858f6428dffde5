"""Admin API for money (BRIEF C5, C6): credit grants and balance, spend limits, spend alerts and
billing settings — over the real SQLite store, in the same ASGI app as the gateway, in process."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from conftest import make_settings
from keyplane import bootstrap, gateway_assembly
from keyplane.accounts.models import Organization, Project, User
from keyplane.clock import Clock, FrozenClock
from keyplane.config import UpstreamSettings
from keyplane.errors import StoreUnavailable
from keyplane.gateway.app import Gateway
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.simulator import SimulatorConfig, create_app
from keyplane.storage import tables
from keyplane.web.admin import create_admin_app
from keyplane.web.auth import NOT_ADMIN
from kptest import just_before_month_end

pytestmark = pytest.mark.anyio

ORG = "/v1/organization"
DOLLAR = 1_000_000
CENT = 10_000
START_CREDIT = 5 * DOLLAR


@dataclass
class Env:
    container: bootstrap.Container
    gateway: Gateway
    client: httpx.AsyncClient
    owner: User
    org: Organization
    project: Project
    admin_key: str
    project_key: str
    other_admin_key: str  # an admin key of a second organization
    other_project_id: str

    def admin(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.admin_key}"}

    async def chat(self, max_tokens: int = 2000) -> httpx.Response:
        """A request through the gateway with the project key (the simulator writes exactly
        ``max_tokens`` tokens, so at gpt-4o's $10/M output 2,000 tokens cost just over 2 cents)."""
        body = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": max_tokens,
        }
        headers = {"authorization": f"Bearer {self.project_key}"}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)


def add_organization(container: bootstrap.Container, name: str) -> tuple[str, str, str]:
    """Writes a second organization with an Owner and a project (AccountService can only set up
    the first one). Returns (org id, owner id, project id)."""
    now = int(time.time())
    org_id, user_id, project_id = f"org-{name}", f"user-{name}", f"proj_{name}"
    with container.engine.begin() as conn:
        conn.execute(
            insert(tables.users).values(
                id=user_id, email=f"owner@{name}.example", name="", password_hash="-",
                created_at=now, email_verified_at=now,
            )
        )  # fmt: skip
        conn.execute(insert(tables.organizations).values(id=org_id, name=name, created_at=now))
        conn.execute(
            insert(tables.org_members).values(
                org_id=org_id, user_id=user_id, role="owner", created_at=now
            )
        )
        conn.execute(
            insert(tables.projects).values(
                id=project_id, org_id=org_id, name="Default project", created_at=now
            )
        )
    return org_id, user_id, project_id


def new_key(
    container: bootstrap.Container,
    kind: KeyKind,
    org_id: str,
    owner_id: str,
    project_id: str | None,
) -> tuple[ApiKey, str]:
    return container.keys.create(
        kind=kind, org_id=org_id, project_id=project_id, name=f"{kind.value} key",
        owner_type="user", owner_id=owner_id, created_by=owner_id,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def open_env(
    tmp_path: Path,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Env]:
    """The environment these tests run in, on ``clock`` (the system's unless given); the upstream
    is the simulator unless another ``upstream_transport`` answers instead."""
    upstream = UpstreamSettings(name="sim", base_url="http://simulator/v1")
    container = bootstrap.build(make_settings(tmp_path, upstreams=[upstream]), clock=clock)
    owner, org, project = container.accounts.initialize(
        email="owner@example.com", password="correct horse battery", org_name="Acme"
    )
    # The top usage tier: its rate limits stay out of the way of these few requests.
    container.billing.open_account(org.id, tier="tier-5", welcome_credit=0)
    container.billing.grant(org.id, START_CREDIT, note="test credit")
    _, admin_key = new_key(container, KeyKind.ADMIN, org.id, owner.id, None)
    _, project_key = new_key(container, KeyKind.PROJECT, org.id, owner.id, project.id)
    other_org, other_owner, other_project = add_organization(container, "globex")
    _, other_admin_key = new_key(container, KeyKind.ADMIN, other_org, other_owner, None)

    if upstream_transport is None:
        simulator = create_app(SimulatorConfig(completion_tokens=1_000_000))
        upstream_transport = httpx.ASGITransport(app=simulator)
    app, gateway = gateway_assembly.build_app(container, transport=upstream_transport)
    # What the gateway's lifespan startup does, without its polling loops: the test drives time.
    await gateway.pipeline.auth.refresh()
    await gateway.pipeline.money.refresh()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://keyplane")
    try:
        yield Env(
            container, gateway, client, owner, org, project,
            admin_key, project_key, other_admin_key, other_project,
        )  # fmt: skip
    finally:
        await client.aclose()
        await gateway.shutdown()
        container.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as opened:
        yield opened


@pytest.fixture
async def month_env(tmp_path: Path) -> AsyncIterator[Env]:
    """``env`` on a clock that stands still half a second before a month ends: what a monthly
    limit counts is this month's spend, and the month cannot turn between a spend and its check."""
    async with open_env(tmp_path, clock=FrozenClock(just_before_month_end())) as opened:
        yield opened


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Asserts OpenAI's error envelope with this status (and code); returns the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


# Every operation of this slice, with placeholder ids (authentication is checked before anything).
OPERATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/credit_balance", None),
    ("GET", "/credit_grants", None),
    ("POST", "/credit_grants", {"amount_micro_usd": DOLLAR}),
    ("GET", "/credit_grants/cg_x", None),
    ("POST", "/credit_grants/cg_x/revoke", None),
    ("GET", "/spend_limit", None),
    ("POST", "/spend_limit", {"threshold_amount": 100}),
    ("DELETE", "/spend_limit", None),
    ("GET", "/projects/proj_x/spend_limit", None),
    ("POST", "/projects/proj_x/spend_limit", {"threshold_amount": 100}),
    ("DELETE", "/projects/proj_x/spend_limit", None),
    ("GET", "/spend_alerts", None),
    ("POST", "/spend_alerts", {"threshold_amount": 100}),
    ("DELETE", "/spend_alerts/sa_x", None),
    ("GET", "/projects/proj_x/spend_alerts", None),
    ("POST", "/projects/proj_x/spend_alerts", {"threshold_amount": 100}),
    ("DELETE", "/projects/proj_x/spend_alerts/sa_x", None),
    ("GET", "/billing_settings", None),
    ("POST", "/billing_settings", {"mode": "prepaid"}),
]


async def test_only_a_valid_admin_key_gets_in(env: Env) -> None:
    svc_key = new_key(env.container, KeyKind.SERVICE_ACCOUNT, env.org.id, "svc_1", env.project.id)
    revoked, revoked_text = new_key(env.container, KeyKind.ADMIN, env.org.id, env.owner.id, None)
    env.container.keys.revoke(env.org.id, revoked.id)
    bad = "sk-kp-admin-" + "A" * 50  # well-formed but its checksum is wrong
    callers: list[tuple[dict[str, str], str | None]] = [
        ({}, None),
        ({"authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"authorization": "Bearer "}, None),
        (env.admin(bad), None),
        (env.admin(revoked_text), "revoked"),
        (env.admin(env.project_key), NOT_ADMIN),
        (env.admin(svc_key[1]), NOT_ADMIN),
    ]
    for method, path, body in OPERATIONS:
        for headers, message in callers:
            r = await env.client.request(method, ORG + path, json=body, headers=headers)
            error = error_of(r, 401, "invalid_api_key")
            assert error["type"] == "invalid_request_error"
            if message is not None:
                assert message in error["message"], (method, path, error)
            assert "sk-kp-" not in error["message"] or "…" in error["message"]  # never a secret


async def test_a_database_outage_answers_503_not_401(env: Env) -> None:
    class Down:
        async def authenticate(self, token: str, client_ip: str | None) -> ApiKey:
            raise StoreUnavailable("database unreachable")

        def used(self, key: ApiKey, client_ip: str | None, now: float) -> None:
            raise AssertionError("no key authenticated")

    async def nothing() -> None:
        return None

    admin = create_admin_app(env.container, auth=Down(), on_money_change=nothing)
    transport = httpx.ASGITransport(app=admin)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyplane") as client:
        r = await client.get(ORG + "/credit_balance", headers=env.admin())
    assert error_of(r, 503)["type"] == "server_error"


async def test_another_organizations_admin_key_sees_nothing_of_this_one(env: Env) -> None:
    mine = env.admin()
    theirs = env.admin(env.other_admin_key)
    grant = (
        await env.client.post(ORG + "/credit_grants", json={"amount_micro_usd": 7}, headers=mine)
    ).json()
    alert = (
        await env.client.post(ORG + "/spend_alerts", json={"threshold_amount": 5}, headers=mine)
    ).json()
    project = env.project.id

    balance = (await env.client.get(ORG + "/credit_balance", headers=theirs)).json()
    assert balance["lots"] == [] and balance["available_micro_usd"] == 0
    assert (await env.client.get(ORG + "/credit_grants", headers=theirs)).json()["data"] == []
    assert (await env.client.get(ORG + "/spend_alerts", headers=theirs)).json()["data"] == []
    for method, path in [
        ("GET", f"/credit_grants/{grant['id']}"),
        ("POST", f"/credit_grants/{grant['id']}/revoke"),
        ("DELETE", f"/spend_alerts/{alert['id']}"),
        ("GET", f"/projects/{project}/spend_limit"),
        ("DELETE", f"/projects/{project}/spend_limit"),
        ("GET", f"/projects/{project}/spend_alerts"),
        ("DELETE", f"/projects/{project}/spend_alerts/{alert['id']}"),
    ]:
        error_of(await env.client.request(method, ORG + path, headers=theirs), 404, "not_found")
    for path in (f"/projects/{project}/spend_limit", f"/projects/{project}/spend_alerts"):
        r = await env.client.post(ORG + path, json={"threshold_amount": 1}, headers=theirs)
        assert error_of(r, 404, "not_found")["param"] == "project_id"
    # ...and nothing of ours changed.
    assert (
        await env.client.get(ORG + f"/credit_grants/{grant['id']}", headers=mine)
    ).json() == grant
    assert [a.id for a in env.container.billing.alerts(env.org.id)] == [alert["id"]]
    assert env.container.billing.project_budget(project) is None


async def test_a_grant_shows_in_the_balance_and_the_list(env: Env) -> None:
    r = await env.client.post(
        ORG + "/credit_grants",
        json={"amount_micro_usd": 2 * DOLLAR, "note": "chargeback Q3"},
        headers=env.admin(),
    )
    assert r.status_code == 200, r.text
    grant = r.json()
    assert grant["object"] == "organization.credit_grant" and grant["id"].startswith("cg_")
    assert grant["kind"] == "grant" and grant["note"] == "chargeback Q3"
    assert grant["amount_micro_usd"] == grant["remaining_micro_usd"] == 2 * DOLLAR
    assert grant["expires_at"] == grant["created_at"] + 365 * 86400 and grant["revoked"] is False

    balance = (await env.client.get(ORG + "/credit_balance", headers=env.admin())).json()
    assert balance["object"] == "organization.credit_balance"
    assert balance["available_micro_usd"] == START_CREDIT + 2 * DOLLAR
    assert balance["held_micro_usd"] == balance["spent_micro_usd"] == 0
    assert grant in balance["lots"] and len(balance["lots"]) == 2

    forever = await env.client.post(
        ORG + "/credit_grants",
        json={"amount_micro_usd": 1, "expires_in_seconds": None},
        headers=env.admin(),
    )
    assert forever.json()["expires_at"] is None

    listing = (await env.client.get(ORG + "/credit_grants", headers=env.admin())).json()
    assert listing["object"] == "list" and listing["has_more"] is False
    ids = [g["id"] for g in listing["data"]]
    assert len(ids) == 3 and ids[1] == grant["id"]
    assert (listing["first_id"], listing["last_id"]) == (ids[0], ids[-1])
    first = (await env.client.get(ORG + "/credit_grants?limit=2", headers=env.admin())).json()
    assert [g["id"] for g in first["data"]] == ids[:2] and first["has_more"] is True
    rest = await env.client.get(
        ORG + f"/credit_grants?limit=2&after={first['last_id']}", headers=env.admin()
    )
    assert [g["id"] for g in rest.json()["data"]] == ids[2:] and rest.json()["has_more"] is False


async def test_a_replayed_grant_is_granted_once_and_a_reused_key_is_refused(env: Env) -> None:
    headers = {**env.admin(), "Idempotency-Key": "grant-2026-11-26"}
    body = {"amount_micro_usd": 3 * DOLLAR, "note": "promo"}
    first = await env.client.post(ORG + "/credit_grants", json=body, headers=headers)
    again = await env.client.post(ORG + "/credit_grants", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    balance = (await env.client.get(ORG + "/credit_balance", headers=env.admin())).json()
    assert balance["available_micro_usd"] == START_CREDIT + 3 * DOLLAR

    other = {**body, "amount_micro_usd": 4 * DOLLAR}
    r = await env.client.post(ORG + "/credit_grants", json=other, headers=headers)
    assert error_of(r, 409, "idempotency_key_reused")["param"] == "Idempotency-Key"
    balance = (await env.client.get(ORG + "/credit_balance", headers=env.admin())).json()
    assert balance["available_micro_usd"] == START_CREDIT + 3 * DOLLAR

    # Keys are per organization: another organization's same key is its own grant.
    theirs = {**env.admin(env.other_admin_key), "Idempotency-Key": "grant-2026-11-26"}
    r = await env.client.post(ORG + "/credit_grants", json=body, headers=theirs)
    assert r.status_code == 200 and r.json()["id"] != first.json()["id"]

    empty = {**env.admin(), "Idempotency-Key": ""}
    r = await env.client.post(ORG + "/credit_grants", json=body, headers=empty)
    assert error_of(r, 400)["param"] == "Idempotency-Key"
    # The audit log tells of one grant, not of each replay.
    audit = ORG + "/audit_logs?event_types[]=credit_grant.created"
    events = (await env.client.get(audit, headers=env.admin())).json()["data"]
    assert [e["credit_grant.created"]["id"] for e in events].count(first.json()["id"]) == 1


async def test_revoking_a_grant_takes_back_what_remains(env: Env) -> None:
    grant = (
        await env.client.post(
            ORG + "/credit_grants", json={"amount_micro_usd": DOLLAR}, headers=env.admin()
        )
    ).json()
    r = await env.client.post(ORG + f"/credit_grants/{grant['id']}/revoke", headers=env.admin())
    assert r.status_code == 200, r.text
    assert r.json()["revoked"] is True and r.json()["remaining_micro_usd"] == 0
    balance = (await env.client.get(ORG + "/credit_balance", headers=env.admin())).json()
    assert balance["available_micro_usd"] == START_CREDIT

    again = await env.client.post(ORG + f"/credit_grants/{grant['id']}/revoke", headers=env.admin())
    assert "already revoked" in error_of(again, 400)["message"]
    missing = await env.client.post(ORG + "/credit_grants/cg_nope/revoke", headers=env.admin())
    error_of(missing, 404, "not_found")

    purchase = env.container.billing.grant(env.org.id, 5 * DOLLAR, kind="purchase")
    r = await env.client.post(ORG + f"/credit_grants/{purchase.id}/revoke", headers=env.admin())
    assert "non-refundable" in error_of(r, 400)["message"]
    listed = (
        await env.client.get(ORG + f"/credit_grants/{purchase.id}", headers=env.admin())
    ).json()
    assert listed["kind"] == "purchase" and listed["revoked"] is False


async def test_lowering_the_spend_limit_below_this_months_spend_refuses_the_next_request(
    month_env: Env,
) -> None:
    env = month_env
    limit = (await env.client.get(ORG + "/spend_limit", headers=env.admin())).json()
    assert limit == {
        "object": "organization.spend_limit", "currency": "USD", "interval": "month",
        "threshold_amount": None, "enforcement": {"status": "inactive"},
    }  # fmt: skip
    assert (await env.chat()).status_code == 200  # spends just over 2 cents

    body = {"currency": "USD", "interval": "month", "threshold_amount": 1}
    r = await env.client.post(ORG + "/spend_limit", json=body, headers=env.admin())
    assert r.status_code == 200 and r.json()["threshold_amount"] == 1
    assert env.container.billing.settings(env.org.id).budget == 1 * CENT

    refused = await env.chat()  # at once: no poll interval to wait for
    assert (
        error_of(refused, 429, "organization_spend_limit_exceeded")["type"] == "insufficient_quota"
    )
    assert refused.headers["x-keyplane-limit"] == "budget"

    await env.gateway.flush()  # enforcement status reads recorded spend
    limit = (await env.client.get(ORG + "/spend_limit", headers=env.admin())).json()
    assert limit["enforcement"] == {"status": "enforcing"}
    balance = (await env.client.get(ORG + "/credit_balance", headers=env.admin())).json()
    assert 2 * CENT < balance["spent_micro_usd"] < 3 * CENT
    assert balance["available_micro_usd"] == START_CREDIT - balance["spent_micro_usd"]

    r = await env.client.delete(ORG + "/spend_limit", headers=env.admin())
    assert r.status_code == 200
    assert r.json()["threshold_amount"] is None and r.json()["enforcement"]["status"] == "inactive"
    assert (await env.chat()).status_code == 200

    # Raising it above the spend lets requests through again without a spurious 429.
    body["threshold_amount"] = 10_000
    assert (await env.client.post(ORG + "/spend_limit", json=body, headers=env.admin())).json()[
        "enforcement"
    ] == {"status": "inactive"}
    assert (await env.chat()).status_code == 200


async def test_a_project_spend_limit_in_cents(env: Env) -> None:
    path = ORG + f"/projects/{env.project.id}/spend_limit"
    r = await env.client.post(path, json={"threshold_amount": 12_345}, headers=env.admin())
    assert r.status_code == 200, r.text
    assert r.json() == {
        "object": "organization.project.spend_limit", "currency": "USD", "interval": "month",
        "threshold_amount": 12_345, "enforcement": {"status": "inactive"},
    }  # fmt: skip
    assert env.container.billing.project_budget(env.project.id) == 12_345 * CENT
    assert (await env.client.get(path, headers=env.admin())).json()["threshold_amount"] == 12_345

    r = await env.client.post(path, json={"threshold_amount": 0}, headers=env.admin())
    assert r.json()["enforcement"] == {"status": "enforcing"}
    error_of(await env.chat(), 429, "project_spend_limit_exceeded")

    r = await env.client.delete(path, headers=env.admin())
    assert r.json()["threshold_amount"] is None
    assert env.container.billing.project_budget(env.project.id) is None
    assert (await env.chat()).status_code == 200

    theirs = ORG + f"/projects/{env.other_project_id}/spend_limit"
    error_of(await env.client.get(theirs, headers=env.admin()), 404, "not_found")
    r = await env.client.post(theirs, json={"threshold_amount": 1}, headers=env.admin())
    error_of(r, 404, "not_found")
    error_of(
        await env.client.get(ORG + "/projects/proj_nope/spend_limit", headers=env.admin()), 404
    )


async def test_spend_alerts_default_to_the_owners(env: Env) -> None:
    r = await env.client.post(
        ORG + "/spend_alerts", json={"threshold_amount": 500}, headers=env.admin()
    )
    assert r.status_code == 200, r.text
    owners_alert = r.json()
    assert owners_alert == {
        "object": "organization.spend_alert", "id": owners_alert["id"], "currency": "USD",
        "interval": "month", "threshold_amount": 500, "project_id": None,
        "notification_channel": {"type": "email", "recipients": ["owner@example.com"]},
    }  # fmt: skip
    body = {
        "threshold_amount": 800,
        "notification_channel": {"type": "email", "recipients": ["finance@example.com"]},
    }
    finance = (await env.client.post(ORG + "/spend_alerts", json=body, headers=env.admin())).json()
    assert finance["notification_channel"]["recipients"] == ["finance@example.com"]
    # The same threshold twice would email the same people twice.
    again = await env.client.post(ORG + "/spend_alerts", json=body, headers=env.admin())
    assert error_of(again, 409)["param"] == "threshold_amount"
    project_path = ORG + f"/projects/{env.project.id}/spend_alerts"
    r = await env.client.post(project_path, json={"threshold_amount": 100}, headers=env.admin())
    project_alert = r.json()
    assert project_alert["project_id"] == env.project.id
    stored = {a.id: a.threshold for a in env.container.billing.alerts(env.org.id)}
    assert stored == {
        owners_alert["id"]: 500 * CENT,
        finance["id"]: 800 * CENT,
        project_alert["id"]: 100 * CENT,
    }

    org_list = (await env.client.get(ORG + "/spend_alerts", headers=env.admin())).json()
    assert {a["id"] for a in org_list["data"]} == {owners_alert["id"], finance["id"]}
    project_list = (await env.client.get(project_path, headers=env.admin())).json()
    assert project_list["data"] == [project_alert]

    # Each path reaches only its own alerts.
    wrong = await env.client.delete(f"{project_path}/{owners_alert['id']}", headers=env.admin())
    error_of(wrong, 404, "not_found")
    r = await env.client.delete(ORG + f"/spend_alerts/{owners_alert['id']}", headers=env.admin())
    assert r.json() == {
        "object": "organization.spend_alert.deleted",
        "id": owners_alert["id"],
        "deleted": True,
    }
    r = await env.client.delete(f"{project_path}/{project_alert['id']}", headers=env.admin())
    assert r.status_code == 200
    assert [a.id for a in env.container.billing.alerts(env.org.id)] == [finance["id"]]
    error_of(
        await env.client.delete(ORG + f"/spend_alerts/{owners_alert['id']}", headers=env.admin()),
        404,
    )

    bad = {"threshold_amount": 100, "notification_channel": {"recipients": ["not-an-address"]}}
    r = await env.client.post(ORG + "/spend_alerts", json=bad, headers=env.admin())
    assert error_of(r, 400)["param"] == "notification_channel.recipients"
    r = await env.client.post(
        ORG + "/spend_alerts", json={"threshold_amount": 0}, headers=env.admin()
    )
    assert error_of(r, 400)["param"] == "threshold_amount"


async def test_billing_settings_are_validated_with_the_field_named(env: Env) -> None:
    path = ORG + "/billing_settings"
    billing = env.container.billing
    default_limit = billing.effective_usage_limit(billing.settings(env.org.id))  # the tier's
    assert (await env.client.get(path, headers=env.admin())).json() == {
        "object": "organization.billing_settings", "mode": "prepaid",
        "usage_limit_micro_usd": default_limit,
        "auto_recharge": {"enabled": False, "threshold_micro_usd": None, "target_micro_usd": None},
        "billing_email": None, "billing_address": None, "low_balance_alert_micro_usd": None,
        "currency": "usd",
    }  # fmt: skip
    cases = [
        ({"auto_recharge": {"enabled": True}}, "auto_recharge.threshold_micro_usd", "$5.00 and $95.00"),
        (
            {"auto_recharge": {"enabled": True, "threshold_micro_usd": DOLLAR, "target_micro_usd": 20 * DOLLAR}},
            "auto_recharge.threshold_micro_usd", "$5.00 and $95.00",
        ),
        (
            {"auto_recharge": {"enabled": True, "threshold_micro_usd": 10 * DOLLAR, "target_micro_usd": 200 * DOLLAR}},
            "auto_recharge.target_micro_usd", "$10.00 and $100.00",
        ),
        (
            {"auto_recharge": {"enabled": True, "threshold_micro_usd": 20 * DOLLAR, "target_micro_usd": 20 * DOLLAR}},
            "auto_recharge.target_micro_usd", "above the threshold",
        ),
        ({"mode": "free"}, "mode", None),
        ({"usage_limit_micro_usd": -1}, "usage_limit_micro_usd", None),
        ({"usage_limit_micro_usd": 10.5}, "usage_limit_micro_usd", None),
        ({"budget": 5}, "budget", "Unrecognized"),
    ]  # fmt: skip
    for body, param, message in cases:
        error = error_of(await env.client.post(path, json=body, headers=env.admin()), 400)
        assert error["param"] == param and error["type"] == "invalid_request_error", (body, error)
        assert message is None or message in error["message"], (body, error)
    assert (await env.client.get(path, headers=env.admin())).json()["auto_recharge"][
        "enabled"
    ] is False

    on = {"threshold_micro_usd": 10 * DOLLAR, "target_micro_usd": 50 * DOLLAR, "enabled": True}
    r = await env.client.post(
        path,
        json={"mode": "postpaid", "usage_limit_micro_usd": 50 * DOLLAR, "auto_recharge": on},
        headers=env.admin(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "postpaid" and r.json()["usage_limit_micro_usd"] == 50 * DOLLAR
    assert r.json()["auto_recharge"] == on
    r = await env.client.post(path, json={"usage_limit_micro_usd": None}, headers=env.admin())
    assert r.json()["usage_limit_micro_usd"] == default_limit and r.json()["mode"] == "postpaid"
    assert (await env.client.get(path, headers=env.admin())).json() == r.json()


async def test_the_low_balance_alert_is_set_validated_turned_off_and_audited(env: Env) -> None:
    """``low_balance_alert_micro_usd``: $1 to $100,000 in whole cents (400 naming the field
    otherwise, nothing changed), null turns it off; each change audited with before and after."""
    path = ORG + "/billing_settings"
    field = "low_balance_alert_micro_usd"
    for value, message in [
        (0, "between $1.00 and $100,000.00"),
        (DOLLAR - CENT, "between $1.00 and $100,000.00"),
        (100_000 * DOLLAR + CENT, "between $1.00 and $100,000.00"),
        (10 * DOLLAR + 1, "whole cents"),
        (-DOLLAR, None),
        ("10000000", None),
        (10.5, None),
        (True, None),
        (10**30, None),
    ]:
        error = error_of(await env.client.post(path, json={field: value}, headers=env.admin()), 400)
        assert error["param"] == field and error["type"] == "invalid_request_error", (value, error)
        assert message is None or message in error["message"], (value, error)
    assert (await env.client.get(path, headers=env.admin())).json()[field] is None

    r = await env.client.post(path, json={field: 25 * DOLLAR}, headers=env.admin())
    assert r.status_code == 200, r.text
    assert r.json()[field] == 25 * DOLLAR
    assert (await env.client.get(path, headers=env.admin())).json() == r.json()
    assert env.container.billing.settings(env.org.id).low_balance_alert == 25 * DOLLAR
    r = await env.client.post(path, json={"mode": "prepaid"}, headers=env.admin())  # left be
    assert r.json()[field] == 25 * DOLLAR
    r = await env.client.post(path, json={field: None}, headers=env.admin())
    assert r.status_code == 200 and r.json()[field] is None

    logs = await env.client.get(
        ORG + "/audit_logs", params={"event_types[]": "billing_settings.updated"},
        headers=env.admin(),
    )  # fmt: skip
    changes = [
        {k: e["billing_settings.updated"][k] for k in ("before", "after")}
        for e in reversed(logs.json()["data"])
    ]
    assert changes == [
        {"before": {field: None}, "after": {field: 25 * DOLLAR}},
        {"before": {field: 25 * DOLLAR}, "after": {field: None}},
    ], changes


async def test_the_billing_email_and_address_round_trip_validated_and_audited(env: Env) -> None:
    """``billing_email`` and ``billing_address`` read and set as the dashboard's Preferences do:
    the same checks (the field named), null removes, each change audited with before and after."""
    path = ORG + "/billing_settings"
    address = {
        "name": "Acme Inc.", "line1": "1 Main St", "line2": "Suite 5", "city": "Springfield",
        "state": "IL", "postal_code": "62701", "country": "us", "tax_id": "US-123",
    }  # fmt: skip
    for body, param, message in [
        ({"billing_email": "not an email"}, "billing_email", "valid email address"),
        ({"billing_email": "a@x.com,b@y.com"}, "billing_email", "valid email address"),
        ({"billing_address": {**address, "country": "XX"}}, "billing_address.country", "ISO 3166-1"),
        ({"billing_address": {**address, "line1": " "}}, "billing_address.line1", "address line 1"),
        ({"billing_address": {"country": "US", "line1": "1 Main St"}}, "billing_address.city", "city"),
        ({"billing_address": {**address, "postal_code": "9" * 21}}, "billing_address.postal_code", "at most 20"),
        ({"billing_address": {**address, "name": "Acme\u202eInc"}}, "billing_address.name", "control characters"),
        ({"billing_address": {**address, "street": "x"}}, "billing_address.street", None),
    ]:  # fmt: skip
        error = error_of(await env.client.post(path, json=body, headers=env.admin()), 400)
        assert error["param"] == param, (body, error)
        assert message is None or message in error["message"], (body, error)
    assert (await env.client.get(path, headers=env.admin())).json()["billing_address"] is None

    r = await env.client.post(
        path, json={"billing_email": " Billing@Example.COM ", "billing_address": address},
        headers=env.admin(),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    stored = {**address, "country": "US"}
    assert r.json()["billing_email"] == "billing@example.com"
    assert r.json()["billing_address"] == stored
    assert (await env.client.get(path, headers=env.admin())).json() == r.json()
    # Setting something else leaves them be; null removes them.
    r = await env.client.post(path, json={"mode": "prepaid"}, headers=env.admin())
    assert (r.json()["billing_email"], r.json()["billing_address"]) == (
        "billing@example.com",
        stored,
    )
    r = await env.client.post(
        path, json={"billing_email": None, "billing_address": None}, headers=env.admin()
    )
    assert (r.json()["billing_email"], r.json()["billing_address"]) == (None, None)

    logs = await env.client.get(
        ORG + "/audit_logs", params={"event_types[]": "billing_settings.updated"},
        headers=env.admin(),
    )  # fmt: skip
    changes = [  # (none for the mode set to what it was: nothing changed)
        {k: e["billing_settings.updated"][k] for k in ("before", "after")}
        for e in reversed(logs.json()["data"])
    ]
    assert changes == [
        {"before": {"billing_email": None, "billing_address": None},
         "after": {"billing_email": "billing@example.com", "billing_address": stored}},
        {"before": {"billing_email": "billing@example.com", "billing_address": stored},
         "after": {"billing_email": None, "billing_address": None}},
    ], changes  # fmt: skip


async def test_bad_input_unknown_urls_and_methods_answer_in_the_envelope(env: Env) -> None:
    limit = ORG + "/spend_limit"
    cases: list[tuple[Any, str | None]] = [
        ({"currency": "EUR", "interval": "month", "threshold_amount": 1}, "currency"),
        ({"currency": "USD", "interval": "day", "threshold_amount": 1}, "interval"),
        ({"currency": "USD", "interval": "month"}, "threshold_amount"),
        ({"threshold_amount": -1}, "threshold_amount"),
        ({"threshold_amount": "100"}, "threshold_amount"),
        ({"threshold_amount": 1.5}, "threshold_amount"),
        ({"threshold_amount": True}, "threshold_amount"),
        ({"threshold_amount": 10**30}, "threshold_amount"),
        ([1, 2], None),
    ]
    for body, param in cases:
        error = error_of(await env.client.post(limit, json=body, headers=env.admin()), 400)
        assert error["param"] == param and error["type"] == "invalid_request_error", (body, error)
    error = error_of(
        await env.client.post(
            limit, json={"currency": "EUR", "threshold_amount": 1}, headers=env.admin()
        ),
        400,
    )
    assert error["message"] == "Invalid value for 'currency': Only USD is supported."
    error = error_of(await env.client.post(limit, json={}, headers=env.admin()), 400)
    assert error["message"] == "Missing required parameter: 'threshold_amount'."

    raw = await env.client.post(
        limit, content=b"{nope", headers={**env.admin(), "content-type": "application/json"}
    )
    assert "parse the JSON body" in error_of(raw, 400)["message"]
    grants = ORG + "/credit_grants"
    for amount in (0, -5, 10**13):
        r = await env.client.post(grants, json={"amount_micro_usd": amount}, headers=env.admin())
        assert error_of(r, 400)["param"] == "amount_micro_usd"
    r = await env.client.post(
        grants, json={"amount_micro_usd": 1, "note": "x" * 501}, headers=env.admin()
    )
    assert error_of(r, 400)["param"] == "note"
    r = await env.client.get(grants + "?limit=0", headers=env.admin())
    assert error_of(r, 400)["param"] == "limit"
    r = await env.client.get(grants + "?after=cg_unknown", headers=env.admin())
    assert error_of(r, 400)["param"] == "after"

    huge = {"amount_micro_usd": 1, "note": "x" * 100_000}
    error_of(await env.client.post(grants, json=huge, headers=env.admin()), 413)

    unknown = await env.client.get(ORG + "/no_such_thing", headers=env.admin())
    assert error_of(unknown, 404)["message"] == f"Invalid URL (GET {ORG}/no_such_thing)"
    error_of(await env.client.get(ORG + "/no_such_thing"), 404)  # unknown, with or without a key
    put = await env.client.put(limit, json={"threshold_amount": 1}, headers=env.admin())
    error_of(put, 405)
    assert "allow" in put.headers


async def test_the_openapi_document_lists_these_operations(env: Env) -> None:
    r = await env.client.get("/openapi.json")
    assert r.status_code == 200
    document = r.json()
    paths = document["paths"]
    for method, path, _ in OPERATIONS:
        template = path.replace("cg_x", "{grant_id}").replace("proj_x", "{project_id}")
        template = template.replace("sa_x", "{alert_id}")
        assert method.lower() in paths[ORG + template], (method, template)
    # Invalid input answers 400 in the envelope, so FastAPI's 422 is not promised anywhere.
    assert "422" not in r.text and "HTTPValidationError" not in r.text
    assert "AdminKey" in document["components"]["securitySchemes"]
    docs = await env.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # On the dashboard's origin, every file of it too (it works offline): no other origin in the
    # page nor in its Content-Security-Policy, no framing.
    csp = docs.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp
    assert "http" not in csp
    assert docs.headers["x-frame-options"] == "DENY"
    urls = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert len(urls) == 3 and all(u.startswith("/docs/") for u in urls), urls
    types = {}
    for url in urls:
        r = await env.client.get(url)
        assert r.status_code == 200, url
        types[url.split("?")[0]] = r.headers["content-type"].split(";")[0]
        assert r.headers["x-content-type-options"] == "nosniff"
    assert types == {
        "/docs/swagger-ui.css": "text/css",
        "/docs/swagger-ui-bundle.js": "text/javascript",
        "/docs/init.js": "text/javascript",
    }
    bundle = await env.client.get(next(u for u in urls if "bundle" in u))
    assert 'PACKAGE_VERSION:"5.' in bundle.text  # Swagger UI 5: it reads OpenAPI 3.1
    init = await env.client.get("/docs/init.js")
    assert init.status_code == 200 and '"/openapi.json"' in init.text
