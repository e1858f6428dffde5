"""Keys older than the rotation policy (90 days) are flagged by email to the Owners (BRIEF C2):
once per key per period, never for a key already replaced, revoked or expired."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import start_keyplane
from keyplane.clock import FrozenClock
from keyplane.keys.format import key_id, parse
from kptest import ServerThread, wait_until
from smtp_support import Inbox, Received, start_smtp

DAY = 86400


def plain_text(mail: Received) -> str:
    part = mail.message.get_body(("plain",))
    assert part is not None
    text: str = part.get_content()  # type: ignore[attr-defined]
    return text


def test_old_keys_are_reminded_once_per_period_and_rotation_ends_it(
    tmp_path: Path, simulator: ServerThread
) -> None:
    inbox = Inbox()
    smtp = start_smtp(inbox)
    clock = FrozenClock(time.time())
    kp = start_keyplane(
        tmp_path, simulator.url + "/v1", clock=clock, smtp_port=smtp.port,
        email_dispatch_interval_s=0.05,
    )  # fmt: skip
    reminder, keys = kp.container.rotation, kp.container.keys
    try:
        parsed = parse(kp.key)
        assert parsed is not None
        first = key_id(parsed.public_id)
        for kind in ("revoked", "expiring"):
            kid, _ = kp.new_key(kind, expires_in_s=30 * DAY if kind == "expiring" else None)
            if kind == "revoked":
                keys.revoke(kp.org.id, kid)
        clock.advance(10 * DAY)
        later, later_secret = kp.new_key("later")

        clock.advance(80 * DAY - 1)  # the first key is a second short of 90 days
        assert reminder.check_all() == 0
        clock.advance(1)
        assert reminder.check_all() == 1 and reminder.check_all() == 0  # once
        wait_until(lambda: len(inbox.received) == 1)
        [mail] = inbox.received
        assert mail.rcpt_tos == ["owner@example.com"]
        assert str(mail.message["Subject"]) == (
            "[keyplane] Rotate the API key 'test key': it is 90 days old"
        )
        text = plain_text(mail)
        redacted = keys.get(kp.org.id, first).redacted_value
        assert f"keyplane keys rotate {first} --grace 24h" in text and redacted in text
        assert "Use Rotate on the dashboard's API keys page" in text  # a project key
        assert kp.key not in text and kp.project.name in text

        clock.advance(10 * DAY)  # "later" is 90 days old; the first is rotated: its old key
        keys.rotate(kp.org.id, first, grace_s=DAY, created_by=None)  # works out its grace
        assert [k.id for k in reminder.due(kp.org.id)] == [later]
        assert reminder.check_all() == 1
        wait_until(lambda: len(inbox.received) == 2)
        assert "'later'" in str(inbox.received[1].message["Subject"])
        assert later_secret not in plain_text(inbox.received[1])

        clock.advance(90 * DAY)  # "later" is due again; the first's replacement is 90 days old
        due = {k.name: k for k in reminder.due(kp.org.id)}
        assert sorted(due) == ["later", "test key"] and due["later"].id == later
        assert due["test key"].rotated_from == first
        assert reminder.check_all() == 2 and reminder.check_all() == 0
    finally:
        kp.server.stop()
        kp.container.close()
        smtp.stop()
