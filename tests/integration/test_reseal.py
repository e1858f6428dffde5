"""Rotating the encryption key (sealing.py): with the old key among the previous ones everything
sealed still opens; `keyplane reseal` seals it all again with the new key, after which the old
one can go; a value no given key opens is reported, left as it is, and fails the command."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from cryptography.fernet import InvalidToken
from sqlalchemy import delete, insert, select
from typer.testing import CliRunner

from conftest import PEPPER, fresh_postgres, make_settings
from keyplane import bootstrap, sealing
from keyplane.accounts.totp import CodeCheck
from keyplane.cli import app
from keyplane.clock import FrozenClock
from keyplane.storage.notify_repository import SEALED
from keyplane.storage.notify_tables import email_outbox
from keyplane.storage.webhook_tables import webhook_endpoints

OLD, NEW, LOST = "o" * 48, "n" * 48, "l" * 48
PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        yield (
            f"sqlite:///{tmp_path / 'keyplane.db'}"
            if request.param == "sqlite"
            else stack.enter_context(fresh_postgres())
        )


def test_rotating_the_encryption_key(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FrozenClock()

    def build(key: str, *previous: str) -> bootstrap.Container:
        settings = make_settings(
            tmp_path, database_url=database_url, encryption_key=key,
            encryption_key_previous=list(previous),
        )  # fmt: skip
        return bootstrap.build(settings, clock=clock)

    def second_factor_works(c: bootstrap.Container) -> bool:
        clock.advance(30)  # (a code is good once: the next step's)
        code = pyotp.TOTP(totp_secret).at(clock.now())
        return c.auth.second_factor.verify(owner.id, code) is CodeCheck.ACCEPTED

    def email_body(c: bootstrap.Container) -> str:
        clock.advance(3600)  # (claiming leases it for a while)
        [email] = c.outbox.claim_due(clock.now(), 10, 60)
        return email.body_text

    def webhook_secret(key: str) -> str:
        with c.engine.connect() as conn:
            sealed = conn.execute(select(webhook_endpoints.c.secret)).scalar_one()
        return sealing.Sealer([key.encode()], sealing.WEBHOOKS).open(sealed)

    c = build(OLD)
    owner, org, _ = c.accounts.initialize(email="o@example.com", password=PASSWORD, org_name="A")
    setup = c.auth.second_factor.begin_setup(owner, PASSWORD)
    totp_secret = setup.secret
    c.auth.second_factor.enable(
        owner.id, setup.setup_token, pyotp.TOTP(totp_secret).at(clock.now())
    )
    c.outbox.enqueue("mail-1", ["o@example.com"], "Hi", "a secret link", "<p>link</p>",
                     now=clock.now())  # fmt: skip
    _, hook_secret = c.webhooks.create(org.id, "https://hooks.example/x", ["api_key.leaked"])
    c.close()

    c = build(NEW)  # the new key alone opens nothing sealed before
    with pytest.raises(InvalidToken):
        email_body(c)
    with pytest.raises(InvalidToken):
        second_factor_works(c)
    c.close()

    c = build(NEW, OLD)  # with the old one among the previous keys, everything opens
    assert email_body(c) == "a secret link"
    assert second_factor_works(c)
    assert webhook_secret(OLD) == hook_secret
    # One value sealed with a key that is lost: reported, left as it is.
    lost = sealing.Sealer([LOST.encode()], sealing.OUTBOX).seal("gone")
    with c.engine.begin() as conn:
        conn.execute(
            insert(email_outbox).values(
                id="em_lost", dedupe_key="mail-lost", recipients="[]", subject="s",
                body_text=SEALED + lost, created_at=0, attempts=0, next_attempt_at=0,
            )
        )  # fmt: skip
    c.close()

    monkeypatch.setenv("KEYPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEYPLANE_DATABASE_URL", database_url)
    monkeypatch.setenv("KEYPLANE_PEPPER", PEPPER)
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY", NEW)
    monkeypatch.setenv("KEYPLANE_ENCRYPTION_KEY_PREVIOUS", json.dumps([OLD]))
    runner = CliRunner()
    result = runner.invoke(app, ["reseal", "--json"])
    assert result.exit_code == 1, result.output
    report: list[dict[str, Any]] = json.loads(result.output[: result.output.rindex("]") + 1])
    assert [(r["what"], r["resealed"], r["unreadable"]) for r in report] == [
        ("email bodies (text)", 1, 1), ("email bodies (HTML)", 1, 0),
        ("webhook signing secrets", 1, 0), ("two-factor secrets", 1, 0),
    ]  # fmt: skip
    assert "1 sealed values were sealed with a key" in result.output

    c = build(NEW)  # the old key is no longer needed
    assert second_factor_works(c)
    assert webhook_secret(NEW) == hook_secret
    with pytest.raises(InvalidToken):
        webhook_secret(OLD)
    with c.engine.begin() as conn:
        assert conn.execute(select(email_outbox.c.body_text).where(email_outbox.c.id == "em_lost")
                            ).scalar_one() == SEALED + lost  # fmt: skip
        conn.execute(delete(email_outbox).where(email_outbox.c.id == "em_lost"))
    assert email_body(c) == "a secret link"
    c.close()
    result = runner.invoke(app, ["reseal"])
    assert result.exit_code == 0, result.output
    assert "the previous keys can be removed" in result.output
