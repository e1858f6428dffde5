"""The dashboard's Audit log page: the organization's events, newest first, a page at a time,
with who did what from where; hostile text in them is shown as text."""

from __future__ import annotations

import re

from test_accounts_web import OWNER_PASSWORD, text_of
from test_dashboard_keys import SignIn, browser_for, kp  # noqa: F401  (fixtures)

from conftest import Keyplane
from keyplane.audit.models import Actor, ActorType, AuditFilter


def test_the_audit_log_pages_through_events_newest_first_and_filters_by_type(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    api = Actor(ActorType.API_KEY, "key_admin1", user_id=kp.owner.id, email=kp.owner.email,
                ip_address="203.0.113.7")  # fmt: skip
    for i in range(55):
        kp.container.orgs.create_project_key(
            api, kp.org.id, kp.project.id, f"<b>key {i}</b>", kp.owner.id
        )
    owner = browser_for("owner@example.com", OWNER_PASSWORD)  # (a login.succeeded event too)
    page = owner.get("/audit-log")
    text = text_of(page)
    assert page.status_code == 200 and "login.succeeded" in text
    assert "owner@example.com (API key key_admin1)" in text and "203.0.113.7" in text
    assert "<b>key 54</b>" not in page.text and "&lt;b&gt;key 54&lt;/b&gt;" in page.text
    assert "&lt;b&gt;key 4&lt;/b&gt;" not in page.text  # the oldest are on the next page
    older = re.search(r'href="(/audit-log\?[^"]*after=[^"]+)"', page.text)
    assert older is not None
    second = owner.get(older.group(1).replace("&amp;", "&")).text
    assert "&lt;b&gt;key 4&lt;/b&gt;" in second and "&lt;b&gt;key 54&lt;/b&gt;" not in second
    only = text_of(owner.get("/audit-log?event_type=login.succeeded"))
    assert "login.succeeded" in only and "api_key.created" not in only


def test_the_audit_log_names_the_cli_and_records_a_profile_name_change(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    cli = Actor(ActorType.CLI, "root@build-host")  # what `keyplane` commands record
    kp.container.audit.notice(kp.org.id, cli, "spend_limit.updated")
    owner = browser_for("owner@example.com", OWNER_PASSWORD)  # names themselves Olive
    renames = AuditFilter(event_types=["user.updated"])
    before = kp.container.audit.query(kp.org.id, renames).events
    owner.get("/profile")
    assert owner.post("/profile", {"name": "Olive Oyl"}).status_code == 303
    owner.get("/profile")
    owner.post("/profile", {"name": "Olive Oyl"})  # the same name: no change, no event
    after = kp.container.audit.query(kp.org.id, renames).events
    assert len(after) == len(before) + 1
    renamed = after[0]
    assert (renamed.target_id, renamed.actor.type, renamed.actor.user_id) == (
        kp.owner.id, ActorType.SESSION, kp.owner.id,
    )  # fmt: skip
    assert renamed.details == {"before": {"name": "Olive"}, "after": {"name": "Olive Oyl"}}
    text = text_of(owner.get("/audit-log"))
    assert "keyplane CLI (user root on build-host)" in text
    assert "user.updated" in text and "Olive Oyl" in text


def test_details_read_as_changes_and_money_in_dollars(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    cli = Actor(ActorType.CLI, "root@build-host")
    audit = kp.container.audit
    audit.notice(kp.org.id, cli, "spend_limit.updated",
                 details={"before": {"threshold_amount": None}, "after": {"threshold_amount": 2000}})  # fmt: skip
    audit.notice(kp.org.id, cli, "billing_settings.updated", details={
        "before": {"auto_recharge": {"enabled": False, "target_micro_usd": 20_000_000}},
        "after": {"auto_recharge": {"enabled": True, "target_micro_usd": 25_500_000}},
    })  # fmt: skip
    audit.notice(kp.org.id, cli, "api_key.created",
                 details={"data": {"name": "ci", "scopes": [], "allowed_ips": ["10.0.0.0/8"]}})  # fmt: skip
    audit.notice(kp.org.id, Actor(ActorType.SYSTEM, "auto-recharge"), "credit_purchase.created")
    page = browser_for("owner@example.com", OWNER_PASSWORD).get("/audit-log")
    assert "keyplane (auto-recharge)" in text_of(page)
    lines = re.findall(r"<div>([^<]*)</div>", page.text)
    assert "threshold_amount: none → $20.00" in lines
    assert "auto_recharge.enabled: no → yes" in lines
    assert "auto_recharge.target_micro_usd: $20.00 → $25.50" in lines
    assert {"name: ci", "scopes: none", "allowed_ips: 10.0.0.0/8"} <= set(lines)
