"""Takes README's dashboard screenshot (docs/images/dashboard.png) as a newcomer would see it:
`keyplane dev` on a fresh data directory, two more keys made with the CLI, one request through
the first key, then the API keys page in Debian's headless Chromium.

    .venv/bin/python scripts/screenshot.py [--out docs/images/dashboard.png]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
KEYPLANE = [sys.executable, "-m", "keyplane"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs/images/dashboard.png")
    out = parser.parse_args().out
    with tempfile.TemporaryDirectory() as data, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ, "KEYPLANE_DATA_DIR": data, "KEYPLANE_PUBLIC_URL": base,
            "NO_COLOR": "1", "COLUMNS": "200",
        }  # fmt: skip
        dev = subprocess.Popen(
            [*KEYPLANE, "dev", "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        try:
            password, key = first_start(dev)
            for name, extra in (
                ("billing-service", []),
                ("analytics (read only)", ["--read-only"]),
            ):
                subprocess.run(
                    [*KEYPLANE, "keys", "create", "--project", "Default project", "--name", name,
                     *extra],
                    check=True, capture_output=True, env=env,
                )  # fmt: skip
            openai.OpenAI(base_url=base + "/v1", api_key=key).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
            )
            used(env)
            shoot(base, password, out)
        finally:
            dev.terminate()
            dev.wait(timeout=30)
    print(f"wrote {out}")


def used(env: dict[str, str], deadline_s: float = 20.0) -> None:
    """Waits until the request's "Last used" is stored (the gateway writes them every 5 s)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        listed = subprocess.run(
            [*KEYPLANE, "keys", "list", "--json"], check=True, capture_output=True, env=env,
            text=True,
        )  # fmt: skip
        if any(k["last_used_at"] for k in json.loads(listed.stdout)):
            return
        time.sleep(0.5)  # (polling a separate process's batched write, with a deadline)
    raise SystemExit("the request's last use was not stored within 20 s")


def first_start(dev: subprocess.Popen[str]) -> tuple[str, str]:
    """The Owner's password and the first key, from what `keyplane dev` prints once."""
    assert dev.stdout is not None
    password = key = ""
    for line in dev.stdout:
        if m := re.search(r"password: (\S+)", line):
            password = m.group(1)
        if m := re.search(r"(sk-kp-proj-\S+)", line):
            key = m.group(1)
        if "listening on" in line:
            break
    if not (password and key):
        raise SystemExit("keyplane dev did not print a first start's login and key")
    return password, key


def shoot(base: str, password: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(base + "/login")
        page.fill("input[name=email]", "owner@keyplane.local")
        page.fill("input[name=password]", password)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: not url.endswith("/login"))
        if page.url.endswith("/profile"):  # a first login completes the profile
            page.fill("input[name=name]", "Ada Owner")
            page.keyboard.press("Enter")
            page.wait_for_url(base + "/")
        page.goto(base + "/api-keys")
        page.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    main()
