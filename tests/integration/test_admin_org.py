"""Admin API for the organization (BRIEF C1, C2, C7): projects, their keys, service accounts and
members, admin keys, users and invitations, and the audit log — in OpenAI's shapes, over the real
SQLite store, in the same ASGI app as the gateway, in process."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conftest import fresh_postgres, make_settings
from keyplane import bootstrap, gateway_assembly
from keyplane.accounts.models import Organization, OrgRole, Project, User
from keyplane.accounts.orgs import OrgService
from keyplane.app import KeyplaneApp
from keyplane.audit.models import Actor, ActorType
from keyplane.audit.service import AuditService
from keyplane.clock import FrozenClock
from keyplane.config import UpstreamSettings
from keyplane.gateway.app import Gateway
from keyplane.ids import new_id
from keyplane.keys import format as keyfmt
from keyplane.keys.format import KEY_PATTERN, KeyKind
from keyplane.simulator import SimulatorConfig, create_app
from keyplane.storage.audit_repository import SqlAuditLog
from keyplane.storage.org_repository import SqlOrgStore
from keyplane.storage.org_tables import audit_events
from keyplane.web.authz import OrgServices, wire_org_services

pytestmark = pytest.mark.anyio

ORG = "/v1/organization"
USER_AGENT = "kp-test/1.0"
TOKEN = re.compile(r"token=([A-Za-z0-9_-]+)")


@dataclass
class OrgEnv:
    container: bootstrap.Container
    app: KeyplaneApp
    gateway: Gateway
    client: httpx.AsyncClient
    svc: OrgServices
    owner: User
    org: Organization
    project: Project
    owner_key: str  # the Owner's admin key
    reader: User
    reader_key: str  # an admin key of a Reader of the same organization
    other_org: Organization
    other_key: str  # an admin key of another organization's Owner
    other_project_id: str
    project_key: str  # a project key of the first organization
    secrets: list[str] = field(default_factory=list)  # every secret this test saw

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.owner_key}"}

    async def call(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> httpx.Response:
        r = await self.client.request(method, ORG + path, json=body, headers=self.headers(key))
        self.secrets += [m.group(0) for m in KEY_PATTERN.finditer(r.text)]
        return r

    async def ok(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        r = await self.call(method, path, body, key)
        assert r.status_code == 200, (method, path, r.text)
        return r.json()

    async def chat(self, key: str) -> int:
        """Status of a gateway request with ``key``, after this process saw every key change."""
        await self.gateway.pipeline.auth.refresh()
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        r = await self.client.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
        return r.status_code

    def invite_token(self, email: str) -> str:
        """The token in the newest invitation email to ``email`` (read from the outbox)."""
        mails = self.container.outbox.claim_due(time.time() + 1, 1000, 60)
        bodies = [m.body_text for m in mails if email in m.to]
        assert bodies, f"no invitation email to {email}"
        match = TOKEN.search(bodies[-1])
        assert match is not None
        self.secrets.append(match.group(1))
        return match.group(1)


def key_id_of(text: str) -> str:
    parsed = keyfmt.parse(text)
    assert parsed is not None
    return keyfmt.key_id(parsed.public_id)


def setup_actor(user: User) -> Actor:
    return Actor(ActorType.SESSION, "sess_setup", user_id=user.id, email=user.email)


def add_member(env_svc: OrgServices, env: bootstrap.Container, org_id: str, inviter: User,
               email: str, role: OrgRole) -> tuple[User, str]:  # fmt: skip
    """A user who joined ``org_id`` through an invitation (the flow the dashboard will run)."""
    orgs = env_svc.orgs
    user = new_user(env, email)
    orgs.invite(setup_actor(inviter), org_id, email, role)
    mails = env.outbox.claim_due(time.time() + 1, 1000, 60)
    match = TOKEN.search([m.body_text for m in mails if email in m.to][-1])
    assert match is not None
    orgs.accept_invite(setup_actor(user), match.group(1), user.id)
    return user, match.group(1)


def new_user(container: bootstrap.Container, email: str) -> User:
    """A user who signed up and verified their email (sign-up is tested with the dashboard)."""
    now = int(time.time())
    user = User(new_id("user-"), email, "", "-", now, email_verified_at=now)
    SqlOrgStore(container.engine).add_user(user)
    return user


def admin_key(container: bootstrap.Container, org_id: str, user_id: str) -> str:
    _, text = container.keys.create(
        kind=KeyKind.ADMIN, org_id=org_id, project_id=None, name="admin",
        owner_type="user", owner_id=user_id, created_by=user_id,
    )  # fmt: skip
    return text


@contextlib.asynccontextmanager
async def org_env(tmp_path: Path, **settings: Any) -> AsyncIterator[OrgEnv]:
    upstream = UpstreamSettings(name="sim", base_url="http://simulator/v1")
    container = bootstrap.build(make_settings(tmp_path, upstreams=[upstream], **settings))
    owner, org, project = container.accounts.initialize(
        email="owner@example.com", password="correct horse battery", org_name="Acme"
    )
    container.billing.open_account(org.id, tier="tier-5", welcome_credit=0)
    container.billing.grant(org.id, 5_000_000, note="test credit")
    svc = wire_org_services(container)
    reader, token = add_member(svc, container, org.id, owner, "reader@example.com", OrgRole.READER)
    other_owner = new_user(container, "owner@globex.example")
    other_org = Organization(id=new_id("org-"), name="Globex", created_at=int(time.time()))
    other_project = Project(new_id("proj_"), other_org.id, "Default project", other_org.created_at)
    SqlOrgStore(container.engine).add_organization(other_org, other_owner.id, other_project)
    _, project_key = container.keys.create(
        kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name="app",
        owner_type="user", owner_id=owner.id, created_by=owner.id,
    )  # fmt: skip
    keys = [admin_key(container, org.id, owner.id), admin_key(container, org.id, reader.id)]
    other_key = admin_key(container, other_org.id, other_owner.id)

    simulator = create_app(SimulatorConfig())
    app, gateway = gateway_assembly.build_app(
        container, transport=httpx.ASGITransport(app=simulator)
    )
    await gateway.pipeline.auth.refresh()
    await gateway.pipeline.money.refresh()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://keyplane",
        headers={"user-agent": USER_AGENT},
    )
    env = OrgEnv(
        container, app, gateway, client, svc, owner, org, project, keys[0], reader, keys[1],
        other_org, other_key, other_project.id, project_key,
    )  # fmt: skip
    env.secrets += [*keys, other_key, project_key, token]
    try:
        yield env
    finally:
        await client.aclose()
        await gateway.shutdown()
        container.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[OrgEnv]:
    async with org_env(tmp_path) as instance:
        yield instance


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error


# -- projects -------------------------------------------------------------------------------------
async def test_projects_are_created_renamed_and_archived_never_deleted(env: OrgEnv) -> None:
    created = await env.ok("POST", "/projects", {"name": "Billing bot"})
    assert created == {
        "object": "organization.project", "id": created["id"], "name": "Billing bot",
        "created_at": created["created_at"], "archived_at": None, "status": "active",
    }  # fmt: skip
    assert created["id"].startswith("proj_")
    assert (
        error_of(await env.call("POST", "/projects", {"name": "Billing bot"}), 409)["param"]
        == "name"
    )
    pid = created["id"]
    assert await env.ok("GET", f"/projects/{pid}") == created
    renamed = await env.ok("POST", f"/projects/{pid}", {"name": "Support bot"})
    assert renamed["name"] == "Support bot"

    key = await env.ok("POST", f"/projects/{pid}/api_keys", {"name": "bot"})
    assert await env.chat(key["value"]) == 200
    archived = await env.ok("POST", f"/projects/{pid}/archive")
    assert archived["status"] == "archived" and archived["archived_at"] is not None
    assert await env.chat(key["value"]) == 401  # an archived project's keys stop working
    assert await env.ok("POST", f"/projects/{pid}/archive") == archived  # idempotent

    listed = await env.ok("GET", "/projects")
    assert [p["id"] for p in listed["data"]] == [env.project.id]
    everything = await env.ok("GET", "/projects?include_archived=true")
    assert {p["id"] for p in everything["data"]} == {env.project.id, pid}
    assert (
        "archived"
        in error_of(await env.call("POST", f"/projects/{pid}", {"name": "x"}), 400)["message"]
    )
    error_of(await env.call("POST", f"/projects/{pid}/api_keys", {"name": "x"}), 400)
    error_of(await env.call("POST", f"/projects/{pid}/service_accounts", {"name": "x"}), 400)
    assert env.svc.orgs.project(env.org.id, pid).archived_at is not None  # still stored

    for bad in ({}, {"name": ""}, {"name": "x" * 201}, {"name": 5}, {"name": "a", "extra": 1},
                {"name": "\u202e\u0007bell"}):  # fmt: skip
        error_of(await env.call("POST", "/projects", bad), 400)


async def test_lists_page_with_cursors(env: OrgEnv) -> None:
    created = [env.project.id]
    for n in range(4):
        created.append((await env.ok("POST", "/projects", {"name": f"p{n}"}))["id"])
    default = await env.ok("GET", "/projects")
    ids = [p["id"] for p in default["data"]]  # oldest first; same-second ties in a stable order
    assert sorted(ids) == sorted(created) and default["has_more"] is False
    first = await env.ok("GET", "/projects?limit=2")
    assert first["object"] == "list" and [p["id"] for p in first["data"]] == ids[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[0], ids[1], True)
    second = await env.ok("GET", f"/projects?limit=2&after={first['last_id']}")
    assert [p["id"] for p in second["data"]] == ids[2:4] and second["has_more"] is True
    last = await env.ok("GET", f"/projects?limit=2&after={second['last_id']}")
    assert [p["id"] for p in last["data"]] == ids[4:] and last["has_more"] is False
    for query in ("limit=0", "limit=101", "limit=x", f"after={env.other_project_id}"):
        error_of(await env.call("GET", f"/projects?{query}"), 400)


# -- keys -----------------------------------------------------------------------------------------
async def test_a_project_key_is_shown_once_and_deleting_it_revokes_it(env: OrgEnv) -> None:
    path = f"/projects/{env.project.id}/api_keys"
    created = await env.ok("POST", path, {"name": "ci", "expires_in_seconds": 3600})
    value = created["value"]
    assert KEY_PATTERN.fullmatch(value) and value.startswith("sk-kp-proj-")
    assert created["redacted_value"] == f"sk-kp-proj-…{value[-4:]}"
    assert created["object"] == "organization.project.api_key"
    assert created["expires_at"] == created["created_at"] + 3600
    assert created["last_used_at"] is None
    # An organization Owner outside the project's members owns keys there as its owner.
    joined = env.svc.orgs.get_member(env.org.id, env.owner.id).added_at
    assert created["owner"] == {
        "type": "user",
        "user": {"object": "organization.project.user", "id": env.owner.id, "name": "",
                 "email": "owner@example.com", "role": "owner", "added_at": joined},
    }  # fmt: skip
    shown = {k: v for k, v in created.items() if k != "value"}
    assert await env.ok("GET", f"{path}/{created['id']}") == shown
    listing = await env.call("GET", path)
    assert value not in listing.text and shown in listing.json()["data"]
    assert await env.chat(value) == 200
    auth = env.gateway.pipeline.auth
    auth.store_uses(auth.take_uses())  # what the gateway's last-used loop does
    assert (await env.ok("GET", f"{path}/{created['id']}"))["last_used_at"] is not None

    deleted = await env.ok("DELETE", f"{path}/{created['id']}")
    assert deleted == {
        "object": "organization.project.api_key.deleted",
        "id": created["id"],
        "deleted": True,
    }
    assert await env.chat(value) == 401
    error_of(await env.call("GET", f"{path}/{created['id']}"), 404, "not_found")
    error_of(await env.call("DELETE", f"{path}/{created['id']}"), 404, "not_found")
    assert created["id"] not in (await env.call("GET", path)).text
    # A key id through another project's path is not found.
    other = await env.ok("POST", "/projects", {"name": "other"})
    key_id = (await env.ok("GET", path))["data"][0]["id"]
    error_of(await env.call("GET", f"/projects/{other['id']}/api_keys/{key_id}"), 404)
    error_of(await env.call("POST", path, {"name": "x", "expires_in_seconds": 0}), 400)


async def test_rotating_a_project_key_returns_a_new_secret_and_ends_the_old_one(
    env: OrgEnv,
) -> None:
    path = f"/projects/{env.project.id}/api_keys"
    created = await env.ok("POST", path, {"name": "rotating"})
    rotated = await env.ok("POST", f"{path}/{created['id']}/rotate", {"grace_period_seconds": 3600})
    assert rotated["id"] != created["id"] and rotated["name"] == "rotating"
    assert KEY_PATTERN.fullmatch(rotated["value"])
    assert await env.chat(created["value"]) == 200  # in the grace period
    assert await env.chat(rotated["value"]) == 200
    again = await env.ok("POST", f"{path}/{rotated['id']}/rotate", {"grace_period_seconds": 0})
    assert await env.chat(rotated["value"]) == 401  # no grace: at once
    assert await env.chat(again["value"]) == 200
    error_of(
        await env.call("POST", f"{path}/{again['id']}/rotate", {"grace_period_seconds": 8 * 86400}),
        400,
    )
    events = (await env.ok("GET", "/audit_logs?event_types[]=api_key.rotated"))["data"]
    assert len(events) == 2 and all(again["value"] not in str(e) for e in events)


async def test_updating_a_key_changes_permissions_allowlists_and_limits_at_once(
    env: OrgEnv,
) -> None:
    path = f"/projects/{env.project.id}/api_keys"
    created = await env.ok("POST", path, {"name": "narrowed"})
    assert (
        created["scopes"] == []
        and created["allowed_models"] is None
        and created["allowed_ips"] is None
    )
    read_only = await env.ok("POST", f"{path}/{created['id']}", {"scopes": ["api.all.read"]})
    assert read_only["scopes"] == ["api.all.read"]
    assert await env.chat(created["value"]) == 401  # chat needs chat.write
    await env.ok(
        "POST", f"{path}/{created['id']}", {"scopes": [], "allowed_models": ["gpt-4o-mini"]}
    )
    assert await env.chat(created["value"]) == 404  # env.chat asks for gpt-4o
    await env.ok(
        "POST", f"{path}/{created['id']}", {"allowed_models": None, "allowed_ips": ["192.0.2.0/24"]}
    )
    assert await env.chat(created["value"]) == 403  # the test client is not in that range
    limited = await env.ok(
        "POST", f"{path}/{created['id']}", {"allowed_ips": None, "max_requests_per_1_minute": 1}
    )
    assert limited["allowed_ips"] is None
    await env.gateway.pipeline.money.refresh()
    assert [await env.chat(created["value"]) for _ in range(2)] == [200, 429]
    error_of(await env.call("POST", f"{path}/{created['id']}", {"scopes": ["chat.admin"]}), 400)
    error_of(await env.call("POST", f"{path}/{created['id']}", {"allowed_ips": ["nope"]}), 400)
    renamed = await env.ok("POST", f"{path}/{created['id']}", {"name": "  ci  "})
    assert renamed["name"] == "ci" and renamed["allowed_ips"] is None  # the rest kept
    error_of(await env.call("POST", f"{path}/{created['id']}", {"name": ""}), 400)
    events = (await env.ok("GET", "/audit_logs?event_types[]=api_key.updated"))["data"]
    assert len(events) == 5 and events[-1]["api_key.updated"]["changes_requested"]["scopes"] == [
        "api.all.read"
    ]
    assert events[0]["api_key.updated"]["changes_requested"]["name"] == "ci"


async def test_a_keys_limits_change_one_at_a_time_and_survive_rotation(env: OrgEnv) -> None:
    """Setting one limit keeps the others; a rotated key keeps its limits (a routine rotation
    must not lift a cap); the key shows them; a value no column holds is a 400 that changes
    nothing."""
    path = f"/projects/{env.project.id}/api_keys"
    created = await env.ok("POST", path, {"name": "capped"})
    url = f"{path}/{created['id']}"
    await env.ok("POST", url, {"max_requests_per_1_minute": 2})
    shown = await env.ok("POST", url, {"max_requests_per_1_day": 1000})
    assert (shown["max_requests_per_1_minute"], shown["max_requests_per_1_day"]) == (2, 1000)
    huge = await env.call(
        "POST", url, {"scopes": ["api.all.read"], "max_tokens_per_1_minute": 2**63}
    )
    assert error_of(huge, 400)["param"] == "max_tokens_per_1_minute"
    assert (await env.ok("GET", url))["scopes"] == []  # nothing of it applied
    rotated = await env.ok("POST", f"{url}/rotate", {"grace_period_seconds": 0})
    assert rotated["max_requests_per_1_minute"] == 2
    await env.gateway.pipeline.money.refresh()
    assert [await env.chat(rotated["value"]) for _ in range(3)] == [200, 200, 429]
    lifted = await env.ok("POST", f"{path}/{rotated['id']}", {"max_requests_per_1_minute": None})
    assert lifted["max_requests_per_1_minute"] is None and lifted["max_requests_per_1_day"] == 1000
    # An empty IP list is refused rather than read as "any address"; entries are kept once.
    error_of(await env.call("POST", f"{path}/{rotated['id']}", {"allowed_ips": []}), 400)
    ips = ["10.0.0.1/8", "10.0.0.0/8", "::ffff:192.0.2.1"]
    narrowed = await env.ok("POST", f"{path}/{rotated['id']}", {"allowed_ips": ips})
    assert narrowed["allowed_ips"] == ["10.0.0.0/8", "192.0.2.1/32"]


async def test_a_readers_project_role_changes_no_key_and_removing_them_revokes_theirs(
    env: OrgEnv,
) -> None:
    """BRIEF C1: a Reader cannot change keys, whatever their role in a project (even an Owner of
    it, even a key they own, made when they were an organization Owner); removed from the
    project, the keys they own there stop working."""
    pid = env.project.id
    await env.ok("POST", f"/projects/{pid}/users", {"user_id": env.reader.id, "role": "owner"})
    theirs, secret = env.svc.orgs.create_project_key(
        setup_actor(env.owner), env.org.id, pid, "theirs", env.reader.id
    )
    url = f"/projects/{pid}/api_keys/{theirs.id}"
    refused = [
        ("POST", f"/projects/{pid}/api_keys", {"name": "mine"}),
        ("POST", f"{url}/rotate", {}),
        ("POST", url, {"scopes": ["api.all.read"]}),
        ("DELETE", url, None),
        ("POST", f"/projects/{pid}/service_accounts", {"name": "bot"}),
    ]
    for method, path, body in refused:
        error = error_of(await env.call(method, path, body, key=env.reader_key), 403)
        assert error["code"] == "insufficient_permissions", (method, path)
        assert "Your role (Reader) does not allow" in error["message"]
    assert (await env.ok("GET", url, key=env.reader_key))["id"] == theirs.id  # they still read
    assert await env.chat(secret) == 200  # untouched by the refusals
    await env.ok("DELETE", f"/projects/{pid}/users/{env.reader.id}")
    await env.gateway.pipeline.auth.refresh()
    assert await env.chat(secret) == 401
    events = (await env.ok("GET", "/audit_logs?event_types[]=project_user.deleted"))["data"]
    assert events[0]["project_user.deleted"]["revoked_keys"] == [theirs.id]
    keys = (await env.ok("GET", f"/projects/{pid}/api_keys"))["data"]
    assert theirs.id not in {k["id"] for k in keys}


async def test_a_service_account_returns_its_key_once_and_deleting_it_revokes_it(
    env: OrgEnv,
) -> None:
    path = f"/projects/{env.project.id}/service_accounts"
    created = await env.ok("POST", path, {"name": "deploy bot"})
    api_key = created["api_key"]
    assert created["object"] == "organization.project.service_account"
    assert created["id"].startswith("svc_acct_") and created["role"] == "member"
    assert api_key["object"] == "organization.project.service_account.api_key"
    assert api_key["value"].startswith("sk-kp-svcacct-") and KEY_PATTERN.fullmatch(api_key["value"])
    account = {k: v for k, v in created.items() if k != "api_key"}
    assert await env.ok("GET", f"{path}/{created['id']}") == account
    assert (await env.ok("GET", path))["data"] == [account]

    keys = await env.call("GET", f"/projects/{env.project.id}/api_keys")
    assert api_key["value"] not in keys.text
    listed = next(k for k in keys.json()["data"] if k["id"] == api_key["id"])
    assert listed["owner"] == {"type": "service_account", "service_account": account}
    assert await env.chat(api_key["value"]) == 200

    deleted = await env.ok("DELETE", f"{path}/{created['id']}")
    assert deleted["object"] == "organization.project.service_account.deleted"
    assert await env.chat(api_key["value"]) == 401
    error_of(await env.call("GET", f"{path}/{created['id']}"), 404)
    assert (await env.ok("GET", path))["data"] == []


async def test_admin_keys_are_shown_once_and_work_until_deleted(env: OrgEnv) -> None:
    created = await env.ok("POST", "/admin_api_keys", {"name": "terraform"})
    value = created["value"]
    assert created["object"] == "organization.admin_api_key" and value.startswith("sk-kp-admin-")
    assert created["owner"] == {
        "type": "user", "object": "organization.user", "id": env.owner.id, "name": "",
        "email": "owner@example.com", "role": "owner", "created_at": env.owner.created_at,
    }  # fmt: skip
    listing = await env.call("GET", "/admin_api_keys")
    assert value not in listing.text
    assert created["id"] in [k["id"] for k in listing.json()["data"]]
    assert (await env.ok("GET", "/projects", key=value))["data"]
    assert (await env.ok("DELETE", f"/admin_api_keys/{created['id']}"))["deleted"] is True
    await env.gateway.pipeline.auth.refresh()
    error_of(await env.call("GET", "/projects", key=value), 401, "invalid_api_key")
    error_of(await env.call("GET", f"/admin_api_keys/{created['id']}"), 404)


# -- users, roles, invitations --------------------------------------------------------------------
async def test_roles_change_and_the_last_owner_stays(env: OrgEnv) -> None:
    users = await env.ok("GET", "/users")
    # Both joined within the same second: the order between them is not defined.
    assert sorted((u["email"], u["role"]) for u in users["data"]) == [
        ("owner@example.com", "owner"), ("reader@example.com", "reader"),
    ]  # fmt: skip
    assert {u["object"] for u in users["data"]} == {"organization.user"}
    me = f"/users/{env.owner.id}"
    error_of(await env.call("POST", me, {"role": "reader"}), 409)
    error_of(await env.call("DELETE", me), 409)
    error_of(await env.call("POST", me, {"role": "admin"}), 400)

    # A Reader's admin key reads but cannot write; promoted, the same key can, at once.
    r = await env.call("POST", "/projects", {"name": "x"}, key=env.reader_key)
    assert "Reader" in error_of(r, 403, "insufficient_permissions")["message"]
    promoted = await env.ok("POST", f"/users/{env.reader.id}", {"role": "owner"})
    assert promoted["role"] == "owner"
    await env.ok("POST", "/projects", {"name": "x"}, key=env.reader_key)
    # Now there are two Owners, so the first may step down...
    assert (await env.ok("POST", me, {"role": "reader"}))["role"] == "reader"
    error_of(await env.call("POST", "/projects", {"name": "y"}), 403)
    await env.ok("POST", me, {"role": "owner"}, key=env.reader_key)

    # ...and removing a user revokes their keys in this organization.
    key = await env.ok(
        "POST", f"/projects/{env.project.id}/api_keys", {"name": "mine"}, key=env.reader_key
    )
    assert await env.chat(key["value"]) == 200
    assert (await env.ok("DELETE", f"/users/{env.reader.id}"))["deleted"] is True
    assert await env.chat(key["value"]) == 401
    await env.gateway.pipeline.auth.refresh()
    error_of(await env.call("GET", "/projects", key=env.reader_key), 401)
    error_of(await env.call("GET", f"/users/{env.reader.id}"), 404)


async def test_an_invitation_is_emailed_and_its_link_works_once(env: OrgEnv) -> None:
    invite = await env.ok("POST", "/invites", {"email": "New@Example.com", "role": "reader"})
    assert invite == {
        "object": "organization.invite", "id": invite["id"], "email": "new@example.com",
        "role": "reader", "status": "pending", "invited_at": invite["invited_at"],
        "expires_at": invite["invited_at"] + 7 * 86400, "accepted_at": None, "projects": [],
    }  # fmt: skip
    token = env.invite_token("new@example.com")
    assert len(token) >= 43  # 256 bits, URL-safe base64
    error_of(await env.call("POST", "/invites", {"email": "new@example.com", "role": "owner"}), 409)
    error_of(
        await env.call("POST", "/invites", {"email": "reader@example.com", "role": "owner"}), 409
    )
    error_of(await env.call("POST", "/invites", {"email": "not an address", "role": "owner"}), 400)
    assert invite in (await env.ok("GET", "/invites"))["data"]

    orgs = env.svc.orgs
    stranger = new_user(env.container, "stranger@example.com")
    actor = setup_actor(stranger)
    with pytest.raises(Exception, match="another email address"):
        orgs.accept_invite(actor, token, stranger.id)
    newcomer = new_user(env.container, "new@example.com")
    member = orgs.accept_invite(setup_actor(newcomer), token, newcomer.id)
    assert member.role is OrgRole.READER
    with pytest.raises(Exception, match="invalid, used or expired"):
        orgs.accept_invite(setup_actor(newcomer), token, newcomer.id)
    accepted = await env.ok("GET", f"/invites/{invite['id']}")
    assert accepted["status"] == "accepted" and accepted["accepted_at"] is not None
    assert (
        "accepted" in error_of(await env.call("DELETE", f"/invites/{invite['id']}"), 400)["message"]
    )

    # Expired after 7 days; a withdrawn invitation's link is dead too.
    late = await env.ok("POST", "/invites", {"email": "late@example.com", "role": "owner"})
    late_token = env.invite_token("late@example.com")
    gone = await env.ok("POST", "/invites", {"email": "gone@example.com", "role": "owner"})
    gone_token = env.invite_token("gone@example.com")
    later = FrozenClock(time.time() + 7 * 86400 + 1)
    engine = env.container.engine
    future = OrgService(
        SqlOrgStore(engine), env.container.accounts, env.container.keys, env.container.outbox,
        AuditService(SqlAuditLog(engine), later), later, public_url="http://x",
    )  # fmt: skip
    late_user = new_user(env.container, "late@example.com")
    with pytest.raises(Exception, match="invalid, used or expired"):
        future.accept_invite(setup_actor(late_user), late_token, late_user.id)
    assert (await env.ok("DELETE", f"/invites/{gone['id']}"))["deleted"] is True
    gone_user = new_user(env.container, "gone@example.com")
    with pytest.raises(Exception, match="invalid, used or expired"):
        orgs.accept_invite(setup_actor(gone_user), gone_token, gone_user.id)
    assert late["id"] in [i["id"] for i in (await env.ok("GET", "/invites"))["data"]]


async def test_project_members_and_what_their_project_role_allows(env: OrgEnv) -> None:
    pid = env.project.id
    path = f"/projects/{pid}/users"
    reader = env.reader_key
    # Without a project role, a Reader cannot create keys there.
    error_of(await env.call("POST", f"/projects/{pid}/api_keys", {"name": "k"}, key=reader), 403)
    added = await env.ok("POST", path, {"user_id": env.reader.id, "role": "member"})
    assert added == {
        "object": "organization.project.user", "id": env.reader.id, "name": "",
        "email": "reader@example.com", "role": "member", "added_at": added["added_at"],
    }  # fmt: skip
    error_of(await env.call("POST", path, {"user_id": env.reader.id, "role": "owner"}), 409)
    error_of(await env.call("POST", path, {"user_id": "user-nobody", "role": "owner"}), 404)
    assert (await env.ok("GET", path))["data"] == [added]

    # A Reader's project role, Member or Owner, adds no right to theirs (BRIEF C1): not the
    # project's keys, name or members (see also the keys: test_a_readers_project_role_...).
    owners = await env.ok("POST", f"/projects/{pid}/api_keys", {"name": "owner's"})
    for role in ("member", "owner"):
        updated = await env.ok("POST", f"{path}/{env.reader.id}", {"role": role})
        assert updated["role"] == role
        for method, url, body in (
            ("POST", f"/projects/{pid}/api_keys", {"name": "mine"}),
            ("DELETE", f"/projects/{pid}/api_keys/{owners['id']}", None),
            ("POST", f"/projects/{pid}", {"name": "renamed"}),
            ("POST", f"{path}/{env.reader.id}", {"role": "owner"}),
            ("DELETE", f"{path}/{env.reader.id}", None),
            ("POST", f"/projects/{pid}/archive", None),
        ):
            error_of(await env.call(method, url, body, key=reader), 403)
    assert (await env.ok("GET", f"{path}/{env.reader.id}", key=reader))["role"] == "owner"
    assert (await env.ok("GET", f"/projects/{pid}"))["name"] == env.project.name

    assert (await env.ok("DELETE", f"{path}/{env.reader.id}"))["deleted"] is True
    error_of(await env.call("GET", f"{path}/{env.reader.id}"), 404)
    error_of(await env.call("POST", f"/projects/{pid}/api_keys", {"name": "k"}, key=reader), 403)


# -- audit log ------------------------------------------------------------------------------------
async def test_every_change_is_audited_with_its_actor_and_never_a_secret(env: OrgEnv) -> None:
    pid = env.project.id
    project = await env.ok("POST", "/projects", {"name": "audited"})
    await env.ok("POST", f"/projects/{project['id']}", {"name": "audited 2"})
    key = await env.ok("POST", f"/projects/{pid}/api_keys", {"name": "k"})
    await env.ok("DELETE", f"/projects/{pid}/api_keys/{key['id']}")
    account = await env.ok("POST", f"/projects/{pid}/service_accounts", {"name": "sa"})
    await env.ok("DELETE", f"/projects/{pid}/service_accounts/{account['id']}")
    admin = await env.ok("POST", "/admin_api_keys", {"name": "a"})
    await env.ok("DELETE", f"/admin_api_keys/{admin['id']}")
    invite = await env.ok("POST", "/invites", {"email": "x@example.com", "role": "reader"})
    env.invite_token("x@example.com")
    await env.ok("DELETE", f"/invites/{invite['id']}")
    await env.ok("POST", f"/projects/{pid}/users", {"user_id": env.reader.id, "role": "member"})
    await env.ok("POST", f"/projects/{pid}/users/{env.reader.id}", {"role": "owner"})
    await env.ok("DELETE", f"/projects/{pid}/users/{env.reader.id}")
    await env.ok("POST", f"/users/{env.reader.id}", {"role": "owner"})
    await env.ok("POST", "/credit_grants", {"amount_micro_usd": 1_000_000, "note": "promo"})
    await env.ok("POST", "/spend_limit", {"threshold_amount": 5000})
    await env.ok("POST", f"/projects/{pid}/spend_limit", {"threshold_amount": 100})
    alert = await env.ok("POST", "/spend_alerts", {"threshold_amount": 100})
    await env.ok("DELETE", f"/spend_alerts/{alert['id']}")
    await env.ok("POST", "/billing_settings", {"usage_limit_micro_usd": 50_000_000})
    await env.ok("POST", f"/projects/{project['id']}/archive")

    log = await env.ok("GET", "/audit_logs?limit=100")
    types = [e["type"] for e in log["data"]]
    assert log["has_more"] is False
    for expected in (
        "project.created", "project.updated", "project.archived", "api_key.created",
        "api_key.deleted", "service_account.created", "service_account.deleted",
        "invite.sent", "invite.deleted", "project_user.added", "project_user.updated",
        "project_user.deleted", "user.updated", "credit_grant.created", "spend_limit.updated",
        "spend_alert.created", "spend_alert.deleted", "billing_settings.updated",
    ):  # fmt: skip
        assert expected in types, expected
    assert types[0] == "project.archived"  # newest first

    renamed = next(e for e in log["data"] if e["type"] == "project.updated")
    assert renamed["actor"] == {
        "type": "api_key",
        "api_key": {
            "id": key_id_of(env.owner_key),
            "type": "user", "user": {"id": env.owner.id, "email": "owner@example.com"},
            "ip_address": "127.0.0.1", "user_agent": USER_AGENT,
        },
    }  # fmt: skip
    assert renamed["project"] == {"id": project["id"], "name": "audited 2"}
    assert renamed["project.updated"] == {
        "id": project["id"], "before": {"name": "audited"}, "after": {"name": "audited 2"},
        "changes_requested": {"name": "audited 2"},
    }  # fmt: skip
    role = next(e for e in log["data"] if e["type"] == "user.updated")
    assert role["user.updated"]["before"] == {"role": "reader"}
    limit = next(e for e in log["data"] if e["type"] == "spend_limit.updated" and e["project"])
    assert limit["spend_limit.updated"]["after"] == {"threshold_amount": 100}

    # No secret anywhere: not in the stored rows, not in the answers.
    with env.container.engine.connect() as conn:
        rows = [str(tuple(r)) for r in conn.execute(select(audit_events)).all()]
    stored = "\n".join(rows)
    assert len(rows) >= len(types)
    assert len(env.secrets) == 9  # setup: 4 keys, 1 invitation token; here: 3 keys, 1 token
    for secret in env.secrets:
        assert secret not in stored
        assert secret not in str(log)
    assert not KEY_PATTERN.search(stored)


async def test_audit_log_filters_and_cursors(env: OrgEnv) -> None:
    pid = env.project.id
    start = int(time.time())
    for n in range(3):
        await env.ok("POST", "/projects", {"name": f"f{n}"})
    await env.ok("POST", f"/projects/{pid}/api_keys", {"name": "k"}, key=env.owner_key)
    await env.ok("POST", f"/projects/{pid}/users", {"user_id": env.reader.id, "role": "member"})
    await env.ok("POST", f"/users/{env.reader.id}", {"role": "owner"})
    await env.ok(
        "POST", f"/projects/{pid}/api_keys", {"name": "r"}, key=env.reader_key
    )  # by the former Reader, now an Owner

    def types(page: dict[str, Any]) -> list[str]:
        return [e["type"] for e in page["data"]]

    created = await env.ok("GET", "/audit_logs?event_types[]=project.created")
    assert types(created) == ["project.created"] * 3
    both = await env.ok(
        "GET", "/audit_logs?event_types[]=project.created&event_types[]=api_key.created"
    )
    assert len(both["data"]) == 5
    # The Reader's admin key, and before it their session accepting the invitation (setup).
    by_reader = await env.ok("GET", f"/audit_logs?actor_ids[]={env.reader.id}")
    assert types(by_reader) == ["api_key.created", "user.added", "invite.accepted"]
    assert by_reader["data"][0]["actor"]["api_key"]["user"]["email"] == "reader@example.com"
    assert by_reader["data"][1]["actor"]["session"]["user"]["id"] == env.reader.id
    by_key = await env.ok("GET", f"/audit_logs?actor_ids[]={key_id_of(env.reader_key)}")
    assert by_key["data"] == by_reader["data"][:1]
    by_email = await env.ok("GET", "/audit_logs?actor_emails[]=READER@example.com")
    assert by_email["data"] == by_reader["data"]
    # keyplane's own parts say which acted (an auto-recharge, the payment provider's word...).
    recharge = Actor(ActorType.SYSTEM, "auto-recharge")
    env.container.audit.notice(env.org.id, recharge, "credit_purchase.created", target_id="pay_x")
    [system] = (await env.ok("GET", "/audit_logs?actor_ids[]=auto-recharge"))["data"]
    assert system["actor"] == {"type": "system", "system": {"id": "auto-recharge"}}
    in_project = await env.ok("GET", f"/audit_logs?project_ids[]={pid}")
    assert types(in_project) == ["api_key.created", "project_user.added", "api_key.created"]
    assert (await env.ok("GET", f"/audit_logs?effective_at[gte]={start}"))["data"]
    assert (await env.ok("GET", f"/audit_logs?effective_at[lt]={start - 3600}"))["data"] == []
    assert (await env.ok("GET", f"/audit_logs?effective_at[gt]={start + 3600}"))["data"] == []

    everything = (await env.ok("GET", "/audit_logs?limit=100"))["data"]
    ids = [e["id"] for e in everything]
    first = await env.ok("GET", "/audit_logs?limit=2")
    assert [e["id"] for e in first["data"]] == ids[:2] and first["has_more"] is True
    older = await env.ok("GET", f"/audit_logs?limit=2&after={first['last_id']}")
    assert [e["id"] for e in older["data"]] == ids[2:4]
    newer = await env.ok("GET", f"/audit_logs?limit=1&before={older['first_id']}")
    assert [e["id"] for e in newer["data"]] == [ids[1]]
    error_of(await env.call("GET", "/audit_logs?after=audit_log-nope"), 400)

    # Another organization sees none of it, and cannot page from our cursors.
    theirs = await env.ok("GET", "/audit_logs?limit=100", key=env.other_key)
    assert not set(ids) & {e["id"] for e in theirs["data"]}
    error_of(await env.call("GET", f"/audit_logs?after={ids[0]}", key=env.other_key), 400)


async def test_required_organization_verification_gates_key_creation(tmp_path: Path) -> None:
    async with org_env(tmp_path, require_org_verification=True) as env:
        path = f"/projects/{env.project.id}/api_keys"
        refused = error_of(await env.call("POST", path, {"name": "early"}), 400)
        assert "must be verified" in refused["message"]
        assert (await env.ok("GET", "/verification"))["status"] == "unverified"
        started = await env.ok(
            "POST",
            "/verification",
            {"legal_name": "Acme Corporation", "website": "https://acme.example"},
        )
        assert started["status"] == "pending" and started["required"] is True
        error_of(await env.call("POST", path, {"name": "still early"}), 400)
        env.container.verification.decide(
            env.org.id, approve=True
        )  # the operator: keyplane orgs verify
        assert (await env.ok("POST", path, {"name": "now"}))["value"].startswith("sk-kp-proj-")
        error_of(await env.call("POST", "/verification", {"legal_name": "x"}), 400)


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_the_nul_character_is_bad_input_on_either_database(
    tmp_path: Path, database: str
) -> None:
    """PostgreSQL's text cannot hold U+0000: in a body or in a URL it is a 4xx, never a 500."""
    with contextlib.ExitStack() as stack:
        url = "" if database == "sqlite" else stack.enter_context(fresh_postgres())
        async with org_env(tmp_path, database_url=url) as env:
            project = env.project.id
            for path, body in [
                ("/projects", {"name": "a\x00b"}),
                (f"/projects/{project}/service_accounts", {"name": "robot\x00"}),
                ("/invites", {"email": "new@example.com\x00", "role": "reader"}),
                (f"/projects/{project}/api_keys", {"name": "key\x00"}),
            ]:
                error = error_of(await env.call("POST", path, body), 400)
                assert "NUL character" in error["message"], (path, error)
            for path in (f"/projects/{project}%00", f"/projects/{project}/api_keys?after=x%00"):
                r = await env.call("GET", path)
                assert r.status_code in (400, 404), (path, r.text)
                error_of(r, r.status_code)
            names = [p["name"] for p in (await env.ok("GET", "/projects"))["data"]]
            assert names == ["Default project"]
