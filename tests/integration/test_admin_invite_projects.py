"""OpenAI's ``projects`` of an invitation, through the Admin API on SQLite and PostgreSQL: the
projects named (active ones of the organization, each once, ``member`` or ``owner``) are shown on
the invite object and joined, with those roles, when the invitee accepts; one archived meanwhile is
skipped. Anything else is a 400 in OpenAI's envelope that stores and sends nothing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_admin_org import TOKEN, OrgEnv, error_of, new_user, org_env, setup_actor

from conftest import fresh_postgres

pytestmark = pytest.mark.anyio

DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    """The ``database_url`` of a fresh database of this kind ("" is the test's SQLite file)."""
    if kind == "sqlite":
        yield ""
    else:
        with fresh_postgres() as url:
            yield url


@pytest.fixture(params=DATABASES)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OrgEnv]:
    with database(request.param) as url:
        async with org_env(tmp_path, database_url=url) as instance:
            yield instance


def mails_to(env: OrgEnv, email: str) -> list[str]:
    """The bodies of the emails queued for ``email`` since the last look."""
    mails = env.container.outbox.claim_due(time.time() + 1, 1000, 60)
    return [m.body_text for m in mails if email in m.to]


async def new_project(env: OrgEnv, name: str) -> str:
    return str((await env.ok("POST", "/projects", {"name": name}))["id"])


async def test_the_invitee_joins_the_projects_named_with_their_roles(env: OrgEnv) -> None:
    alpha, beta, gamma = [await new_project(env, n) for n in ("Alpha", "Beta", "Gamma")]
    named = [
        {"id": beta, "role": "owner"},
        {"id": alpha, "role": "member"},
        {"id": gamma, "role": "member"},
    ]
    invite = await env.ok(
        "POST", "/invites", {"email": "new@example.com", "role": "reader", "projects": named}
    )
    assert invite == {
        "object": "organization.invite", "id": invite["id"], "email": "new@example.com",
        "role": "reader", "status": "pending", "invited_at": invite["invited_at"],
        "expires_at": invite["invited_at"] + 7 * 86400, "accepted_at": None, "projects": named,
    }  # fmt: skip
    assert await env.ok("GET", f"/invites/{invite['id']}") == invite
    assert invite in (await env.ok("GET", "/invites"))["data"]
    [mail] = mails_to(env, "new@example.com")
    assert (
        "as Reader, and its projects Beta (Owner), Alpha (Member) and Gamma (Member)."
        in mail.replace("\n", " ")
    )
    match = TOKEN.search(mail)
    assert match is not None

    # Gamma is archived before the invitee accepts: they join the other two, and that is all.
    await env.ok("POST", f"/projects/{gamma}/archive")
    newcomer = new_user(env.container, "new@example.com")
    env.svc.orgs.accept_invite(setup_actor(newcomer), match.group(1), newcomer.id)
    user = await env.ok("GET", f"/users/{newcomer.id}")
    assert user["role"] == "reader"
    in_beta = await env.ok("GET", f"/projects/{beta}/users/{newcomer.id}")
    assert (in_beta["object"], in_beta["email"], in_beta["role"]) == (
        "organization.project.user", "new@example.com", "owner",
    )  # fmt: skip
    assert (await env.ok("GET", f"/projects/{alpha}/users/{newcomer.id}"))["role"] == "member"
    error_of(await env.call("GET", f"/projects/{gamma}/users/{newcomer.id}"), 404)
    accepted = await env.ok("GET", f"/invites/{invite['id']}")
    assert accepted["status"] == "accepted" and accepted["projects"] == named  # as it was sent

    # Each project joined is in the audit log, as adding a member to a project is, by the invitee.
    added = (await env.ok("GET", "/audit_logs?event_types[]=project_user.added"))["data"]
    assert sorted((e["project"]["id"], e["project_user.added"]["data"]["role"]) for e in added) == (
        sorted([(beta, "owner"), (alpha, "member")])
    )
    assert {e["project_user.added"]["id"] for e in added} == {newcomer.id}
    assert {e["actor"]["session"]["user"]["email"] for e in added} == {"new@example.com"}
    [sent] = (await env.ok("GET", "/audit_logs?event_types[]=invite.sent"))["data"][:1]
    assert sent["invite.sent"]["data"] == {
        "email": "new@example.com", "role": "reader", "projects": named,
    }  # fmt: skip


async def test_without_projects_the_invitee_joins_none_and_such_invitations_can_be_withdrawn(
    env: OrgEnv,
) -> None:
    for n, projects in enumerate(([], None)):
        body = {"email": f"p{n}@example.com", "role": "owner", "projects": projects}
        assert (await env.ok("POST", "/invites", body))["projects"] == []
    plain = await env.ok("POST", "/invites", {"email": "plain@example.com", "role": "owner"})
    assert plain["projects"] == []
    [mail] = mails_to(env, "plain@example.com")
    assert "as Owner.\n" in mail
    match = TOKEN.search(mail)
    assert match is not None
    newcomer = new_user(env.container, "plain@example.com")
    env.svc.orgs.accept_invite(setup_actor(newcomer), match.group(1), newcomer.id)
    assert (await env.ok("GET", f"/users/{newcomer.id}"))["role"] == "owner"
    error_of(await env.call("GET", f"/projects/{env.project.id}/users/{newcomer.id}"), 404)

    # Withdrawn, an invitation naming projects is gone, and so is its link.
    named = [{"id": env.project.id, "role": "member"}]
    gone = await env.ok(
        "POST", "/invites", {"email": "gone@example.com", "role": "reader", "projects": named}
    )
    [mail] = mails_to(env, "gone@example.com")
    match = TOKEN.search(mail)
    assert match is not None
    assert (await env.ok("DELETE", f"/invites/{gone['id']}"))["deleted"] is True
    error_of(await env.call("GET", f"/invites/{gone['id']}"), 404)
    gone_user = new_user(env.container, "gone@example.com")
    with pytest.raises(Exception, match="invalid, used or expired"):
        env.svc.orgs.accept_invite(setup_actor(gone_user), match.group(1), gone_user.id)


async def test_bad_projects_are_refused_and_nothing_is_stored_or_sent(env: OrgEnv) -> None:
    mine = env.project.id
    archived = await new_project(env, "Old")
    await env.ok("POST", f"/projects/{archived}/archive")
    cases: list[tuple[Any, str, str]] = [  # (projects, param, part of the message)
        ([{"id": "proj_nope", "role": "member"}], "projects.0.id", "No project 'proj_nope'"),
        ([{"id": mine, "role": "member"}, {"id": env.other_project_id, "role": "owner"}],
         "projects.1.id", "No project"),  # another organization's: unknown, as everywhere
        ([{"id": archived, "role": "member"}], "projects.0.id", "'Old' is archived"),
        ([{"id": mine, "role": "member"}, {"id": mine, "role": "owner"}], "projects.1.id",
         "listed more than once"),
        ([{"id": mine, "role": "reader"}], "projects.0.role", "'member' or 'owner'"),
        ([{"id": mine, "role": "Owner"}], "projects.0.role", "'member' or 'owner'"),
        ([{"id": mine, "role": None}], "projects.0.role", "'member' or 'owner'"),
        ([{"id": mine}], "projects.0.role", "Missing required parameter"),
        ([{"role": "member"}], "projects.0.id", "Missing required parameter"),
        ([{"id": 5, "role": "member"}], "projects.0.id", "string"),
        ([{"id": [mine], "role": "member"}], "projects.0.id", "string"),
        ([{"id": mine, "role": "member", "name": "x"}], "projects.0.name", "Unrecognized"),
        ([mine], "projects.0", "Invalid value"),
        ({"id": mine, "role": "member"}, "projects", "list"),
        (mine, "projects", "list"),
        ([{"id": "proj_" + "x" * 5000, "role": "member"}], "projects.0.id", "at most 64"),
        ([{"id": "", "role": "member"}], "projects.0.id", "at least 1"),
        ([{"id": "proj_\x00", "role": "member"}], "projects.0.id", "NUL character"),
        ([{"id": f"proj_{n}", "role": "member"} for n in range(101)], "projects", "at most 100"),
    ]  # fmt: skip
    for projects, param, said in cases:
        body = {"email": "eve@example.com", "role": "reader", "projects": projects}
        error = error_of(await env.call("POST", "/invites", body), 400)
        assert (error["param"], error["type"]) == (param, "invalid_request_error"), (
            projects,
            error,
        )
        assert said in error["message"], (projects, error)
    # JSON may escape a lone surrogate, which PostgreSQL cannot store or compare.
    raw = (
        b'{"email": "eve@example.com", "role": "reader", '
        b'"projects": [{"id": "\\ud800", "role": "member"}]}'
    )
    r = await env.client.post(
        "/v1/organization/invites", content=raw,
        headers={**env.headers(), "content-type": "application/json"},
    )  # fmt: skip
    assert error_of(r, 400)["param"] == "projects.0.id"
    assert "eve@example.com" not in [i["email"] for i in (await env.ok("GET", "/invites"))["data"]]
    assert mails_to(env, "eve@example.com") == []
    events = (await env.ok("GET", "/audit_logs?event_types[]=invite.sent"))["data"]
    assert all(e["invite.sent"]["data"]["email"] != "eve@example.com" for e in events)
    # A Reader's key sends no invitation, projects or not.
    body = {
        "email": "eve@example.com",
        "role": "reader",
        "projects": [{"id": mine, "role": "owner"}],
    }
    error_of(await env.call("POST", "/invites", body, key=env.reader_key), 403)
