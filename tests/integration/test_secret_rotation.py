"""Rotating the pepper and the encryption key with no downtime, as an operator does it: the new
secret current, the old one among the previous ones; keys and sealed values made with the old one
keep working; `keyplane secrets status` says what still depends on it; once nothing does, it is
removed. A key never used after the rotation stops working when its pepper goes (and the status
warns before)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import make_settings, start_keyplane
from keyplane import bootstrap, gateway_assembly, sealing
from keyplane.cli import app
from keyplane.config import UpstreamSettings
from keyplane.keys.format import pepper_id
from keyplane.storage import tables as t
from keyplane.storage.webhook_tables import webhook_endpoints
from kptest import ChatRecorder, ServerThread, chat_recorder, wait_until

PEPPER_A, PEPPER_B = "pepper-a-" + "a" * 40, "pepper-b-" + "b" * 40
KEY_A, KEY_B = "enc-key-a-" + "A" * 40, "enc-key-b-" + "B" * 40
PROVIDER_KEY = "sk-provider-" + "Q" * 36


@pytest.fixture
def upstream() -> Iterator[tuple[ChatRecorder, str]]:
    with chat_recorder() as served:
        yield served


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`keyplane …` on this test's data directory, with the secrets given as the environment."""
    monkeypatch.setenv("KEYPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "1000")
    runner = CliRunner()

    def invoke(
        *args: str, pepper: str = PEPPER_A, previous: tuple[str, ...] = (),
        key: str = KEY_A, previous_keys: tuple[str, ...] = (), stdin: str | None = None,
    ) -> Any:  # fmt: skip
        monkeypatch.setenv("KEYPLANE_PEPPER", pepper)
        monkeypatch.setenv("KEYPLANE_PEPPER_PREVIOUS", json.dumps(list(previous)))
        monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", key)
        monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY_PREVIOUS", json.dumps(list(previous_keys)))
        return runner.invoke(app, list(args), input=stdin)

    return invoke


def status(cli: Any, **secrets: Any) -> dict[str, Any]:
    result = cli("secrets", "status", "--json", **secrets)
    assert result.exit_code == 0, result.output
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def working_keys(payload: dict[str, Any]) -> dict[str, int]:
    return {r["id"]: r["working_keys"] for r in payload["peppers"]}


class Gateway:
    """keyplane served on the test's data directory with the given settings."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        # (Given in full: the environment the `cli` fixture sets must not add previous secrets.)
        settings = {"pepper_previous": [], "encryption_key_previous": [], **settings}
        self.container = bootstrap.build(make_settings(tmp_path, **settings))
        web, self.gateway = gateway_assembly.build_app(self.container)
        self.server = ServerThread(web).start()

    def chat(self, key: str) -> str | None:
        with openai.OpenAI(base_url=self.server.url + "/v1", api_key=key, max_retries=0) as client:
            reply = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        return reply.choices[0].message.content

    def stop(self) -> None:
        self.server.stop()
        self.container.close()


def test_rotating_the_pepper(cli: Any, upstream: tuple[ChatRecorder, str], tmp_path: Path) -> None:
    upstreams = [UpstreamSettings(name="sim", base_url=upstream[1])]
    kp = start_keyplane(tmp_path, "", upstreams=upstreams, pepper=PEPPER_A)
    used, idle = kp.key, kp.new_key("never used again")[1]
    kp.server.stop()
    kp.container.close()
    a, b = pepper_id(PEPPER_A.encode()), pepper_id(PEPPER_B.encode())
    assert working_keys(status(cli)) == {a: 2}

    # B current, A previous: keys hashed with A still work, and move to B as they are used.
    rotating = {"pepper": PEPPER_B, "previous": (PEPPER_A,)}
    gw = Gateway(tmp_path, upstreams=upstreams, pepper=PEPPER_B, pepper_previous=[PEPPER_A],
                 last_used_flush_s=0.05)  # fmt: skip
    try:
        assert gw.chat(used) == "hi"
        wait_until(lambda: working_keys(status(cli, **rotating)) == {b: 1, a: 1})
        assert gw.chat(used) == "hi"
    finally:
        gw.stop()
    with gw.container.engine.connect() as conn:
        hashes = conn.execute(select(t.api_keys.c.secret_hash, t.api_keys.c.pepper_id)).all()
    assert {pid for _, pid in hashes} == {a, b}
    assert not any(used[-50:] in h or idle[-50:] in h for h, _ in hashes)

    # The status warns that removing A now stops the key not used since.
    human = cli("secrets", "status", **rotating)
    assert human.exit_code == 0, human.output
    text = " ".join(human.output.split())
    assert f"Warning: pepper {a} still checks 1 working keys" in text
    assert "stop working (401)" in text
    for secret in (PEPPER_A, PEPPER_B, used, idle):
        assert secret not in human.output

    # A removed: the key used during the rotation works; the one never used stops.
    gw = Gateway(tmp_path, upstreams=upstreams, pepper=PEPPER_B, last_used_flush_s=0.05)
    try:
        assert gw.chat(used) == "hi"
        with pytest.raises(openai.AuthenticationError) as refused:
            gw.chat(idle)
        assert refused.value.code == "invalid_api_key"
        assert idle not in str(refused.value)
    finally:
        gw.stop()
    after = status(cli, pepper=PEPPER_B)
    assert working_keys(after) == {b: 1, a: 1}
    assert [r["role"] for r in after["peppers"]] == ["current", "not configured"]


def test_keys_stored_before_peppers_were_recorded(
    cli: Any, upstream: tuple[ChatRecorder, str], tmp_path: Path
) -> None:
    """Migration 0024 marks the keys already stored with the one pepper keyplane upgrades with;
    upgrading while previous peppers are configured too, it cannot tell which, and leaves them
    unrecorded: each configured pepper is tried, and the key's is recorded when it is next used."""
    from alembic import command

    from keyplane.storage import migrate

    upstreams = [UpstreamSettings(name="sim", base_url=upstream[1])]
    kp = start_keyplane(tmp_path, "", upstreams=upstreams, pepper=PEPPER_A)
    kp.server.stop()
    kp.container.close()
    a, b = pepper_id(PEPPER_A.encode()), pepper_id(PEPPER_B.encode())

    def downgrade() -> None:
        command.downgrade(migrate.alembic_config(kp.container.engine), "0023")
        kp.container.engine.dispose()

    downgrade()
    bootstrap.build(make_settings(tmp_path, pepper=PEPPER_A, pepper_previous=[])).close()
    assert working_keys(status(cli)) == {a: 1}

    downgrade()
    rotating = {"pepper": PEPPER_B, "previous": (PEPPER_A,)}
    gw = Gateway(tmp_path, upstreams=upstreams, pepper=PEPPER_B, pepper_previous=[PEPPER_A],
                 last_used_flush_s=0.05)  # fmt: skip
    try:
        payload = status(cli, **rotating)
        assert working_keys(payload) == {b: 0, a: 0}
        assert payload["keys_with_unrecorded_pepper"] == 1
        warned = " ".join(cli("secrets", "status", **rotating).output.split())
        assert "1 working keys were stored before keyplane recorded peppers" in warned
        assert gw.chat(kp.key) == "hi"
        wait_until(lambda: working_keys(status(cli, **rotating)) == {b: 1, a: 0})
    finally:
        gw.stop()
    assert status(cli, **rotating)["keys_with_unrecorded_pepper"] == 0


def test_rotating_the_encryption_key(
    cli: Any, upstream: tuple[ChatRecorder, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, url = upstream
    result = cli("seal", stdin=PROVIDER_KEY + "\n")
    assert result.exit_code == 0, result.output
    sealed_a = result.stdout.strip()
    a, b = sealing.key_id(KEY_A.encode()), sealing.key_id(KEY_B.encode())
    assert sealed_a.startswith(f"sealed:{a}:") and PROVIDER_KEY not in sealed_a

    def configured(value: str) -> list[UpstreamSettings]:
        return [UpstreamSettings(name="openai", base_url=url, api_key=value)]

    # Under A: a webhook signing secret sealed in the database.
    kp = start_keyplane(tmp_path, "", upstreams=configured(sealed_a), encryption_key=KEY_A)
    _, hook_secret = kp.container.webhooks.create(
        kp.org.id, "https://hooks.example/x", ["api_key.leaked"]
    )
    key = kp.key
    kp.server.stop()
    kp.container.close()

    # B alone: `serve` refuses to start, naming A's id and what to set.
    taken = socket.socket()  # (a command that went on to serve would fail on the port, not hang)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = str(taken.getsockname()[1])
        refused = cli("serve", "--port", port, "--upstream", "http://127.0.0.1:9/v1", key=KEY_B)
    finally:
        taken.close()
    assert refused.exit_code == 1, refused.output
    line = " ".join(refused.output.split())
    assert line.startswith("error: the database keeps 1 webhook signing secrets"), line
    assert f"sealed with encryption key {a}" in line
    assert "add the key that sealed them to KEYPLANE_ENCRYPTION_KEY_PREVIOUS" in line
    assert KEY_A not in line and KEY_B not in line and hook_secret not in line

    # B current, A previous: the provider key sealed under A reaches the upstream in clear.
    rotating = {"key": KEY_B, "previous_keys": (KEY_A,)}
    gw = Gateway(tmp_path, upstreams=configured(sealed_a), encryption_key=KEY_B,
                 encryption_key_previous=[KEY_A])  # fmt: skip
    try:
        assert gw.chat(key) == "hi"
        assert recorder.headers[-1][b"authorization"] == f"Bearer {PROVIDER_KEY}".encode()
    finally:
        gw.stop()

    def by_key(upstream_key: str) -> dict[str, tuple[int, list[str]]]:
        upstreams = [{"name": "openai", "base_url": url, "api_key": upstream_key}]
        monkeypatch.setenv("KEYPLANE_UPSTREAMS", json.dumps(upstreams))
        payload = status(cli, **rotating)
        return {
            r["id"]: (r["sealed_values"], r["upstream_keys"]) for r in payload["encryption_keys"]
        }

    assert by_key(sealed_a) == {b: (0, []), a: (1, ["openai"])}
    done = cli("reseal", **rotating)
    assert done.exit_code == 0, done.output
    assert by_key(sealed_a) == {b: (1, []), a: (0, ["openai"])}
    warned = " ".join(cli("secrets", "status", **rotating).output.split())
    assert f"Warning: encryption key {a} still opens the upstream keys of openai" in warned

    sealed_b = cli("seal", stdin=PROVIDER_KEY + "\n", key=KEY_B).stdout.strip()
    assert by_key(sealed_b) == {b: (1, ["openai"]), a: (0, [])}
    clear = " ".join(cli("secrets", "status", **rotating).output.split())
    assert f"Encryption key {a}: nothing depends on it: it can be removed" in clear
    for secret in (KEY_A, KEY_B, PROVIDER_KEY, hook_secret):
        assert secret not in warned and secret not in clear

    # A removed: everything opens with B.
    gw = Gateway(tmp_path, upstreams=configured(sealed_b), encryption_key=KEY_B)
    try:
        assert gw.chat(key) == "hi"
        assert recorder.headers[-1][b"authorization"] == f"Bearer {PROVIDER_KEY}".encode()
        with gw.container.engine.connect() as conn:
            stored = conn.execute(select(webhook_endpoints.c.secret)).scalar_one()
        assert stored.startswith(f"{b}:") and hook_secret not in stored
        assert sealing.Sealer([KEY_B.encode()], sealing.WEBHOOKS).open(stored) == hook_secret
    finally:
        gw.stop()


def test_secrets_id_prints_ids_never_the_secret(cli: Any) -> None:
    result = cli("secrets", "id", stdin=PEPPER_B + "\n")
    assert result.exit_code == 0, result.output
    assert pepper_id(PEPPER_B.encode()) in result.output
    assert sealing.key_id(PEPPER_B.encode()) in result.output
    assert PEPPER_B not in result.output
