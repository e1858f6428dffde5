"""The dashboard's Projects and Billing pages: projects created, renamed, staffed and archived as
the Admin API allows each role, audited alike; the billing overview adds up to the ledger."""

from __future__ import annotations

from test_accounts_web import OWNER_PASSWORD, PASSWORD, text_of
from test_dashboard_keys import SignIn, browser_for, join, kp  # noqa: F401  (fixtures)

import kphttp
from conftest import Keyplane
from keyplane.accounts.models import OrgRole
from keyplane.accounts.org_ports import ProjectRole
from keyplane.audit.models import Actor, ActorType, AuditFilter
from keyplane.usage.pricing import format_cents, format_usd
from kptest import wait_until


def test_an_owner_creates_staffs_renames_and_archives_a_project(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    rita = join(kp, "rita@example.com", OrgRole.READER)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/projects")
    assert kp.project.name in text_of(page)
    r = owner.post("/projects", {"name": "a\u202eb"})
    assert r.status_code == 400 and "control characters" in text_of(r)
    owner.get("/projects")
    r = owner.post("/projects", {"name": "Research <lab>"})
    assert r.status_code == 303
    pid = r.headers["location"].rsplit("/", 1)[1]
    page = owner.get(f"/projects/{pid}")
    assert "Research &lt;lab&gt;" in page.text and "rita@example.com" in page.text
    assert owner.post(f"/projects/{pid}/members",
                      {"user_id": rita.id, "role": "member"}).status_code == 303  # fmt: skip
    assert kp.container.orgs.project_role(kp.org.id, pid, rita.id) is ProjectRole.MEMBER
    owner.get(f"/projects/{pid}")
    assert owner.post(f"/projects/{pid}/name", {"name": "Research"}).status_code == 303
    assert kp.container.orgs.project(kp.org.id, pid).name == "Research"
    # Rita, a Reader and a Member of it, changes nothing there (BRIEF C1); a key she owns (made
    # for her) stops working when she is removed.
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get(f"/projects/{pid}")
    assert 'action="/projects/' not in page.text  # nothing she may change here
    assert reader.get("/api-keys/new").status_code == 403
    setup = Actor(ActorType.SESSION, "sess_setup", user_id=kp.owner.id, email=kp.owner.email)
    _, secret = kp.container.orgs.create_project_key(setup, kp.org.id, pid, "rita's", rita.id)
    # The project's budget is shown and set here (a project whose requests stop says why).
    owner.get(f"/projects/{pid}")
    assert owner.post(f"/projects/{pid}/budget", {"amount": "2.50"}).status_code == 303
    assert "Monthly budget: $2.50" in text_of(owner.get(f"/projects/{pid}"))
    assert kp.container.billing.project_budget(pid) == 2_500_000
    assert owner.post(f"/projects/{pid}/budget", {"amount": "1e3"}).status_code == 400
    page = owner.get(f"/projects/{pid}")  # in its field (Save keeps it), removed on purpose only
    assert 'required value="2.50"' in page.text and "Remove budget" in text_of(page)
    emptied = owner.post(f"/projects/{pid}/budget", {"amount": ""})
    assert emptied.status_code == 400 and "use Remove budget" in text_of(emptied)
    assert kp.container.billing.project_budget(pid) == 2_500_000
    owner.get(f"/projects/{pid}")
    assert owner.post(f"/projects/{pid}/budget/remove", {}).status_code == 303
    assert kp.container.billing.project_budget(pid) is None
    assert "No monthly budget for this project" in text_of(owner.get(f"/projects/{pid}"))
    confirm = owner.get(f"/projects/{pid}/members/{rita.id}/remove")  # asks first
    assert "rita@example.com leaves this project" in text_of(confirm)
    call = lambda: kphttp.get(kp.base_url + "/models",  # noqa: E731
                              headers={"authorization": f"Bearer {secret}"})  # fmt: skip
    assert call().status_code == 200
    assert owner.post(f"/projects/{pid}/members/{rita.id}/remove", {}).status_code == 303
    wait_until(lambda: call().status_code == 401, timeout=2)
    asked = text_of(owner.get(f"/projects/{pid}/archive"))  # asks first, naming the project
    assert "Archive the project “Research”?" in asked and "cannot be undone" in asked
    assert owner.post(f"/projects/{pid}/archive", {}).status_code == 303
    assert kp.container.orgs.project(kp.org.id, pid).archived_at is not None
    assert "Archived" in text_of(owner.get("/projects"))
    owner.get(f"/projects/{pid}")
    assert owner.post(f"/projects/{pid}/name", {"name": "Again"}).status_code == 403
    kinds = {e.type for e in kp.container.audit.query(kp.org.id, AuditFilter()).events}
    assert {"project.created", "project.updated", "project_user.added", "project_user.deleted",
            "project.archived"} <= kinds  # fmt: skip


def test_a_reader_cannot_create_archive_or_staff_projects(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    rita = join(kp, "rita@example.com", OrgRole.READER)
    reader = browser_for("rita@example.com", PASSWORD)
    page = reader.get("/projects")
    assert page.status_code == 200 and 'action="/projects"' not in page.text
    assert reader.post("/projects", {"name": "Mine"}).status_code == 403
    pid = kp.project.id
    for path, form in ((f"/projects/{pid}/archive", {}), (f"/projects/{pid}/name", {"name": "x"}),
                       (f"/projects/{pid}/budget", {"amount": "1"}),
                       (f"/projects/{pid}/budget/remove", {}),
                       (f"/projects/{pid}/members", {"user_id": rita.id, "role": "owner"})):  # fmt: skip
        reader.get("/projects")
        assert reader.post(path, form).status_code == 403, path
    assert reader.get("/projects/proj_elsewhere").status_code == 404
    assert kp.container.orgs.project(kp.org.id, pid).archived_at is None


def test_billing_shows_the_balance_and_the_credit_lots(
    kp: Keyplane,  # noqa: F811
    browser_for: SignIn,  # noqa: F811
) -> None:
    kp.container.billing.grant(kp.org.id, 2_500_000, note="<b>promo</b>")
    kp.server.call(kp.gateway.pipeline.money.refresh())
    r = kphttp.post(
        kp.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 200
    kp.usage(expect=1)
    balance = kp.container.billing.balance(kp.org.id)
    owner = browser_for("owner@example.com", OWNER_PASSWORD)
    page = owner.get("/billing")
    text = text_of(page)
    assert balance.available % 10_000  # (a request's cost: not whole cents)
    # In cents, rounded down (never more than there is); the exact figure in its tooltip.
    assert f"Credit balance: ${format_cents(balance.available)}" in text
    assert f'title="Exactly ${format_usd(balance.available)}"' in page.text
    assert (
        "&lt;b&gt;promo&lt;/b&gt;" in page.text and "$2.50" in text
        and "Auto recharge is off" in text
    )  # fmt: skip
