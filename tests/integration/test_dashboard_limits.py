"""The dashboard's Limits page: what the organization may spend and how fast, and the Owners'
budget and notification thresholds, applied by the gateway, audited, refused to Readers."""

from __future__ import annotations

import httpx
from test_accounts_web import OWNER_PASSWORD, PASSWORD, text_of
from test_dashboard_keys import SignIn, browser_for, join, kp  # noqa: F401  (fixtures)

from conftest import Keyplane
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import AuditFilter
from kptest import wait_until


def chat(kp: Keyplane) -> httpx.Response:  # noqa: F811
    return httpx.post(
        kp.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 20},
        headers={"authorization": f"Bearer {kp.key}"}, timeout=30,
    )  # fmt: skip


def test_an_owner_sets_the_budget_and_thresholds_and_the_gateway_applies_them(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/limits")
    text = text_of(page)
    assert page.status_code == 200 and "Tier 5" in text and "No monthly budget" in text
    assert "gpt-4o-mini" in text and "Requests / min" in text
    for typed, said in (("1e3", "not an amount"), ("0.001", "finer than a cent"), ("-5", "not")):
        r = owner.post("/limits/budget", {"amount": typed})
        assert r.status_code == 400 and said in text_of(r) and f'value="{typed}"' in r.text
        owner.get("/limits")
    assert owner.post("/limits/budget", {"amount": "0"}).status_code == 303
    assert "Monthly budget: $0.00" in text_of(owner.get("/limits"))
    refused = wait_until(lambda: (r := chat(kp)).status_code == 429 and r)
    assert refused.json()["error"]["code"] == "organization_spend_limit_exceeded"
    owner.get("/limits")
    assert owner.post("/limits/budget", {"amount": "1500"}).status_code == 303
    page = owner.get("/limits")  # the form shows it as it can be saved again: no "1,500.00"
    assert 'value="1500.00"' in page.text and "$1,500.00" in text_of(page)
    assert owner.post("/limits/budget", {"amount": "1500.00"}).status_code == 303
    owner.get("/limits")
    owner.post("/limits/budget", {"amount": ""})  # removed
    wait_until(lambda: chat(kp).status_code == 200)

    owner.get("/limits")
    assert owner.post("/limits/alerts", {"amount": "$12.50"}).status_code == 303
    page = owner.get("/limits")
    assert "$12.50" in text_of(page)
    twice = owner.post("/limits/alerts", {"amount": "12.50"})  # the same threshold: refused
    assert twice.status_code == 400, text_of(twice)
    [alert] = kp.container.billing.alerts(kp.org.id)
    owner.get("/limits")
    assert owner.post(f"/limits/alerts/{alert.id}/delete", {}).status_code == 303
    assert not kp.container.billing.alerts(kp.org.id)
    kinds = [e.type for e in kp.container.audit.query(kp.org.id, AuditFilter(event_types=[
        "spend_limit.updated", "spend_alert.created", "spend_alert.deleted"])).events]  # fmt: skip
    assert sorted(kinds) == sorted(
        ["spend_limit.updated"] * 4 + ["spend_alert.created", "spend_alert.deleted"]
    )


def test_a_form_shown_for_one_organization_never_changes_another(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    """Switched to another organization in another tab since the page was shown: refused."""
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    owner.get("/limits")
    r = owner.post("/limits/budget", {"amount": "1", "org_id": "org_switched_to_since"})
    assert r.status_code == 409 and "another organization" in text_of(r)
    assert kp.container.billing.settings(kp.org.id).budget is None


def test_a_reader_sees_the_limits_but_cannot_change_them(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get("/limits")
    assert page.status_code == 200 and "Usage limit" in text_of(page)
    assert 'action="/limits/budget"' not in page.text
    assert reader.post("/limits/budget", {"amount": "1"}).status_code == 403
    reader.get("/limits")
    assert reader.post("/limits/alerts", {"amount": "1"}).status_code == 403
    assert kp.container.billing.settings(kp.org.id).budget is None
