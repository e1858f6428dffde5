"""Admin API answers a client written against OpenAI's Administration API can read: the objects
and filters where keyplane's shape once differed from OpenAI's documented one (BRIEF C7)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update
from test_admin_org import OrgEnv, org_env, setup_actor

from keyplane.storage.tables import api_keys

pytestmark = pytest.mark.anyio

# The fields of OpenAI's objects (its OpenAPI document), which keyplane's must all carry.
PROJECT_USER = {"object", "id", "name", "email", "role", "added_at"}
ADMIN_KEY_OWNER = {"type", "object", "id", "name", "created_at", "role"}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[OrgEnv]:
    async with org_env(tmp_path) as instance:
        yield instance


async def test_a_project_keys_user_owner_is_a_project_user_with_the_project_role(
    env: OrgEnv,
) -> None:
    """OpenAI's ``owner.user`` of a project key is a ``ProjectUser``: its ``object``, its role in
    the project (``owner`` or ``member``, never the organization's ``reader``) and ``added_at``."""
    pid = env.project.id
    users = f"/projects/{pid}/users"
    joined = await env.ok("POST", users, {"user_id": env.reader.id, "role": "member"})
    key, _ = env.svc.orgs.create_project_key(
        setup_actor(env.owner), env.org.id, pid, "theirs", env.reader.id
    )
    shown = await env.ok("GET", f"/projects/{pid}/api_keys/{key.id}")
    assert shown["owner"] == {"type": "user", "user": joined}
    assert set(joined) == PROJECT_USER and joined["object"] == "organization.project.user"
    assert joined["role"] == "member"  # the organization's role of this user is "reader"

    await env.ok("POST", f"{users}/{env.reader.id}", {"role": "owner"})
    listed = (await env.ok("GET", f"/projects/{pid}/api_keys"))["data"]
    [theirs] = [k for k in listed if k["id"] == key.id]
    assert theirs["owner"]["user"]["role"] == "owner"


async def test_an_admin_keys_owner_carries_openais_fields(env: OrgEnv) -> None:
    created = await env.ok("POST", "/admin_api_keys", {"name": "terraform"})
    owner = created["owner"]
    assert set(owner) >= ADMIN_KEY_OWNER
    assert (owner["type"], owner["object"], owner["role"]) == ("user", "organization.user", "owner")
    assert owner["created_at"] == env.owner.created_at
    listed = (await env.ok("GET", "/admin_api_keys"))["data"]
    assert [k["owner"] for k in listed if k["id"] == created["id"]] == [owner]


async def test_admin_keys_list_oldest_first_unless_asked_otherwise(env: OrgEnv) -> None:
    """OpenAI's ``order`` (``asc`` by default), with ``after`` paging in that order."""
    with env.container.engine.begin() as conn:  # the setup's keys, made a day earlier
        conn.execute(update(api_keys).values(created_at=api_keys.c.created_at - 86400))
    new = (await env.ok("POST", "/admin_api_keys", {"name": "terraform"}))["id"]

    def ids(page: dict[str, list[dict[str, str]]]) -> list[str]:
        return [k["id"] for k in page["data"]]

    oldest_first = ids(await env.ok("GET", "/admin_api_keys"))
    assert len(oldest_first) == 3 and oldest_first[-1] == new
    assert ids(await env.ok("GET", "/admin_api_keys?order=asc")) == oldest_first
    assert ids(await env.ok("GET", "/admin_api_keys?order=desc")) == oldest_first[::-1]
    first = await env.ok("GET", "/admin_api_keys?limit=2")
    rest = await env.ok("GET", f"/admin_api_keys?limit=2&after={first['last_id']}")
    assert ids(first) + ids(rest) == oldest_first and rest["has_more"] is False
    assert (await env.call("GET", "/admin_api_keys?order=newest")).status_code == 400


async def test_audit_logs_filter_by_resource_ids(env: OrgEnv) -> None:
    """OpenAI's ``resource_ids[]``: only the events about these objects (a filter a client relies
    on must not be ignored, which would answer every event)."""
    first = await env.ok("POST", "/projects", {"name": "first"})
    second = await env.ok("POST", "/projects", {"name": "second"})
    await env.ok("POST", f"/projects/{first['id']}", {"name": "renamed"})

    def about(page: dict[str, list[dict[str, str]]]) -> list[tuple[str, str]]:
        return [(e["type"], e[e["type"]]["id"]) for e in page["data"]]

    one = await env.ok("GET", f"/audit_logs?resource_ids[]={first['id']}")
    assert about(one) == [("project.updated", first["id"]), ("project.created", first["id"])]
    both = f"/audit_logs?resource_ids[]={first['id']}&resource_ids[]={second['id']}"
    assert [t for t, _ in about(await env.ok("GET", both))] == [
        "project.updated", "project.created", "project.created",
    ]  # fmt: skip
    assert (await env.ok("GET", "/audit_logs?resource_ids[]=proj_nobody"))["data"] == []
