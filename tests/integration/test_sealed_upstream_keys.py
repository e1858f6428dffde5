"""Provider keys sealed in the configuration (BRIEF C3): `keyplane seal` turns one into a
``sealed:…`` value for KEYPLANE_UPSTREAMS or the TOML file, the gateway opens it with the
encryption key (or a previous one) and the upstream sees the key in clear; a value the keys do not
open stops `serve` and `dev` with one line naming the upstream; `keyplane reseal` names the keys to
seal again after a rotation."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

from conftest import PEPPER, make_settings, start_keyplane
from keyplane import bootstrap, gateway_assembly, sealing, upstream_keys
from keyplane.cli import app
from keyplane.cli import sealed as sealed_cli
from keyplane.config import UpstreamSettings, load_settings
from kptest import ChatRecorder, chat_recorder

PROVIDER_KEY = "sk-provider-" + "Q" * 36
OLD, NEW, LOST = "o" * 48, "n" * 48, "l" * 48


@pytest.fixture
def upstream() -> Iterator[tuple[ChatRecorder, str]]:
    with chat_recorder() as served:
        yield served


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs `keyplane …` as an operator would, on this test's data directory."""
    monkeypatch.setenv("KEYPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEYPLANE_PEPPER", PEPPER)
    monkeypatch.setenv("COLUMNS", "1000")  # (a one-line error is not wrapped)
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None) -> Any:
        return runner.invoke(app, list(args), input=stdin)

    return invoke


def seal(cli: Any, secret: str = PROVIDER_KEY) -> str:
    """`keyplane seal` with the key piped in: the sealed value it prints, and nothing else."""
    result = cli("seal", stdin=secret + "\n")
    assert result.exit_code == 0, result.output
    value: str = result.stdout.strip()
    assert value.startswith("sealed:") and "\n" not in value
    assert secret not in result.output
    return value


def authorization_sent(
    upstream: tuple[ChatRecorder, str], tmp_path: Path, **settings: Any
) -> bytes:
    """Serves keyplane (``start_keyplane``, these settings) and makes one chat completion through
    it with the OpenAI SDK: the Authorization header the upstream received."""
    recorder, _ = upstream
    kp = start_keyplane(tmp_path, "", **settings)
    try:
        with openai.OpenAI(base_url=kp.base_url, api_key=kp.key, max_retries=0) as client:
            reply = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        assert reply.choices[0].message.content == "hi"
    finally:
        kp.server.stop()
        kp.container.close()
    return recorder.headers[-1][b"authorization"]


@pytest.mark.parametrize("where", ["toml", "environment"])
def test_a_sealed_provider_key_reaches_the_upstream_in_clear(
    where: str, cli: Any, upstream: tuple[ChatRecorder, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """No encryption key configured (development): `seal` uses the one generated into the data
    directory, as `serve` does."""
    value = seal(cli)
    assert (tmp_path / "encryption_key.secret").exists()
    if where == "toml":
        config = tmp_path / "keyplane.toml"
        config.write_text(
            f'[[upstreams]]\nname = "openai"\nbase_url = "{upstream[1]}"\napi_key = "{value}"\n'
        )
        monkeypatch.setenv("KEYPLANE_CONFIG", str(config))
        assert PROVIDER_KEY not in config.read_text()
    else:
        upstreams = [{"name": "openai", "base_url": upstream[1], "api_key": value}]
        monkeypatch.setenv("KEYPLANE_UPSTREAMS", json.dumps(upstreams))
    configured = load_settings().upstreams  # (as `keyplane serve` reads them)
    assert [u.name for u in configured] == ["openai"]
    sent = authorization_sent(upstream, tmp_path, upstreams=configured, encryption_key=None)
    assert sent == f"Bearer {PROVIDER_KEY}".encode()


def test_a_clear_provider_key_still_works(
    upstream: tuple[ChatRecorder, str], tmp_path: Path
) -> None:
    configured = [UpstreamSettings(name="openai", base_url=upstream[1], api_key=PROVIDER_KEY)]
    sent = authorization_sent(upstream, tmp_path, upstreams=configured)
    assert sent == f"Bearer {PROVIDER_KEY}".encode()


def test_a_key_sealed_with_another_key_stops_serve_and_dev_with_one_line(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", LOST)
    value = seal(cli)
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", NEW)
    # The port is taken: a command that went on to serve would fail there, not hang.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    runs = []
    try:
        serve = ["serve", "--port", port, "--upstream", "http://127.0.0.1:9/v1"]
        runs.append(("cli", cli(*serve, "--upstream-key", value)))
        named = {"name": "openai", "base_url": "https://api.openai.com/v1", "api_key": value}
        monkeypatch.setenv("KEYPLANE_UPSTREAMS", json.dumps([named]))
        runs.append(("openai", cli("dev", "--port", port)))
        unnamed = {"base_url": "http://gpu-box:8000/v1", "api_key": value}  # named by its URL
        monkeypatch.setenv("KEYPLANE_UPSTREAMS", json.dumps([unnamed]))
        runs.append(("http://gpu-box:8000/v1", cli("serve", "--port", port)))
    finally:
        taken.close()
    for name, result in runs:
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith(f"error: upstream '{name}': the encryption key does not open")
        assert "keyplane seal" in line
        assert value not in line and value.removeprefix("sealed:")[:16] not in line
        assert PROVIDER_KEY not in line and NEW not in line and LOST not in line
        assert "Owner login" not in result.output


def test_a_value_sealed_for_another_purpose_does_not_open_as_an_upstream_key(
    tmp_path: Path,
) -> None:
    """The same encryption key, another purpose (a webhook secret's): not an upstream key."""

    def gateway_with(value: str) -> None:
        configured = [UpstreamSettings(name="openai", base_url="http://x/v1", api_key=value)]
        c = bootstrap.build(make_settings(tmp_path, encryption_key=NEW, upstreams=configured))
        try:
            gateway_assembly.build_app(c)
        finally:
            c.close()

    gateway_with(sealing.seal([NEW.encode()], sealing.UPSTREAMS, PROVIDER_KEY))
    for label in (sealing.WEBHOOKS, sealing.TOTP, sealing.OUTBOX):
        with pytest.raises(upstream_keys.UnopenedUpstreamKey, match="upstream 'openai'"):
            gateway_with(sealing.seal([NEW.encode()], label, PROVIDER_KEY))
    with pytest.raises(upstream_keys.UnopenedUpstreamKey):
        gateway_with("sealed:not-a-token")


def test_rotating_the_encryption_key(
    cli: Any, upstream: tuple[ChatRecorder, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealed with the old key, which is now a previous one: still opens; `reseal` says to seal it
    again (exiting 0: its exit code is about values none of the keys opens), and once it is
    sealed again with the new key, that the previous keys can go."""
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", OLD)
    value = seal(cli)
    configured = [UpstreamSettings(name="openai", base_url=upstream[1], api_key=value)]
    sent = authorization_sent(
        upstream, tmp_path, upstreams=configured, encryption_key=NEW,
        encryption_key_previous=[OLD],
    )  # fmt: skip
    assert sent == f"Bearer {PROVIDER_KEY}".encode()

    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", NEW)
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY_PREVIOUS", json.dumps([OLD]))

    def configure(sealed_value: str) -> None:
        upstreams = [{"name": "openai", "base_url": upstream[1], "api_key": sealed_value}]
        monkeypatch.setenv("KEYPLANE_UPSTREAMS", json.dumps(upstreams))

    def upstream_rows(result: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(result.stdout[: result.stdout.rindex("]") + 1])
        assert {"what", "resealed", "unreadable", "previous_key_only", "action"} <= set(rows[0])
        return [r for r in rows if r["what"].startswith("upstream key")]

    configure(value)
    human = cli("reseal")
    assert human.exit_code == 0, human.output
    text = " ".join(human.output.split())
    assert "Upstream 'openai': its key in the configuration opens only with a previous" in text
    assert "seal it again with `keyplane seal` and replace it in your configuration" in text
    assert "the previous keys can be removed" not in text and value not in human.output
    as_json = cli("reseal", "--json")
    assert as_json.exit_code == 0, as_json.output
    [row] = upstream_rows(as_json)
    assert row["what"] == "upstream key: openai (configuration)"
    assert (row["previous_key_only"], row["unreadable"]) == (1, 0)
    assert "keyplane seal" in row["action"]

    configure(seal(cli))  # sealed again, with the new key
    done = cli("reseal")
    assert done.exit_code == 0 and "the previous keys can be removed" in done.output
    assert upstream_rows(cli("reseal", "--json")) == []

    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", LOST)
    lost = seal(cli)
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", NEW)
    configure(lost)  # none of the keys opens it: as a value none opens in the database
    failed = cli("reseal", "--json")
    assert failed.exit_code == 1
    [row] = upstream_rows(failed)
    assert (row["previous_key_only"], row["unreadable"]) == (0, 1)
    assert "1 sealed values were sealed with a key" in failed.output and lost not in failed.output


def test_seal_at_a_terminal_asks_twice_hidden(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealed_cli, "_at_terminal", lambda: True)
    result = cli("seal", stdin=f"{PROVIDER_KEY}\n{PROVIDER_KEY}\n")
    assert result.exit_code == 0, result.output
    assert PROVIDER_KEY not in result.output
    [value] = [line for line in result.stdout.splitlines() if line.startswith("sealed:")]
    keys = load_settings().encryption_keys()
    assert sealing.unseal(keys, sealing.UPSTREAMS, value) == (PROVIDER_KEY, 0)
    differ = cli("seal", stdin=f"{PROVIDER_KEY}\nsk-other\n")
    assert differ.exit_code != 0 and "sealed:" not in differ.output
    assert PROVIDER_KEY not in differ.output


def test_seal_refuses_nothing_and_more_than_one_line(cli: Any) -> None:
    for stdin in ("", "\n  \n"):
        result = cli("seal", stdin=stdin)
        assert result.exit_code == 1
        assert result.output.strip() == "error: nothing to seal: the provider key is empty"
    result = cli("seal", stdin=f"{PROVIDER_KEY}\nsk-second\n")
    assert result.exit_code == 1 and "one key" in result.output
    assert PROVIDER_KEY not in result.output
