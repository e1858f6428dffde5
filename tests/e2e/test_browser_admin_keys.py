"""The Admin keys page in a real headless browser (Debian's Chromium through Playwright), as a
person uses it: from the navigation to a new admin key, its secret shown once and copied with the
Copy button, the key calling the Admin API, then revoked after a confirmation."""

from __future__ import annotations

from test_browser import browser, copied, copying_page, follow, kp  # noqa: F401  (fixtures)

import kphttp
from conftest import Keyplane
from kptest import wait_until


def test_create_an_admin_key_copy_it_call_the_admin_api_and_revoke_it(
    browser: object,  # noqa: F811
    kp: Keyplane,  # noqa: F811
) -> None:
    base = kp.server.url
    page = copying_page(browser, base)
    follow(page, base, "Admin keys", "/admin-keys")
    page.get_by_role("link", name="Create new admin key").click()
    page.fill("input[name=name]", "ops <b>bot</b>")
    page.get_by_role("button", name="Create admin key").click()
    page.get_by_role("heading", name="Save your key").wait_for()
    secret = page.input_value("#secret")
    assert secret.startswith("sk-kp-admin-") and len(secret) == len("sk-kp-admin-") + 50
    assert copied(page) == secret

    users = base + "/v1/organization/users"
    auth = {"authorization": f"Bearer {secret}"}
    answer = kphttp.get(users, headers=auth)
    assert answer.status_code == 200 and answer.json()["data"][0]["email"] == kp.owner.email

    page.get_by_role("link", name="Done").click()
    page.wait_for_url(base + "/admin-keys")
    assert secret not in page.content()
    row = page.get_by_role("row").filter(has_text="ops <b>bot</b>")
    assert secret[-4:] in row.inner_text() and kp.owner.email in row.inner_text()
    row.get_by_role("link", name="Revoke").click()
    page.get_by_role("heading", name="Revoke admin key").wait_for()
    page.get_by_role("button", name="Revoke key").click()
    page.wait_for_url(base + "/admin-keys?revoked=*")
    notice = page.get_by_role("status").inner_text()
    assert (
        notice
        == f"sk-kp-admin-…{secret[-4:]} is revoked: every gateway refuses it within a second."
    )
    assert "ops <b>bot</b>" not in page.inner_text("main")
    wait_until(lambda: kphttp.get(users, headers=auth).status_code == 401, timeout=1.0)
    page.context.close()
