"""Leaked keys reported by a secret scanning service (GitHub's partner program): a signed report
revokes a real key everywhere within a second and emails the Owners within five; nothing else does
anything."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from starlette.responses import JSONResponse

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.audit.models import AuditFilter
from keyplane.keys.format import checksum
from keyplane.storage.notify_tables import email_outbox
from kptest import ServerThread, wait_until
from smtp_support import Inbox, SmtpServer

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
LEAKED_AT = "https://github.com/octocat/hello/blob/1a2b3c/settings.py"


class Signer:
    def __init__(self, identifier: str) -> None:
        self.identifier = identifier
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.pem = (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def headers(self, body: bytes) -> dict[str, str]:
        signature = self.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "content-type": "application/json",
            "github-public-key-identifier": self.identifier,
            "github-public-key-signature": base64.b64encode(signature).decode(),
        }


GITHUB = Signer("90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a")


@pytest.fixture
def kp(
    tmp_path: Path, simulator: ServerThread, smtp: tuple[Inbox, SmtpServer]
) -> Iterator[Keyplane]:
    instance = start_keyplane(
        tmp_path, simulator.url + "/v1", smtp_port=smtp[1].port, email_dispatch_interval_s=0.2,
        leak_report_keys={GITHUB.identifier: GITHUB.pem}, leak_report_keys_url="",
    )  # fmt: skip
    yield instance
    instance.server.stop()
    instance.container.close()


def send(kp: Keyplane, matches: list[dict[str, str]], signer: Signer = GITHUB) -> httpx.Response:
    body = json.dumps(matches).encode()
    return post(kp, body, signer.headers(body))


def post(kp: Keyplane, body: bytes, headers: dict[str, str]) -> httpx.Response:
    url = kp.server.url + "/v1/secret_scanning/reports"
    return kphttp.post(url, content=body, headers=headers)


def chat(kp: Keyplane, key: str) -> int:
    r = kphttp.post(
        kp.base_url + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}
    )
    return r.status_code


def look_alike(key: str) -> str:
    """Another secret behind the same public id, with a valid checksum: a forgery."""
    head = key[:-6]
    forged = head[:-32] + ("A" * 32 if head[-32:] != "A" * 32 else "B" * 32)
    return forged + checksum(forged)


def test_a_signed_report_revokes_a_real_key_everywhere_and_emails_the_owners(
    kp: Keyplane, smtp: tuple[Inbox, SmtpServer]
) -> None:
    inbox, _ = smtp
    _, other = kp.new_key("still fine")
    assert chat(kp, kp.key) == 200
    matches = [
        {"token": kp.key, "type": "keyplane_api_key", "url": LEAKED_AT, "source": "content"},
        {"token": look_alike(kp.key), "type": "keyplane_api_key", "url": LEAKED_AT},
        {"token": "sk-kp-proj-not-even-close", "type": "keyplane_api_key", "url": LEAKED_AT},
    ]
    reported = time.monotonic()
    r = send(kp, matches)
    assert r.status_code == 200, r.text
    assert r.json() == [
        {"token_hash": hashlib.sha256(m["token"].encode()).hexdigest(),
         "token_type": "keyplane_api_key", "label": label}
        for m, label in zip(matches, ["true_positive", "false_positive", "false_positive"],
                            strict=True)
    ]  # fmt: skip
    # Refused by the gateway within a second; the other key of the project keeps working.
    wait_until(lambda: chat(kp, kp.key) == 401, timeout=1.0)
    assert chat(kp, other) == 200
    # The Owner is told where it was found, within five seconds, and never given the secret.
    wait_until(lambda: inbox.received, timeout=5.0 - (time.monotonic() - reported))
    (mail,) = inbox.received
    assert mail.rcpt_tos == ["owner@example.com"]
    assert "leaked and was revoked" in mail.message["subject"]
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert LEAKED_AT in text and kp.key not in text and kp.key[-4:] in text
    # Audited as a revocation by the report.
    page = kp.container.audit.query(kp.org.id, AuditFilter(event_types=["api_key.deleted"]))
    (event,) = page.events
    assert event.actor.id == "secret scanning report"
    assert LEAKED_AT in event.details["reason"]
    # Reported again (GitHub retries): still a true positive, no second email.
    again = send(kp, matches[:1])
    assert again.json()[0]["label"] == "true_positive"
    assert len([k for k in _outbox_keys(kp) if k.startswith("leaked:")]) == 1


def _outbox_keys(kp: Keyplane) -> list[str]:
    with kp.container.engine.connect() as conn:
        return [r.dedupe_key for r in conn.execute(select(email_outbox.c.dedupe_key))]


@pytest.mark.parametrize(
    "how",
    ["unsigned", "unknown key", "another signer", "body changed", "not base64", "bad signature"],
)
def test_a_report_not_signed_by_a_known_key_changes_nothing(kp: Keyplane, how: str) -> None:
    body = json.dumps([{"token": kp.key, "type": "keyplane_api_key", "url": LEAKED_AT}]).encode()
    headers = GITHUB.headers(body)
    if how == "unsigned":
        headers = {"content-type": "application/json"}
    elif how == "unknown key":
        headers["github-public-key-identifier"] = "f" * 64
    elif how == "another signer":
        headers = {**Signer(GITHUB.identifier).headers(body)}
    elif how == "body changed":
        body = body.replace(b"keyplane_api_key", b"keyplane_api_kex")
    elif how == "not base64":
        headers["github-public-key-signature"] = "not base64!"
    else:
        headers["github-public-key-signature"] = base64.b64encode(
            b"\x30\x06\x02\x01\x01\x02\x01\x01"
        ).decode()
    r = post(kp, body, headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_signature"
    assert chat(kp, kp.key) == 200
    assert kp.container.keys.list(kp.org.id)[0].revoked_at is None


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b'{"token": "x"}', b'[{"token": 1}]', b'["sk-kp-proj-x"]',
     json.dumps([{"token": "x"}] * 1001).encode()],
)  # fmt: skip
def test_a_signed_report_that_is_not_a_list_of_matches_is_refused_plainly(
    kp: Keyplane, body: bytes
) -> None:
    r = post(kp, body, GITHUB.headers(body))
    assert r.status_code in (400, 413), r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


class KeyList:
    """GitHub's /meta/public_keys/secret_scanning, counting how often it is read."""

    def __init__(self, *signers: Signer) -> None:
        self.signers = list(signers)
        self.reads = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.reads += 1
        listed = [
            {"key_identifier": s.identifier, "key": s.pem, "is_current": True} for s in self.signers
        ]
        await JSONResponse({"public_keys": listed})(scope, receive, send)


def test_the_signers_keys_are_read_from_their_list(tmp_path: Path, simulator: ServerThread) -> None:
    listing = KeyList(GITHUB)
    keys = ServerThread(listing).start()
    kp = start_keyplane(
        tmp_path, simulator.url + "/v1", leak_report_keys_url=keys.url + "/secret_scanning"
    )
    try:
        r = send(kp, [{"token": kp.key, "type": "keyplane_api_key", "url": LEAKED_AT}])
        assert r.status_code == 200 and r.json()[0]["label"] == "true_positive"
        assert listing.reads == 1
        # Signers the list does not have: the list was read less than a minute ago, so a flood
        # of reports signed by made-up identifiers reads it no more (tests/unit: a minute later).
        made_up = Signer("b" * 64)
        for _ in range(3):
            assert send(kp, [{"token": "x", "type": "t", "url": "u"}], made_up).status_code == 401
        assert listing.reads == 1
    finally:
        kp.server.stop()
        kp.container.close()
        keys.stop()


def test_reports_are_not_taken_when_no_signer_is_configured(
    tmp_path: Path, simulator: ServerThread
) -> None:
    kp = start_keyplane(tmp_path, simulator.url + "/v1", leak_report_keys_url="")
    try:
        r = send(kp, [{"token": kp.key, "type": "keyplane_api_key", "url": LEAKED_AT}])
        assert r.status_code == 404
        assert chat(kp, kp.key) == 200
    finally:
        kp.server.stop()
        kp.container.close()


def test_a_large_report_and_an_odd_token_in_it_do_not_stop_the_real_key(kp: Keyplane) -> None:
    """Up to a thousand matches with long URLs (far over the Admin API's 64 KiB bodies), and a
    token that is not valid text (a lone surrogate, which JSON allows) among them."""
    filler = {"token": "sk-kp-proj-" + "Z" * 50, "type": "keyplane_api_key",
              "url": "https://github.com/some-org/repo/blob/" + "a" * 40 + "/src/settings.py"}  # fmt: skip
    body = (
        json.dumps([{"token": "\udc80x", "type": "keyplane_api_key"}, *[filler] * 998])[:-1]
        + ", "
        + json.dumps({"token": kp.key, "type": "keyplane_api_key", "url": LEAKED_AT})
        + "]"
    ).encode()
    assert len(body) > 150_000
    r = post(kp, body, GITHUB.headers(body))
    assert r.status_code == 200, r.text
    labels = [f["label"] for f in r.json()]
    assert (
        len(labels) == 1000 and labels[-1] == "true_positive" and labels.count("true_positive") == 1
    )
    wait_until(lambda: chat(kp, kp.key) == 401, timeout=1.0)
