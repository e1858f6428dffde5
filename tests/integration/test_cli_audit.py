"""What the keyplane command changes is in the audit log (BRIEF C7) as the Admin API and the
dashboard record it: the same event type, target and details, by the command run by an OS user on
this machine (not by a keyplane user, whom no one signed in as)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from test_admin_org import OrgEnv, env  # noqa: F401  (fixture)
from test_cli import init, run  # noqa: F401  (fixture)

from conftest import PEPPER
from keyplane.audit.models import Actor, ActorType, AuditEvent, AuditFilter
from keyplane.cli.common import container, operator

OPERATOR = Actor(ActorType.CLI, f"ops@{socket.gethostname()}")


class Log:
    """The organization's audit log as the command left it, read through AuditService."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def new(self) -> list[AuditEvent]:
        """The events recorded since the last call, oldest first."""
        c = container()
        try:
            org_id = c.accounts.find_organization(None).id
            events = c.audit.query(org_id, AuditFilter(), limit=100).events
        finally:
            c.close()
        fresh = [e for e in reversed(events) if e.id not in self.seen]
        self.seen |= {e.id for e in fresh}
        return fresh

    def one(self, event_type: str, target: str | None, project: str | None = None) -> AuditEvent:
        """The one event since the last call, which must be ``event_type`` on ``target`` by the
        command's operator."""
        fresh = self.new()
        assert [(e.type, e.target_id, e.project_id, e.actor) for e in fresh] == [
            (event_type, target, project, OPERATOR)
        ]
        return fresh[0]


@pytest.fixture
def log(run: Any, monkeypatch: pytest.MonkeyPatch) -> Log:  # noqa: F811
    monkeypatch.setenv("LOGNAME", "ops")  # what getpass.getuser() reads first
    init(run)
    return Log()


def _json(run: Any, *args: str) -> Any:  # noqa: F811
    return json.loads(run(*args, "--json").stdout)


def test_init_audits_its_organization_owner_project_admin_key_and_welcome_credit(
    run: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOGNAME", "ops")
    init(run)
    [key] = _json(run, "keys", "list")
    [lot] = _json(run, "credits", "show")["lots"]
    events = Log().new()
    org = next(e for e in events if e.type == "organization.created")
    owner = next(e for e in events if e.type == "user.added")
    project = next(e for e in events if e.type == "project.created")
    assert sorted((e.type, e.target_id, e.actor) for e in events) == [
        ("api_key.created", key["id"], OPERATOR),
        ("credit_grant.created", lot["id"], OPERATOR),
        ("organization.created", org.org_id, OPERATOR),
        ("project.created", project.project_id, OPERATOR),
        ("user.added", owner.target_id, OPERATOR),
    ]
    assert owner.details["role"] == "owner" and project.details == {"name": "Default project"}
    grant = next(e for e in events if e.type == "credit_grant.created")
    assert grant.details == {
        "data": {"amount_micro_usd": 5_000_000, "expires_at": lot["expires_at"],
                 "note": "Welcome credit"},
    }  # fmt: skip


def test_key_commands_are_audited(run: Any, log: Log) -> None:  # noqa: F811
    log.new()
    made = _json(run, "keys", "create", "--project", "Default project", "--name", "x")
    event = log.one("api_key.created", made["id"], made["project_id"])
    assert event.details["data"]["name"] == "x" and made["value"] not in str(event.details)

    admin = _json(run, "keys", "create-admin", "--name", "a")
    assert log.one("api_key.created", admin["id"]).details["data"]["kind"] == "admin"

    run("keys", "update", made["id"], "--read-only", "--rpm", "5")
    event = log.one("api_key.updated", made["id"], made["project_id"])
    assert event.details["before"]["scopes"] == [] and event.details["after"]["scopes"] == [
        "api.all.read"
    ]
    assert event.details["after"]["rate_limits"]["rpm"] == 5

    rotated = _json(run, "keys", "rotate", made["id"], "--grace", "1h")
    event = log.one("api_key.rotated", rotated["id"], made["project_id"])
    assert event.details["data"]["rotated_from"] == made["id"]
    assert event.details["data"]["grace_period_seconds"] == 3600

    run("keys", "revoke", admin["id"])
    assert log.one("api_key.deleted", admin["id"]).details["data"]["name"] == "a"
    run("keys", "revoke", admin["id"])  # revoked already: nothing changes, nothing is recorded
    assert log.new() == []
    run("keys", "list")
    assert log.new() == []  # reading records nothing


def test_credit_budget_alert_and_billing_commands_are_audited(
    run: Any,  # noqa: F811
    log: Log,
) -> None:
    log.new()
    args = ("credits", "grant", "--amount", "2.50", "--note", "thanks", "--idempotency-key", "g")
    lot = _json(run, *args)
    event = log.one("credit_grant.created", lot["id"])
    assert event.details["data"]["amount_micro_usd"] == 2_500_000
    _json(run, *args)  # a replay grants nothing more, and records nothing more
    assert log.new() == []
    run("credits", "revoke", lot["id"])
    event = log.one("credit_grant.revoked", lot["id"])
    assert event.details == {"data": {"remaining_micro_usd": 2_500_000}}
    run("credits", "purchase", "--amount", "50")
    [bought] = [x for x in _json(run, "credits", "show")["lots"] if x["kind"] == "purchase"]
    assert log.one("credit_purchase.created", bought["id"]).details["data"]["amount_micro_usd"] == (
        50_000_000
    )

    run("budget", "set", "--amount", "0")
    event = log.one("spend_limit.updated", None)
    assert event.details == {"before": {"threshold_amount": None}, "after": {"threshold_amount": 0}}
    project = _json(run, "keys", "create", "--project", "Default project", "--name", "p")
    log.new()
    run("budget", "set", "--amount", "7.25", "--project", "Default project")
    event = log.one("spend_limit.updated", project["project_id"], project["project_id"])
    assert event.details["after"] == {"threshold_amount": 725}
    run("budget", "clear")
    assert log.one("spend_limit.updated", None).details["after"] == {"threshold_amount": None}

    run("alerts", "add", "--amount", "0.05")
    [alert] = _json(run, "alerts", "list")
    event = log.one("spend_alert.created", alert["id"])
    assert event.details == {
        "data": {"threshold_amount": 5,
                 "notification_channel": {"type": "email", "recipients": ["a@example.com"]}},
    }  # fmt: skip
    run("alerts", "remove", alert["id"])
    assert log.one("spend_alert.deleted", alert["id"]).details == {"data": {"threshold_amount": 5}}

    run("billing", "set", "--auto-recharge", "--recharge-threshold", "5",
        "--recharge-target", "20")  # fmt: skip
    event = log.one("billing_settings.updated", None)
    assert event.details["after"] == {
        "auto_recharge": {"enabled": True, "threshold_micro_usd": 5_000_000,
                          "target_micro_usd": 20_000_000},
    }  # fmt: skip
    run("billing", "show")
    assert log.new() == []


def test_rate_limit_access_and_verification_commands_are_audited(
    run: Any,  # noqa: F811
    log: Log,
) -> None:
    log.new()
    run("ratelimits", "set", "--project", "Default project", "--model", "gpt-4o-mini",
        "--rpm", "2")  # fmt: skip
    [row] = [
        r
        for r in _json(run, "ratelimits", "show", "--project", "Default project")
        if r["model"] == "gpt-4o-mini"
    ]
    project_id = _json(run, "keys", "create", "--project", "Default project", "--name", "p")[
        "project_id"
    ]
    created = log.new()
    assert [e.type for e in created] == ["rate_limit.updated", "api_key.created"]
    limit = created[0]
    assert (limit.target_id, limit.project_id, limit.actor) == (row["id"], project_id, OPERATOR)
    assert limit.details == {"after": {"max_requests_per_1_minute": 2}}

    run("access", "set", "--allow-model", "gpt-4o-mini")
    org_id = log.one("organization.updated", _org_id()).target_id
    assert org_id is not None
    run("access", "set", "--project", "Default project", "--allow-ip", "192.0.2.0/24")
    event = log.one("project.updated", project_id, project_id)
    assert event.details == {
        "before": {"allowed_ips": None},
        "after": {"allowed_ips": ["192.0.2.0/24"]},
    }

    run("orgs", "verify", "--note", "checked")
    event = log.one("organization.verification_approved", org_id)
    assert event.details["after"] == {"status": "verified", "note": "checked"}
    run("orgs", "verification")
    assert log.new() == []


def test_a_key_scan_revokes_as_the_operator(run: Any, log: Log, tmp_path: Path) -> None:  # noqa: F811
    made = _json(run, "keys", "create", "--project", "Default project", "--name", "leaky")
    log.new()
    leak = tmp_path / "leak.txt"
    leak.write_text(f"key: {made['value']}\n")
    run("scan", str(leak), "--no-history", ok=False)
    assert log.new() == []  # found, not revoked: no change
    run("scan", str(leak), "--no-history", "--revoke", ok=False)
    event = log.one("api_key.deleted", made["id"], made["project_id"])
    assert "found by keyplane scan" in event.details["reason"]


def _org_id() -> str:
    c = container()
    try:
        return c.accounts.find_organization(None).id
    finally:
        c.close()


@pytest.mark.anyio
async def test_the_admin_api_names_the_cli_actor(
    env: OrgEnv,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOGNAME", "ops")
    env.container.audit.notice(env.org.id, operator(), "spend_limit.updated")
    host = socket.gethostname()
    expected = {"type": "cli", "cli": {"id": f"ops@{host}", "os_user": "ops", "host": host}}
    [event] = (await env.ok("GET", "/audit_logs?event_types[]=spend_limit.updated"))["data"]
    assert event["actor"] == expected
    found = await env.ok("GET", f"/audit_logs?actor_ids[]=ops@{host}")
    assert [e["id"] for e in found["data"]] == [event["id"]]


@pytest.mark.anyio
async def test_a_key_update_is_audited_as_the_admin_api_audits_the_same_change(
    env: OrgEnv,  # noqa: F811
    run: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOGNAME", "ops")
    monkeypatch.setenv("KEYPLANE_PEPPER", PEPPER)  # the command opens env's data directory
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", "e" * 48)
    keys = f"/projects/{env.project.id}/api_keys"
    by_cli, by_api = [(await env.ok("POST", keys, {"name": "bot"}))["id"] for _ in range(2)]
    run("keys", "update", by_cli, "--org", env.org.name, "--name", "ci", "--scope", "chat.write",
        "--allow-model", "gpt-4o-mini", "--allow-ip", "192.0.2.0/24", "--rpm", "5")  # fmt: skip
    await env.ok("POST", f"{keys}/{by_api}", {
        "name": "ci", "scopes": ["chat.write"], "allowed_models": ["gpt-4o-mini"],
        "allowed_ips": ["192.0.2.0/24"], "max_requests_per_1_minute": 5,
    })  # fmt: skip
    events = (await env.ok("GET", "/audit_logs?event_types[]=api_key.updated"))["data"]
    by_target = {e["api_key.updated"]["id"]: e for e in events}
    assert set(by_target) == {by_cli, by_api}
    cli, api = by_target[by_cli], by_target[by_api]
    assert cli["actor"]["type"] == "cli" and api["actor"]["type"] == "api_key"

    def shape(event: dict[str, Any]) -> dict[str, Any]:
        """The event without what differs by nature: its id, time, actor and target."""
        kept = {k: v for k, v in event.items() if k not in ("id", "effective_at", "actor")}
        return {**kept, "api_key.updated": {**event["api_key.updated"], "id": "(the key)"}}

    assert shape(cli) == shape(api)
    assert cli["api_key.updated"]["before"]["rate_limits"] == {
        "rpm": None,
        "tpm": None,
        "rpd": None,
    }
    assert cli["api_key.updated"]["after"]["rate_limits"]["rpm"] == 5
