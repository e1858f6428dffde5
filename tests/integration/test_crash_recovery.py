"""A gateway killed (SIGKILL) between hold and settle: after a restart the sweeper resolves the
hold — billed at the hold, the worst case the request could have cost — without waiting for its
expiry, and nothing is released or charged twice (BRIEF C12). Killed either before the hold
reached the database (it was only in the hold journal) or after. A gateway still running keeps
its holds: a second one on its database does not start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

import kphttp
from conftest import PEPPER, make_settings
from keyplane import bootstrap
from keyplane.keys.format import KeyKind
from keyplane.storage.billing_tables import gateways, holds, ledger_entries
from kptest import ServerThread, wait_until

DOLLAR = 1_000_000


class HangingUpstream:
    """Takes the request and never answers (until the test ends)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.received = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.received.set()
        await self.release.wait()


def serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyplane", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    url = ""
    lines: list[str] = []

    def listening() -> bool:
        nonlocal url
        assert proc.stdout is not None
        lines.append(proc.stdout.readline())
        m = re.search(r"listening on \S*(http://127\.0\.0\.1:\d+/v1)", lines[-1])
        url = m.group(1) if m else ""
        return bool(url) or proc.poll() is not None

    wait_until(listening, timeout=30, interval=0)
    assert url, "keyplane serve did not start: " + "".join(lines)

    def drain() -> None:  # (a full pipe would stop the gateway at its next log line)
        assert proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # (closed by ``stop``)
            for line in proc.stdout:
                lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    _SAID[proc.pid] = lines
    return proc, url


_SAID: dict[int, list[str]] = {}


def said(proc: subprocess.Popen[str]) -> str:
    """What a gateway started by ``serve`` printed so far."""
    return "".join(_SAID[proc.pid])


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def ask(url: str, key: str) -> None:
    """A chat completion the upstream never answers (the gateway dies under it)."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
    with contextlib.suppress(httpx.HTTPError):
        kphttp.post(
            url + "/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
        )


def stored_holds(container: bootstrap.Container) -> list[Any]:
    with container.engine.connect() as conn:
        return list(conn.execute(select(holds)).mappings())


def funded_gateway_env(
    tmp_path: Path,
) -> tuple[HangingUpstream, ServerThread, bootstrap.Container, Any, str, dict[str, str]]:
    """An upstream that never answers, an organization with $1 and a project key, and the
    environment of `keyplane serve` on that data directory."""
    upstream = HangingUpstream()
    upstream_server = ServerThread(upstream).start()
    container = bootstrap.build(make_settings(tmp_path))
    owner, org, project = container.accounts.initialize(
        email="o@example.com", password="correct horse battery", org_name="Crash"
    )
    _, key = container.keys.create(
        kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name="k",
        owner_type="user", owner_id=owner.id, created_by=owner.id,
    )  # fmt: skip
    container.billing.grant(org.id, DOLLAR)
    env = {
        **os.environ,
        "KEYPLANE_DATA_DIR": str(tmp_path),
        "KEYPLANE_PEPPER": PEPPER,
        "KEYPLANE_UPSTREAMS": json.dumps(
            [{"base_url": upstream_server.url + "/v1", "models": ["gpt-4o"]}]
        ),
        # A hold recovered from a dead gateway's journal is settled at once; one it had stored
        # open once no live gateway is older than it, long before it expires.
        "KEYPLANE_HOLD_TTL_S": "3600",
        "KEYPLANE_SWEEP_INTERVAL_S": "0.05",
        "KEYPLANE_GATEWAY_TIMEOUT_S": "1",  # a killed gateway's silence that counts as stopped
    }
    return upstream, upstream_server, container, org, key, env


@pytest.mark.parametrize("hold_stored", [False, True], ids=["journal-only", "in-database"])
def test_sigkill_between_hold_and_settle(tmp_path: Path, hold_stored: bool) -> None:
    upstream, upstream_server, container, org, key, env = funded_gateway_env(tmp_path)
    [(lot, _)] = container.billing.balance(org.id).lots
    # Journal-only: no flush runs before the kill, so the hold is only in the journal.
    env["KEYPLANE_USAGE_FLUSH_INTERVAL_S"] = "0.05" if hold_stored else "3600"
    proc, url = serve(env)
    client = threading.Thread(target=ask, args=(url, key))
    client.start()
    try:
        assert upstream.received.wait(30), "the request never reached the upstream"
        if hold_stored:
            wait_until(lambda: stored_holds(container) != [])
        stop(proc, signal.SIGKILL)
        killed_at = time.time()
        client.join(timeout=30)
        journal = list((tmp_path / "journal").glob("holds-*.log"))
        if hold_stored:
            [hold] = stored_holds(container)
            assert hold["status"] == "open"
            held = hold["amount_micro"]
            balance = container.billing.balance(org.id)
            assert balance.held == held and balance.available == DOLLAR - held
        else:
            assert stored_holds(container) == [] and len(journal) == 1
            [line] = journal[0].read_bytes().rstrip(b"\0").split()
            held = json.loads(line)[3]  # the hold's amount

        env["KEYPLANE_USAGE_FLUSH_INTERVAL_S"] = "0.05"
        proc, url = serve(env)  # the restarted gateway counts the hold, then sweeps it
        try:
            try:
                wait_until(lambda: list(container.usage_store.query(org.id)), timeout=30)
            except AssertionError:
                raise AssertionError("no usage record; the gateway said:\n" + said(proc)) from None
        finally:
            stop(proc)
        assert stored_holds(container) == []  # resolved: no longer an open hold
        assert list((tmp_path / "journal").glob("holds-*.log")) == []
        [record] = container.usage_store.query(org.id)
        assert record.outcome.value == "gateway_lost" and record.cost_micro_usd == held
        assert record.created_at <= killed_at  # dated when the request came, not when settled
        balance = container.billing.balance(org.id)
        assert balance.held == 0
        assert balance.spent == held
        assert balance.available == DOLLAR - held
        [(stored_lot, _)] = balance.lots
        assert stored_lot.id == lot.id and stored_lot.remaining == DOLLAR - held
        with container.engine.connect() as conn:
            assert conn.execute(select(func.sum(ledger_entries.c.amount_micro))).scalar() == 0
    finally:
        upstream_server.loop.call_soon_threadsafe(upstream.release.set)  # type: ignore[union-attr]
        upstream_server.stop()
        container.close()


def test_a_second_gateway_refuses_the_database_and_a_restart_settles_the_dead_ones_holds(
    tmp_path: Path,
) -> None:
    """One database, one gateway: a second one started beside a running gateway exits at once,
    naming it, and leaves its open hold alone. Once the first is killed, a new gateway starts at
    once (the lock went with the process) and settles its hold by its first sweep, at the hold,
    once: a dead gateway's silence is not waited for (its row would count as live for an hour)."""
    upstream, upstream_server, container, org, key, env = funded_gateway_env(tmp_path)
    env["KEYPLANE_USAGE_FLUSH_INTERVAL_S"] = "0.05"
    env["KEYPLANE_GATEWAY_TIMEOUT_S"] = "3600"

    def running() -> dict[str, tuple[int, int]]:
        with container.engine.connect() as conn:
            rows = conn.execute(select(gateways)).all()
        return {row.id: (row.started_at, row.seen_at) for row in rows}

    first, url = serve(env)
    client = threading.Thread(target=ask, args=(url, key), daemon=True)
    second = None
    try:
        client.start()
        assert upstream.received.wait(30), "the request never reached the upstream"
        wait_until(lambda: stored_holds(container) != [])
        wait_until(lambda: len(running()) == 1)
        [first_id] = running()
        refused = subprocess.run(
            [sys.executable, "-m", "keyplane", "serve", "--port", "0"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 1
        said = " ".join((refused.stdout + refused.stderr).split())
        assert "another keyplane gateway is serving the database file" in said
        assert first_id in said and "stop the other first" in said
        assert "listening" not in said
        assert set(running()) == {first_id}
        [hold] = stored_holds(container)
        assert hold["status"] == "open" and list(container.usage_store.query(org.id)) == []

        stop(first, signal.SIGKILL)
        second, _ = serve(env)
        wait_until(lambda: list(container.usage_store.query(org.id)), timeout=30)
        assert first_id not in running()  # the dead one forgotten at once, not after an hour
        assert stored_holds(container) == []
        [record] = container.usage_store.query(org.id)
        assert record.outcome.value == "gateway_lost"
        assert record.cost_micro_usd == hold["amount_micro"]
        balance = container.billing.balance(org.id)
        assert (balance.held, balance.spent) == (0, hold["amount_micro"])
        with container.engine.connect() as conn:
            assert conn.execute(select(func.sum(ledger_entries.c.amount_micro))).scalar() == 0
        stop(second)
        second = None
        assert running() == {}  # a gateway stopped cleanly says so
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop(proc, signal.SIGKILL)
        upstream_server.loop.call_soon_threadsafe(upstream.release.set)  # type: ignore[union-attr]
        upstream_server.stop()
        container.close()
