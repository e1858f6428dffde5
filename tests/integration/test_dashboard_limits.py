"""The dashboard's Limits page: what the organization may spend and how fast, and the Owners'
budget and notification thresholds, applied by the gateway, audited, refused to Readers."""

from __future__ import annotations

import httpx
from test_accounts_web import OWNER_PASSWORD, PASSWORD, text_of
from test_dashboard_keys import SignIn, browser_for, join, kp  # noqa: F401  (fixtures)

import kphttp
from conftest import Keyplane
from keyplane.accounts.models import OrgRole
from keyplane.audit.models import AuditFilter
from kptest import wait_until


def chat(kp: Keyplane) -> httpx.Response:  # noqa: F811
    return kphttp.post(
        kp.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 20},
        headers={"authorization": f"Bearer {kp.key}"},
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
    assert "Remove budget" not in page.text  # (none to remove)
    for typed, said in (
        ("1e3", "Enter an amount in dollars, like 10.50."),
        ("ten", "Enter an amount in dollars, like 10.50."),
        ("0.001", "The amount is finer than a cent"),
        ("-5", "The amount cannot be negative."),
        ("1000000001", "The amount must be at most $1,000,000,000.00."),
    ):
        r = owner.post("/limits/budget", {"amount": typed})
        assert r.status_code == 400 and said in text_of(r) and f'value="{typed}"' in r.text
        assert "1000000000" not in text_of(r)
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
    r = owner.post("/limits/budget", {"amount": ""})  # an emptied field does not remove it
    assert r.status_code == 400 and "use Remove budget" in text_of(r)
    assert kp.container.billing.settings(kp.org.id).budget == 1_500_000_000
    assert owner.post("/limits/budget/remove", {}).status_code == 303
    page = owner.get("/limits")
    assert "No monthly budget" in text_of(page) and "Remove budget" not in page.text
    assert kp.container.billing.settings(kp.org.id).budget is None
    wait_until(lambda: chat(kp).status_code == 200)

    for typed, said in (
        ("-5", "The amount must be between $0.01 and $1,000,000,000.00."),
        ("0", "The amount must be between $0.01 and $1,000,000,000.00."),
        ("12,50", "Enter an amount in dollars, like 10.50."),
    ):
        r = owner.post("/limits/alerts", {"amount": typed})
        assert r.status_code == 400 and said in text_of(r), (typed, text_of(r))
        owner.get("/limits")
    assert owner.post("/limits/alerts", {"amount": "$12.50"}).status_code == 303
    page = owner.get("/limits")
    assert "$12.50" in text_of(page)
    twice = owner.post("/limits/alerts", {"amount": "12.50"})  # the same threshold: refused
    assert twice.status_code == 400
    assert "A notification threshold of $12.50 exists already" in text_of(twice)
    assert "sa_" not in text_of(twice)  # (not its internal id)
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


def test_the_budget_field_shows_the_budget_and_only_remove_budget_removes_it(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    """A budget set elsewhere (the Admin API, the CLI) is in the field, so that Save keeps it; the
    explicit Remove budget removes it, audited as setting it to none is."""
    kp.container.billing.update_settings(kp.org.id, budget=25_000_000)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/limits")
    assert (
        'id="budget-amount" name="amount" type="text" inputmode="decimal" required value="25.00"'
        in (page.text)
    )
    assert "Monthly budget: $25.00" in text_of(page) and "Remove budget" in text_of(page)
    saved = owner.post("/limits/budget", {"amount": "25.00"})  # Save as shown: kept
    assert saved.status_code == 303
    assert kp.container.billing.settings(kp.org.id).budget == 25_000_000
    owner.get("/limits")
    assert owner.post("/limits/budget/remove", {}).status_code == 303
    assert kp.container.billing.settings(kp.org.id).budget is None
    page = owner.get("/limits")
    assert 'required value=""' in page.text and "Set budget" in text_of(page)
    found = kp.container.audit.query(kp.org.id, AuditFilter(event_types=["spend_limit.updated"]))
    assert found.events[0].details == {
        "before": {"threshold_amount": 2500}, "after": {"threshold_amount": None}
    }  # fmt: skip

    join(kp, "rita@example.com", OrgRole.READER)
    kp.container.billing.update_settings(kp.org.id, budget=25_000_000)
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get("/limits")
    assert "Monthly budget: $25.00" in text_of(page) and "Remove budget" not in page.text
    assert reader.post("/limits/budget/remove", {}).status_code == 403
    assert kp.container.billing.settings(kp.org.id).budget == 25_000_000


def test_the_days_criterion_says_what_it_counts(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    """Tier 1 → Tier 2 needs 7 days since the first payment: "no payment yet", then "0 days"."""
    kp.container.billing.update_settings(kp.org.id, tier="tier-1")
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    text = text_of(owner.get("/limits"))
    assert "7 days since your first successful payment: no payment yet" in text, text
    kp.container.billing.record_purchase(kp.org.id, 5_000_000)
    text = text_of(owner.get("/limits"))
    assert "7 days since your first successful payment: 0 days so far" in text
    assert "At least $50.00 paid: $5.00 so far" in text
