"""The keyplane command as an operator uses it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy
from typer.testing import CliRunner

from keyplane.cli import app
from keyplane.keys.format import KEY_PATTERN
from keyplane.storage.notify_tables import email_outbox
from kptest import wait_until


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KEYPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None, ok: bool = True) -> Any:
        result = runner.invoke(app, list(args), input=stdin)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def init(run: Any) -> None:
    """The first Owner, organization A and its Default project, as an operator sets them up."""
    run(
        "init",
        "--email",
        "a@example.com",
        "--org",
        "A",
        "--password-stdin",
        stdin="correct horse battery\n",
    )


def test_init_creates_owner_org_project_and_shows_an_admin_key_once(run: Any) -> None:
    result = run(
        "init",
        "--email",
        "Boss@Example.com",
        "--org",
        "Acme",
        "--password-stdin",
        "--json",
        stdin="correct horse battery\n",
    )
    data = json.loads(result.stdout)
    assert data["admin_key"].startswith("sk-kp-admin-") and KEY_PATTERN.fullmatch(data["admin_key"])
    again = run(
        "init",
        "--email",
        "x@example.com",
        "--org",
        "Other",
        "--password-stdin",
        stdin="correct horse battery\n",
        ok=False,
    )
    assert again.exit_code == 1 and "already initialized" in again.output
    listed = json.loads(run("keys", "list", "--json").stdout)
    assert [k["kind"] for k in listed] == ["admin"]
    assert data["admin_key"] not in run("keys", "list").stdout


def test_init_refuses_a_short_password(run: Any) -> None:
    result = run(
        "init",
        "--email",
        "a@example.com",
        "--org",
        "A",
        "--password-stdin",
        stdin="short\n",
        ok=False,
    )
    assert result.exit_code == 1 and "12 characters" in result.output


def test_keys_create_list_revoke(run: Any) -> None:
    init(run)
    created = json.loads(
        run(
            "keys",
            "create",
            "--project",
            "Default project",
            "--name",
            "app",
            "--expires-in",
            "30d",
            "--json",
        ).stdout
    )
    assert {"id", "name", "value", "redacted_value", "project_id"} <= set(created)
    assert (
        created["value"].startswith("sk-kp-proj-")
        and created["redacted_value"] == "sk-kp-proj-…" + created["value"][-4:]
    )
    assert created["expires_at"] - created["created_at"] == 30 * 86400
    listed = json.loads(run("keys", "list", "--project", "Default project", "--json").stdout)
    assert [k["id"] for k in listed] == [created["id"]] and "value" not in listed[0]
    assert "revoked" not in run("keys", "list").stdout.split(created["id"])[1].split("\n")[0]
    assert run("keys", "revoke", created["id"]).stdout.startswith(f"Revoked {created['id']} ")
    statuses = {k["id"]: k["status"] for k in json.loads(run("keys", "list", "--json").stdout)}
    assert statuses[created["id"]] == "revoked"
    again = run("keys", "revoke", created["id"]).stdout
    assert f"{created['id']} (" in again and "was revoked already, at 20" in again
    missing = run("keys", "revoke", "key_doesnotexist", ok=False)
    assert missing.exit_code == 1 and "No API key" in missing.output
    changed = run("keys", "update", created["id"], "--read-only", ok=False)  # revoked above
    assert changed.exit_code == 1 and "revoked" in changed.output
    bad = run("keys", "create", "--project", "Nope", "--name", "x", ok=False)
    assert bad.exit_code == 1 and "No project" in bad.output
    never = ["--project", "Default project", "--name", "x", "--expires-in", "0d"]
    bad = run("keys", "create", *never, ok=False)
    assert bad.exit_code == 1 and "--expires-in: '0d' is not from 1s to 365d" in bad.output

    # Names are shown as typed, never acted on: no console markup, no control characters.
    run("keys", "create", "--project", "Default project", "--name", "[bold red]x[/] [link]")
    assert "[bold red]x[/] [link]" in run("keys", "list").stdout
    for name in ("\x1b[2J\x1b[31mPWNED", "bell\x07", "nul\x00", "rtl\u202e"):
        bad = run("keys", "create", "--project", "Default project", "--name", name, ok=False)
        assert bad.exit_code == 1 and "cannot contain control characters" in bad.output, name
        assert "\x1b" not in bad.output


def test_usage_json_shape_before_any_request(run: Any) -> None:
    init(run)
    assert json.loads(run("usage", "--json").stdout) == []
    assert "0 requests" in run("usage", "--since", "24h").stdout


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def test_make_run_flow_first_and_second_start(tmp_path: Path) -> None:
    """`keyplane dev` (what `make run` starts): initializes once, serves with the simulator, and
    `keyplane usage` shows the request afterwards."""
    env = {
        **os.environ,
        "KEYPLANE_DATA_DIR": str(tmp_path),
        "COLUMNS": "200",
        "KEYPLANE_USAGE_FLUSH_INTERVAL_S": "0.05",
    }

    def start() -> tuple[subprocess.Popen[str], list[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keyplane", "dev", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        lines: list[str] = []

        def listening() -> bool:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            lines.append(line)
            return "listening on" in line or proc.poll() is not None

        wait_until(listening, timeout=30, interval=0)
        return proc, lines

    proc, lines = start()
    try:
        text = "".join(lines)
        assert "Owner login: owner@keyplane.local" in text and "SIMULATOR" in text
        proc_lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        assert re.search(r"Dashboard: http://127\.0\.0\.1:\d+/ ", "".join(proc_lines))
        key = KEY_PATTERN.search(text)
        url = re.search(r"http://127\.0\.0\.1:\d+/v1", text.split("listening on")[1])
        assert key and url
        with openai.OpenAI(base_url=url.group(0), api_key=key.group(0), max_retries=0) as client:
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
    finally:
        stop(proc)
    records = json.loads(
        subprocess.run(
            [sys.executable, "-m", "keyplane", "usage", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert (
        len(records) == 1
        and records[0]["model"] == "gpt-4o-mini"
        and records[0]["cost_micro_usd"] > 0
    )
    assert {
        "request_id",
        "created_at",
        "project_id",
        "key_id",
        "endpoint",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "status",
    } <= set(records[0])

    proc, lines = start()
    stop(proc)
    text = "".join(lines)
    assert (
        "already initialized" in text and "Owner login" not in text and not KEY_PATTERN.search(text)
    )


def test_credits_budget_alerts_and_billing_commands(run: Any) -> None:
    init(run)
    shown = json.loads(run("credits", "show", "--json").stdout)
    assert shown["available_micro_usd"] == 5_000_000  # the welcome credit
    [welcome] = shown["lots"]
    assert welcome["expires_at"] - welcome["created_at"] == 90 * 86400
    granted = json.loads(
        run(
            "credits",
            "grant",
            "--amount",
            "10.50",
            "--note",
            "internal",
            "--idempotency-key",
            "g1",
            "--json",
        ).stdout
    )
    again = json.loads(
        run(
            "credits",
            "grant",
            "--amount",
            "10.50",
            "--note",
            "internal",
            "--idempotency-key",
            "g1",
            "--json",
        ).stdout
    )
    assert granted["id"] == again["id"] and granted["amount_micro_usd"] == 10_500_000
    conflict = run("credits", "grant", "--amount", "11", "--idempotency-key", "g1", ok=False)
    assert conflict.exit_code == 1 and "different parameters" in conflict.output
    shown = json.loads(run("credits", "show", "--json").stdout)
    assert (
        shown["available_micro_usd"] == 15_500_000
        and shown["held_micro_usd"] == 0
        and shown["spent_micro_usd"] == 0
    )
    assert {"id", "kind", "amount_micro_usd", "remaining_micro_usd", "expires_at"} <= set(
        shown["lots"][0]
    )
    run("credits", "revoke", granted["id"])
    assert json.loads(run("credits", "show", "--json").stdout)["available_micro_usd"] == 5_000_000
    for amount, why in [
        ("1,000", "Enter an amount"), ("NaN", "Enter an amount"), ("inf", "Enter an amount"),
        ("-5", "cannot be negative"), ("99999999999999999999", "at most $1,000,000,000.00"),
        ("0.009", "finer than a cent"), ("1e3", "Enter an amount"), ("1_000", "Enter an amount"),
        ("\u0661\u0660", "Enter an amount"), ("10.", "Enter an amount"),
    ]:  # fmt: skip
        bad = run("budget", "set", "--amount", amount, ok=False)
        assert bad.exit_code == 2 and why in bad.output and "Traceback" not in bad.output, amount
        assert "1000000000" not in bad.output
    assert "finer than a micro" in run("credits", "grant", "--amount", "0.0000001", ok=False).output
    zero = run("credits", "purchase", "--amount", "0", ok=False).output
    assert "A credit purchase is a positive amount" in " ".join(zero.split()), zero
    run("budget", "set", "--amount", "20")
    run("budget", "set", "--amount", "5", "--project", "Default project")
    run("alerts", "add", "--amount", "10")
    [alert] = json.loads(run("alerts", "list", "--json").stdout)
    assert alert["threshold_micro_usd"] == 10_000_000 and alert["recipients"] is None
    settings = json.loads(run("billing", "show", "--json").stdout)
    assert settings == {
        "mode": "prepaid", "usage_limit_micro_usd": 100_000_000, "usage_limit_from": "tier",
        "budget_micro_usd": 20_000_000, "auto_recharge": False, "recharge_threshold_micro_usd": None, "recharge_target_micro_usd": None,
        "low_balance_alert_micro_usd": None,
    }  # fmt: skip
    bad = run(
        "billing",
        "set",
        "--auto-recharge",
        "--recharge-threshold",
        "50",
        "--recharge-target",
        "40",
        ok=False,
    )
    assert bad.exit_code == 1 and "above the threshold" in bad.output
    run("billing", "set", "--mode", "postpaid", "--usage-limit", "500")
    shown = json.loads(run("billing", "show", "--json").stdout)
    assert (shown["mode"], shown["usage_limit_micro_usd"], shown["usage_limit_from"]) == (
        "postpaid",
        500_000_000,
        "set",
    )
    assert "set to $500.00 instead" in run("tier", "show").stdout
    run("billing", "set", "--usage-limit", "tier")  # back to the tier's
    shown = json.loads(run("billing", "show", "--json").stdout)
    assert (shown["usage_limit_micro_usd"], shown["usage_limit_from"]) == (100_000_000, "tier")
    bad = run("billing", "set", "--low-balance-alert", "0.50", ok=False)
    assert bad.exit_code == 1 and "between $1.00 and $100,000.00" in " ".join(bad.output.split())
    run("billing", "set", "--low-balance-alert", "12.50")
    assert json.loads(run("billing", "show", "--json").stdout)["low_balance_alert_micro_usd"] == (
        12_500_000
    )
    run("billing", "set", "--low-balance-alert", "off")
    assert (
        json.loads(run("billing", "show", "--json").stdout)["low_balance_alert_micro_usd"] is None
    )


def test_init_without_welcome_credit(run: Any) -> None:
    run(
        "init",
        "--email",
        "a@example.com",
        "--org",
        "A",
        "--password-stdin",
        "--welcome-credit",
        "0",
        stdin="correct horse battery\n",
    )
    assert json.loads(run("credits", "show", "--json").stdout)["lots"] == []


def test_keys_restrict_rotate_and_flag_old_keys(run: Any) -> None:
    init(run)
    created = json.loads(
        run(
            "keys",
            "create",
            "--project",
            "Default project",
            "--name",
            "ro",
            "--read-only",
            "--allow-ip",
            "10.0.0.0/8",
            "--json",
        ).stdout
    )
    assert created["permissions"] == "Read only" and created["allowed_ips"] == ["10.0.0.0/8"]
    run(
        "keys",
        "update",
        created["id"],
        "--scope",
        "chat.write",
        "--allow-model",
        "gpt-4o-mini",
        "--any-ip",
    )
    [listed] = [
        k for k in json.loads(run("keys", "list", "--json").stdout) if k["id"] == created["id"]
    ]
    assert (
        listed["scopes"] == ["chat.write"]
        and listed["allowed_models"] == ["gpt-4o-mini"]
        and listed["allowed_ips"] is None
    )
    assert listed["needs_rotation"] is False
    bad = run("keys", "update", created["id"], "--allow-ip", "not-an-ip", "--rpm", "1", ok=False)
    assert bad.exit_code == 1 and "not an IP" in bad.output
    keys = {k["id"]: k for k in json.loads(run("keys", "list", "--json").stdout)}
    assert keys[created["id"]]["rate_limits"]["rpm"] is None  # a refused update changes nothing
    [admin] = [k for k in keys.values() if k["kind"] == "admin"]
    bad = run("keys", "update", admin["id"], "--name", "x", ok=False)
    assert bad.exit_code == 1 and "only project keys can be updated" in bad.output
    assert (
        "Updated " + created["id"] + " (renamed):"
        in run("keys", "update", created["id"], "--name", "renamed").stdout
    )
    [listed] = [
        k for k in json.loads(run("keys", "list", "--json").stdout) if k["id"] == created["id"]
    ]
    assert listed["name"] == "renamed" and listed["allowed_models"] == ["gpt-4o-mini"]
    for both in (["--read-only", "--all-permissions"], ["--allow-ip", "10.0.0.1", "--any-ip"],
                 ["--tpm", "5", "--clear-limits"]):  # fmt: skip
        bad = run("keys", "update", created["id"], *both, ok=False)
        assert bad.exit_code == 1 and "not both" in bad.output, both
    # Limits change one at a time, and the listing shows them.
    run("keys", "update", created["id"], "--rpm", "2")
    run("keys", "update", created["id"], "--rpd", "100")
    [listed] = [
        k for k in json.loads(run("keys", "list", "--json").stdout) if k["id"] == created["id"]
    ]
    assert listed["rate_limits"] == {"rpm": 2, "tpm": None, "rpd": 100}
    rotated = json.loads(run("keys", "rotate", created["id"], "--grace", "24h", "--json").stdout)
    assert rotated["rotated_from"] == created["id"] and rotated["value"].startswith("sk-kp-proj-")
    statuses = {k["id"]: k for k in json.loads(run("keys", "list", "--json").stdout)}
    assert (
        statuses[created["id"]]["expires_at"] is not None
        and statuses[created["id"]]["status"] == "active"
    )
    said = run("keys", "rotate", rotated["id"], "--grace", "0").stdout
    assert "The old secret stopped working. New secret (shown once):" in said
    rotated = {"id": said.split(" → ")[1].split(".")[0]}
    said = run("keys", "rotate", rotated["id"], "--grace", "2h").stdout
    assert re.search(
        r"The old secret works until 20\d\d-\d\d-\d\d \d\d:\d\d:\d\dZ \(2h more\)\.", said
    )
    rotated = {"id": said.split(" → ")[1].split(".")[0]}
    too_long = run("keys", "rotate", rotated["id"], "--grace", "8d", ok=False)
    assert too_long.exit_code == 1 and "7 days" in too_long.output
    run("access", "set", "--project", "Default project", "--allow-model", "gpt-4o-mini")
    assert json.loads(run("access", "show", "--project", "Default project", "--json").stdout)[
        "allowed_models"
    ] == ["gpt-4o-mini"]


def test_an_admin_key_can_be_created_after_the_first_start(run: Any) -> None:
    """`make run` prints a project key only: the Admin API's key comes from this command."""
    init(run)
    created = json.loads(run("keys", "create-admin", "--name", "ops", "--json").stdout)
    assert KEY_PATTERN.fullmatch(created["value"]) and created["value"].startswith("sk-kp-admin-")
    listed = {k["id"]: k for k in json.loads(run("keys", "list", "--json").stdout)}
    assert listed[created["id"]]["name"] == "ops" and listed[created["id"]]["kind"] == "admin"
    assert created["value"] not in run("keys", "list").stdout


def test_tables_fit_a_narrow_terminal_and_keep_ids_whole(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 80 columns a table leaves out what fits least and says so, rather than cutting every
    value short; the id it shows is whole: it is what the next command takes (keys revoke ID)."""
    init(run)
    keys = json.loads(run("keys", "list", "--json").stdout)
    lots = json.loads(run("credits", "show", "--json").stdout)["lots"]
    wide_keys, wide_lots = run("keys", "list").stdout, run("credits", "show").stdout
    assert "Not shown" not in wide_keys + wide_lots
    assert all(k["created_at"] and _iso(k["created_at"]) in wide_keys for k in keys)

    monkeypatch.setenv("COLUMNS", "80")
    listing, shown = run("keys", "list").stdout, run("credits", "show").stdout
    assert all(len(line) <= 80 for line in (listing + shown).splitlines())
    assert all(k["id"] in listing and k["name"] in listing for k in keys)
    assert all(k["redacted_value"] in listing for k in keys)
    assert lots and all(lot["id"] in shown for lot in lots)
    note = " ".join(listing.split())
    assert "Not shown at this width: project," in note and "(--json has them)" in note


def _iso(ts: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def test_an_unreachable_database_is_one_line_not_a_traceback(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command says so at once; a server (started with its database, say) first tries again."""
    import keyplane.cli as cli
    from keyplane.cli import common

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", f"postgresql://kp:sekret@127.0.0.1:{port}/kp")
    monkeypatch.setattr(cli, "SERVER_WAITS_FOR_DATABASE_S", 0.2)
    monkeypatch.setattr(common, "DATABASE_RETRY_S", 0.05)
    try:
        for args, retried in ((["keys", "list"], False), (["serve"], True)):
            result = run(*args, ok=False)
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
            assert "cannot reach its database" in result.output and "Traceback" not in result.output
            assert "sekret" not in result.output
            assert ("trying again" in result.output) == retried
    finally:
        closed.close()


def test_common_mistakes_are_one_line_errors(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port taken, a bad upstream URL, a bad setting: a line saying so, and no secret shown by
    a first start that could not serve."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    try:
        for args, said in (
            (["dev", "--port", port], f"cannot listen on 127.0.0.1:{port}: Address already in use"),
            (["simulate", "--port", port], "Address already in use"),
            (["serve", "--upstream", "notaurl"], "'notaurl' is not a URL"),
        ):
            result = run(*args, ok=False)
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), args
            assert said in " ".join(result.output.split()), result.output
            assert "Owner login" not in result.output
    finally:
        taken.close()
    monkeypatch.setenv("KEYPLANE_SMTP_PORT", "abc")
    result = run("usage", ok=False)
    assert result.exit_code == 1 and "KEYPLANE_SMTP_PORT: Input should be a valid integer" in (
        " ".join(result.output.split())
    )


def test_scan_finds_live_keys_in_files_and_git_history_and_revokes_them(
    run: Any, tmp_path: Path
) -> None:
    """A key pasted in a file or committed once (and removed since) is found; one of this
    keyplane with its real secret is live and --revoke revokes it; a forged one (right shape and
    checksum, wrong secret) is reported but never revoked; no secret is printed."""
    from keyplane.keys.format import checksum

    init(run)
    made = json.loads(run("keys", "create", "--project", "Default project", "--name", "leaky",
                          "--json").stdout)  # fmt: skip
    committed = json.loads(run("keys", "create", "--project", "Default project", "--name",
                               "old", "--json").stdout)  # fmt: skip
    head = made["value"][: len("sk-kp-proj-") + 12] + "Z" * 32
    forged = head + checksum(head)
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=a@example.com", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "settings.py").write_text(f'KEY = "{committed["value"]}"\n')
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "oops"], check=True)
    (repo / "settings.py").write_text('KEY = os.environ["KEY"]\n')
    (repo / "notes.txt").write_text(f"prod: {made['value']}\nfake: {forged}\n")
    subprocess.run([*git, "commit", "-q", "-am", "fix"], check=True)

    found = run("scan", str(repo), "--json", ok=False)
    assert found.exit_code == 1
    rows = json.loads(found.stdout)
    status = {(r["where"].split(":")[0].rsplit("/", 1)[-1], r["key"][-4:]): r["status"]
              for r in rows}  # fmt: skip
    assert status[("notes.txt", made["value"][-4:])].startswith("LIVE")
    assert status[("notes.txt", forged[-4:])] == "not a key of this keyplane"
    assert any(r["where"].startswith("git ") and r["status"].startswith("LIVE") for r in rows)
    assert all(v not in found.stdout for v in (made["value"], committed["value"], forged))

    revoked = run("scan", str(repo), "--revoke", ok=False)
    assert revoked.exit_code == 1 and "revoked now" in revoked.stdout
    keys = {k["id"]: k["status"] for k in json.loads(run("keys", "list", "--json").stdout)}
    assert keys[made["id"]] == keys[committed["id"]] == "revoked"
    # The Owners are emailed about each, once (queued in the outbox for `keyplane serve` to send).
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'keyplane.db'}")
    with engine.connect() as conn:
        queued = {r.dedupe_key for r in conn.execute(sqlalchemy.select(email_outbox.c.dedupe_key))}
    engine.dispose()
    assert {f"leaked:{made['id']}", f"leaked:{committed['id']}"} <= queued
    assert run("scan", str(tmp_path / "repo" / "settings.py"), "--no-history").exit_code == 0
    assert run("scan", str(tmp_path / "no-such-dir"), ok=False).exit_code == 2  # a typo in CI
    odd = tmp_path / "odd"
    odd.mkdir()
    os.mkfifo(odd / "pipe")  # never read (it would hang the scan)
    (odd / "big.log").write_bytes(b"x" * (6 * 1024 * 1024) + made["value"].encode())
    skipped = run("scan", str(odd))
    assert "not scanned:" in skipped.output and "big.log: larger than 5 MB" in skipped.output
    assert "pipe: not a regular file" in skipped.output
    assert "No keys found. (Some files were not scanned" in " ".join(skipped.output.split())


def test_piped_output_keeps_long_lines_whole(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal and no COLUMNS (a log, a pipe): a line is not folded at 80 columns."""
    init(run)
    [key] = json.loads(run("keys", "list", "--json").stdout)
    monkeypatch.delenv("COLUMNS")
    said = run("keys", "rotate", key["id"], "--grace", "2h").stdout.splitlines()
    assert len(said[0]) > 80 and said[0].startswith(f"Rotated {key['id']} → ")
    assert said[0].endswith("(2h more). New secret (shown once):")
