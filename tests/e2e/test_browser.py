"""The dashboard in a real headless browser (Debian's Chromium through Playwright): what a person
does, including the CSRF and cookie handling that only a browser exercises for real."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IN_CI, Keyplane, start_keyplane
from kptest import ServerThread

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
    page.keyboard.press("Enter")
    page.wait_for_load_state("networkidle")
    text = page.inner_text("main")
    assert "/login" in page.url and "incorrect" in text.lower()
    page.fill("input[name=email]", "nobody@example.com")
    page.fill("input[name=password]", "not the password at all")
    page.keyboard.press("Enter")
    page.wait_for_load_state("networkidle")
    assert page.inner_text("main") == text
