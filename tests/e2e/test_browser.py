"""The dashboard in a real headless browser (Debian's Chromium through Playwright): what a person
does, including the CSRF and cookie handling that only a browser exercises for real."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import IN_CI, Keyplane, start_keyplane
from kptest import ServerThread, wait_until

CHROMIUM = os.environ.get("KEYPLANE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        if IN_CI:
            pytest.fail(f"Chromium is required in CI at {CHROMIUM} (apt-get install chromium)")
        pytest.skip("Chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def kp(tmp_path: Path, simulator: ServerThread) -> Iterator[Keyplane]:
    instance = start_keyplane(tmp_path, simulator.url + "/v1")
    yield instance
    instance.server.stop()
    instance.container.close()


def test_log_in_complete_the_profile_and_log_out_by_keyboard(browser: object, kp: Keyplane) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    base = kp.server.url
    page.goto(base + "/")
    assert page.url.endswith("/login") or "/login" in page.url  # signed out: sent to log in
    page.fill("input[name=email]", "owner@example.com")
    page.fill("input[name=password]", "correct horse battery")
    page.keyboard.press("Enter")  # the form works from the keyboard
    page.wait_for_url(base + "/profile")
    page.fill("input[name=name]", "Ada Owner")
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/")
    assert "Welcome, Ada Owner" in page.inner_text("main")
    assert "your role: Owner" in page.inner_text("main")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["kp_session"]["httpOnly"] and cookies["kp_session"]["sameSite"] == "Lax"
    page.get_by_role("button", name="Log out").or_(
        page.get_by_role("link", name="Log out")
    ).first.click()
    page.goto(base + "/")
    assert "/login" in page.url


def test_a_wrong_password_is_refused_without_saying_which_part_was_wrong(
    browser: object, kp: Keyplane
) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(kp.server.url + "/login")
    page.fill("input[name=email]", "owner@example.com")
    page.fill("input[name=password]", "not the password at all")
    with page.expect_navigation():  # (the refusal's page, not the form still shown before it)
        page.keyboard.press("Enter")
    text = page.inner_text("main")
    assert "/login" in page.url and "incorrect" in text.lower()
    page.fill("input[name=email]", "nobody@example.com")
    page.fill("input[name=password]", "not the password at all")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.inner_text("main") == text


def log_in(page: object, base: str) -> None:
    page.goto(base + "/login")  # type: ignore[attr-defined]
    page.fill("input[name=email]", "owner@example.com")  # type: ignore[attr-defined]
    page.fill("input[name=password]", "correct horse battery")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    page.wait_for_url(base + "/profile")  # type: ignore[attr-defined]
    page.fill("input[name=name]", "Ada Owner")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    page.wait_for_url(base + "/")  # type: ignore[attr-defined]


def copying_page(browser: object, base: str) -> Any:
    """A new page signed in as the Owner, that may read and write the clipboard (Copy buttons)."""
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])  # type: ignore[attr-defined]
    page = context.new_page()
    log_in(page, base)
    return page


def follow(page: Any, base: str, link: str, path: str) -> None:
    """Follows the first link named ``link`` (the main navigation's, on a page that repeats it)
    to ``path``."""
    page.get_by_role("link", name=link).first.click()
    page.wait_for_url(base + path)


def copied(page: Any) -> str:
    """Clicks the Copy button of a secret shown once; returns what it put on the clipboard."""
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied.").wait_for()
    return str(page.evaluate("navigator.clipboard.readText()"))


def test_create_a_key_copy_it_once_use_it_and_revoke_it(browser: object, kp: Keyplane) -> None:
    """The guide's screens: API keys → Create new secret key → the secret shown once with Copy →
    it works from the SDK → Revoke → it is refused."""
    base = kp.server.url
    page = copying_page(browser, base)
    follow(page, base, "API keys", "/api-keys")
    page.get_by_role("link", name="Create new secret key").click()
    page.fill("input[name=name]", "browser <b>key</b>")
    page.get_by_label("Read only").check()
    page.get_by_role("button", name="Create secret key").click()
    assert "Save your key" in page.inner_text("main")
    secret = page.input_value("#secret")
    assert secret.startswith("sk-kp-proj-") and len(secret) == len("sk-kp-proj-") + 50
    assert copied(page) == secret

    client = openai.OpenAI(base_url=kp.base_url, api_key=secret, max_retries=0)
    assert [m.id for m in client.models.list()]  # Read only: models may be listed
    with pytest.raises(openai.AuthenticationError, match=r"Missing scopes: chat\.write"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )

    page.get_by_role("link", name="Done").click()
    page.wait_for_url(base + "/api-keys")
    listing = page.inner_text("main")
    assert "browser <b>key</b>" in listing and secret not in page.content()
    row = page.get_by_role("row").filter(has_text="browser <b>key</b>")
    assert "Read only" in row.inner_text() and secret[-4:] in row.inner_text()
    row.get_by_role("link", name="Revoke").click()
    page.get_by_role("button", name="Revoke key").click()
    page.wait_for_url(base + "/api-keys?revoked=*")
    assert "browser <b>key</b>" not in page.inner_text("main")
    notice = page.get_by_role("status").inner_text()
    assert (
        notice == f"sk-kp-proj-…{secret[-4:]} is revoked: every gateway refuses it within a second."
    )

    def refused() -> bool:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return True
        return False

    wait_until(refused, timeout=1.0)  # every gateway refuses a revoked key within a second
    page.context.close()


def test_rotate_a_key_copy_its_new_secret_and_the_old_one_works_out_its_grace(
    browser: object, kp: Keyplane
) -> None:
    """API keys → Rotate on a key's row → a grace period → the new secret shown once with Copy,
    saying until when the old one works → both work meanwhile → the list shows the old one as
    rotated, with no Rotate action left on it."""
    base = kp.server.url
    page = copying_page(browser, base)
    page.get_by_role("link", name="API keys").first.click()
    page.wait_for_url(base + "/api-keys")
    old_row = page.get_by_role("row").filter(has_text=kp.key[-4:])
    old_row.get_by_role("link", name="Rotate").click()
    page.get_by_role("heading", name="Rotate secret key").wait_for()
    page.get_by_label("1 hour").check()
    page.get_by_role("button", name="Rotate key").click()
    page.get_by_role("heading", name="Save your new key").wait_for()
    assert "The old secret keeps working until" in page.inner_text("main")
    secret = page.input_value("#secret")
    assert secret.startswith("sk-kp-proj-") and secret != kp.key
    assert copied(page) == secret
    for key in (secret, kp.key):  # the old one in its grace period
        with openai.OpenAI(base_url=kp.base_url, api_key=key, max_retries=0) as client:
            assert [m.id for m in client.models.list()]

    page.get_by_role("link", name="Done").click()
    page.wait_for_url(base + "/api-keys")
    assert secret not in page.content()
    assert "Rotated · stops" in old_row.inner_text()
    assert old_row.get_by_role("link", name="Rotate").count() == 0
    new_row = page.get_by_role("row").filter(has_text=secret[-4:])
    assert "test key" in new_row.inner_text() and new_row.get_by_role("link", name="Rotate").count()
    page.context.close()


def test_edit_a_key_to_read_only_and_the_sdk_is_refused_chat(browser: object, kp: Keyplane) -> None:
    """API keys → Edit on a key's row → the form shows the key as it is → rename it and make it
    Read only → Save → the list says so, and the same secret, from the SDK, lists models but is
    refused chat within a second."""
    page = browser.new_page()  # type: ignore[attr-defined]
    base = kp.server.url
    log_in(page, base)
    with openai.OpenAI(base_url=kp.base_url, api_key=kp.key, max_retries=0) as client:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert client.chat.completions.create(**chat).choices  # type: ignore[call-overload]
        page.get_by_role("link", name="API keys").first.click()
        page.wait_for_url(base + "/api-keys")
        page.get_by_role("row").filter(has_text=kp.key[-4:]).get_by_role(
            "link", name="Edit"
        ).click()
        page.get_by_role("heading", name="Edit secret key").wait_for()
        assert page.input_value("#key-name") == "test key"
        assert page.get_by_label("All", exact=True).is_checked()
        page.fill("#key-name", "read-only key")
        page.get_by_label("Read only").check()
        page.get_by_role("button", name="Save").click()
        page.wait_for_url(base + "/api-keys?updated=*")
        assert page.get_by_role("status").inner_text().startswith("read-only key (sk-kp-proj-…")
        row = page.get_by_role("row").filter(has_text=kp.key[-4:])
        assert "read-only key" in row.inner_text() and "Read only" in row.inner_text()

        def refused() -> bool:
            try:
                client.chat.completions.create(**chat)  # type: ignore[call-overload]
            except openai.AuthenticationError as exc:
                return "Missing scopes: chat.write" in str(exc)
            return False

        wait_until(refused, timeout=1.0)  # every gateway applies the change within a second
        assert [m.id for m in client.models.list()]
    page.close()


def test_lower_a_keys_requests_per_minute_and_the_sdk_gets_rate_limited(
    browser: object, kp: Keyplane
) -> None:
    """API keys → Edit → Requests per minute 2 → Save → the list shows the key's limit, and the
    SDK's third request within the minute is a RateLimitError naming the key's limit."""
    page = browser.new_page()  # type: ignore[attr-defined]
    base = kp.server.url
    log_in(page, base)
    page.goto(base + "/api-keys")
    page.get_by_role("row").filter(has_text=kp.key[-4:]).get_by_role("link", name="Edit").click()
    page.get_by_role("heading", name="Edit secret key").wait_for()
    assert page.get_by_label("Requests per minute").input_value() == ""
    page.get_by_label("Requests per minute").fill("2")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(base + "/api-keys?updated=*")
    row = page.get_by_role("row").filter(has_text=kp.key[-4:])
    assert "Limits: 2 RPM" in row.inner_text()
    with openai.OpenAI(base_url=kp.base_url, api_key=kp.key, max_retries=0) as client:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

        def limited() -> str:
            try:
                client.chat.completions.create(**chat)  # type: ignore[call-overload]
            except openai.RateLimitError as exc:
                return str(exc)
            return ""

        message = wait_until(limited, timeout=1.0)  # applied within a second
        assert "on requests per min (RPM): Limit 2, Used 2" in message
    page.close()


def test_add_a_card_buy_credit_and_see_the_balance(browser: object, kp: Keyplane) -> None:
    """The guide's Billing screens: Payment methods → Add payment details → Overview → Add to
    credit balance → Configure payment ($10) → Confirm payment → the new balance and the charge."""
    page = browser.new_page()  # type: ignore[attr-defined]
    base = kp.server.url
    log_in(page, base)
    page.get_by_role("link", name="Billing").first.click()
    page.wait_for_url(base + "/billing")
    assert "Credit balance: $5.00" in page.inner_text("main")
    page.get_by_role("navigation", name="Billing").get_by_role(
        "link", name="Payment methods"
    ).click()
    page.get_by_role("link", name="Add payment details").click()
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    expiry = f"12 / {(dt.datetime.now(dt.UTC).year + 3) % 100:02d}"
    page.get_by_label("Expiration date (MM / YY)").fill(expiry)
    page.get_by_label("Security code (CVC)").fill("123")
    page.get_by_role("button", name="Add card").click()
    page.wait_for_url(base + "/billing/payment-methods?added=*")
    assert "Visa •••• 4242 Default" in page.inner_text("main")
    assert "4242 4242 4242 4242" not in page.content()

    page.get_by_role("navigation", name="Billing").get_by_role("link", name="Overview").click()
    page.get_by_role("link", name="Add to credit balance").click()
    page.get_by_label("Credit to add ($)").fill("10")
    page.keyboard.press("Enter")  # Continue, from the keyboard
    page.wait_for_url(base + "/billing/purchase/confirm?*")
    assert "$10.00" in page.inner_text("main") and "Visa •••• 4242" in page.inner_text("main")
    page.get_by_role("button", name="Confirm payment").click()
    page.wait_for_url(base + "/billing?paid=*")
    main = page.inner_text("main")
    assert "your credit balance is now $15.00" in main and "Credit balance: $15.00" in main
    page.get_by_role("link", name="Billing history").first.click()
    page.wait_for_url(base + "/billing/history")
    assert "Credit purchase" in page.inner_text("main") and "Succeeded" in page.inner_text("main")


def test_set_the_low_balance_alert_by_keyboard_and_see_a_bad_amount_refused(
    browser: object, kp: Keyplane, tmp_path: Path
) -> None:
    """Billing → Overview's "Email me when my credit balance falls below ($)": a bad amount is
    refused next to the field (focus stays usable), a good one is saved and said."""
    page = browser.new_page()  # type: ignore[attr-defined]
    base = kp.server.url
    log_in(page, base)
    page.goto(base + "/billing")
    field = page.get_by_label("Email me when my credit balance falls below ($)")
    field.fill("0.50")
    field.press("Enter")
    page.wait_for_load_state()
    assert "The amount must be between $1.00 and $100,000.00." in page.inner_text("main")
    assert (
        page.get_by_label("Email me when my credit balance falls below ($)").get_attribute(
            "aria-invalid"
        )
        == "true"
    )
    field = page.get_by_label("Email me when my credit balance falls below ($)")
    field.fill("2.50")
    field.press("Enter")
    page.wait_for_url(base + "/billing#low-balance-alert")
    section = page.locator("#low-balance-alert").inner_text()
    assert "The low balance alert is on: when your credit balance falls below $2.50" in section
    page.locator("#low-balance-alert").screenshot(path=str(tmp_path / "low-balance.png"))
    assert kp.container.billing.settings(kp.org.id).low_balance_alert == 2_500_000
    page.close()


def test_add_a_webhook_endpoint_and_see_its_signing_secret_once(
    browser: object, kp: Keyplane
) -> None:
    """Webhooks → Add endpoint (a URL, events ticked by their label, a description) → the signing
    secret shown once, with how deliveries are signed → Done → the list, without the secret."""
    page = browser.new_page()  # type: ignore[attr-defined]
    base = kp.server.url
    log_in(page, base)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    page.wait_for_url(base + "/webhooks")
    assert "No webhook endpoints yet" in page.inner_text("main")
    page.get_by_role("link", name="Add endpoint").click()
    page.wait_for_url(base + "/webhooks/new")
    page.get_by_label("Endpoint URL").fill("https://hooks.example/keyplane")
    page.get_by_label("api_key.leaked").check()
    page.get_by_label("spend_alert.triggered").check()
    page.get_by_label("Description").fill("On-call <pager>")
    page.get_by_role("button", name="Add endpoint").click()
    page.get_by_role("heading", name="Save your signing secret").wait_for()
    main = page.inner_text("main")
    assert "you won't be able to view it again" in main and "Keyplane-Signature" in main
    secret = page.input_value("#secret")
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 43
    [endpoint] = kp.container.webhooks.endpoints(kp.org.id)
    assert endpoint.events == ("api_key.leaked", "spend_alert.triggered")

    page.get_by_role("link", name="Done").click()
    page.wait_for_url(base + "/webhooks")
    listing = page.inner_text("main")
    assert "https://hooks.example/keyplane" in listing and "On-call <pager>" in listing
    assert secret not in page.content()
    page.reload()
    assert secret not in page.content() and "whsec_" not in page.content()


def test_the_admin_api_docs_render_with_no_internet_access(browser: object, kp: Keyplane) -> None:
    """/docs draws every Admin API operation with only keyplane's own origin reachable."""
    page = browser.new_page()  # type: ignore[attr-defined]
    base = kp.server.url
    elsewhere: list[str] = []

    def offline(route: Any) -> None:
        if route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", offline)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/docs")
    page.get_by_text("keyplane Admin API").first.wait_for()
    operations = page.locator(".opblock")
    operations.first.wait_for()
    assert operations.count() >= 50  # every operation listed
    assert page.locator(".opblock-summary-path", has_text="/v1/organization/credit_balance").count()
    assert elsewhere == [] and errors == []
