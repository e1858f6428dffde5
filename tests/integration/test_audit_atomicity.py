"""No change without its audit entry (BRIEF C9): a change and the entry that tells of it are one
transaction. When the database refuses the entry, the change is not made either and whoever asked
is told: the Admin API answers 503 in OpenAI's envelope, the dashboard its error page, the command
its one-line error. Once the entry can be written, the same request makes the change and records
it. On SQLite and PostgreSQL, the database itself refusing the audit log's rows."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from test_accounts_web import OWNER_PASSWORD, Browser, text_of
from test_admin_org import OrgEnv, error_of, org_env
from test_cli import init, run  # noqa: F401  (fixture)

import kphttp
from conftest import Start, fresh_postgres
from keyplane.audit.models import AuditFilter
from keyplane.cli.common import container


@contextlib.contextmanager
def audit_log_down(engine: Engine) -> Iterator[None]:
    """Every new row of the audit log is refused by the database with an error of its own (a full
    disk on PostgreSQL; on SQLite, a function it does not know), as keyplane would meet one."""
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        if postgres:
            conn.exec_driver_sql(
                "CREATE FUNCTION kp_audit_down() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'no space left on device' USING ERRCODE = 'disk_full'; "
                "END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER kp_audit_down BEFORE INSERT ON audit_events "
                "FOR EACH ROW EXECUTE FUNCTION kp_audit_down()"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER kp_audit_down BEFORE INSERT ON audit_events "
                "BEGIN SELECT kp_audit_down(); END"
            )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "DROP TRIGGER kp_audit_down" + (" ON audit_events" if postgres else "")
            )


def event_types(container: Any, org_id: str) -> list[str]:
    return [e.type for e in container.audit.query(org_id, AuditFilter(), limit=100).events]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OrgEnv]:
    with contextlib.ExitStack() as stack:
        url = "" if request.param == "sqlite" else stack.enter_context(fresh_postgres())
        async with org_env(tmp_path, database_url=url) as instance:
            yield instance


@pytest.mark.anyio
async def test_an_admin_api_change_whose_entry_cannot_be_written_is_not_made(env: OrgEnv) -> None:
    c, org_id, pid = env.container, env.org.id, env.project.id
    logged = event_types(c, org_id)
    role = ("POST", f"/users/{env.reader.id}", {"role": "owner"})  # OrgService's own unit
    budget = ("POST", "/spend_limit", {"threshold_amount": 1000})  # the route's unit
    key = ("POST", f"/projects/{pid}/api_keys", {"name": "audited key"})  # one inside another
    with audit_log_down(c.engine):
        for method, path, body in (role, budget, key):
            error = error_of(await env.call(method, path, body), 503)
            assert (
                error["message"] == "keyplane cannot reach its database right now; retry shortly."
            )
    assert c.orgs.get_member(org_id, env.reader.id).role.value == "reader"
    assert c.billing.settings(org_id).budget is None
    assert "audited key" not in {k.name for k in c.keys.list(org_id)}
    assert event_types(c, org_id) == logged

    for method, path, body in (role, budget, key):
        await env.ok(method, path, body)
    assert c.orgs.get_member(org_id, env.reader.id).role.value == "owner"
    assert c.billing.settings(org_id).budget == 10_000_000
    assert "audited key" in {k.name for k in c.keys.list(org_id)}
    assert event_types(c, org_id)[:3] == ["api_key.created", "spend_limit.updated", "user.updated"]


def test_a_dashboard_change_or_sign_in_whose_entry_cannot_be_written_is_not_made(
    start: Start,
) -> None:
    kp = start(credit=0)
    owner = Browser(kphttp.Client(base_url=kp.server.url, follow_redirects=False))
    stranger = Browser(kphttp.Client(base_url=kp.server.url, follow_redirects=False))
    try:
        owner.log_in_named("owner@example.com", OWNER_PASSWORD)
        logged = event_types(kp.container, kp.org.id)
        owner.get("/limits")
        with audit_log_down(kp.container.engine):
            r = owner.post("/limits/budget", {"amount": "50"})
            assert r.status_code == 503 and "cannot reach its database" in text_of(r)
            # A sign-in that would not be on record opens no session.
            r = stranger.log_in("owner@example.com", OWNER_PASSWORD)
            assert r.status_code == 503 and "cannot reach its database" in text_of(r)
        assert kp.container.billing.settings(kp.org.id).budget is None
        assert event_types(kp.container, kp.org.id) == logged
        assert stranger.get("/").headers["location"].startswith("/login")

        owner.get("/limits")
        assert owner.post("/limits/budget", {"amount": "50"}).status_code == 303
        assert kp.container.billing.settings(kp.org.id).budget == 50_000_000
        assert stranger.log_in("owner@example.com", OWNER_PASSWORD).status_code == 303
        assert event_types(kp.container, kp.org.id)[:2] == [
            "login.succeeded",
            "spend_limit.updated",
        ]
    finally:
        owner.close()
        stranger.close()


def test_a_commands_change_whose_entry_cannot_be_written_is_not_made(run: Any) -> None:  # noqa: F811
    init(run)
    c = container()
    try:
        org_id = c.accounts.find_organization(None).id
        logged = event_types(c, org_id)
        create = ("keys", "create", "--project", "Default project", "--name", "audited key")
        with audit_log_down(c.engine):
            failed = run(*create, ok=False)
        assert failed.exit_code == 1
        assert failed.output.strip() == "error: The database is unavailable."
        assert "audited key" not in {k.name for k in c.keys.list(org_id)}
        assert event_types(c, org_id) == logged
        run(*create)
        assert "audited key" in {k.name for k in c.keys.list(org_id)}
        assert event_types(c, org_id)[0] == "api_key.created"
    finally:
        c.close()
