"""Notification thresholds: exactly one email per threshold per month to the Owners, through an
SMTP outage and a restart (BRIEF C6)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select
from test_money import bodies, fire

from conftest import start_keyplane
from keyplane import bootstrap, gateway_assembly
from keyplane.clock import FrozenClock
from keyplane.storage.notify_tables import email_outbox
from kptest import ServerThread, just_before_month_end, wait_until
from smtp_support import Inbox, SmtpServer


def outbox_rows(container: bootstrap.Container) -> list[dict[str, object]]:
    with container.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(email_outbox)).mappings()]


def test_each_threshold_emails_the_owners_once_despite_an_outage_and_a_restart(
    tmp_path: Path, obedient_simulator: ServerThread, smtp: tuple[Inbox, SmtpServer]
) -> None:
    inbox, server = smtp
    inbox.refuse = True  # the mail server is down when the thresholds are crossed
    # An hour before a month ends: the thresholds are a month's, and the 20 minutes the clock
    # moves on stay in it (a restart must not email them again within the month).
    clock = FrozenClock(just_before_month_end() - 3600)
    options = {"smtp_port": server.port, "email_dispatch_interval_s": 0.05}
    kp = start_keyplane(tmp_path, obedient_simulator.url + "/v1", clock=clock, **options)
    billing = kp.container.billing
    for amount in (25_000, 40_000):  # 50% and 80% of $0.05
        billing.add_alert(kp.org.id, amount)
    billing.add_alert(kp.org.id, 50_000, project_id=kp.project.id)  # 100%, of the one project
    try:
        responses = asyncio.run(fire(kp, bodies(50), concurrency=50))
        assert all(r.status_code == 200 for r in responses)
        spent = sum(r.cost_micro_usd for r in kp.usage(expect=50))
        assert spent >= 50_000
        # Three messages wait in the outbox, refused at least once each.
        wait_until(
            lambda: (
                len(outbox_rows(kp.container)) == 3
                and all(r["attempts"] for r in outbox_rows(kp.container))
            )
        )
        assert inbox.received == []
        inbox.refuse = False
        clock.advance(20 * 60)  # past any retry backoff
        wait_until(lambda: len(inbox.received) == 3)
    finally:
        kp.server.stop()
    # A restart forgets what this process notified; the outbox remembers.
    gateway = gateway_assembly.build_gateway(kp.container)
    kp.gateway, kp.server = gateway, ServerThread(gateway).start()
    try:
        assert all(r.status_code == 200 for r in asyncio.run(fire(kp, bodies(3))))
        kp.usage(expect=53)
        kp.flush()
        assert len(outbox_rows(kp.container)) == 3
        assert all(r["sent_at"] is not None for r in outbox_rows(kp.container))
    finally:
        kp.server.stop()
        kp.container.close()
    subjects = sorted(str(r.message["Subject"]) for r in inbox.received)
    assert sorted(s.split(" reached ")[1].split(" of spend")[0] for s in subjects) == [
        "$0.025",
        "$0.04",
        "$0.05",
    ]
    assert all(r.rcpt_tos == ["owner@example.com"] for r in inbox.received)
    assert any(f"[keyplane] project {kp.project.name} of Acme reached $0.05" in s for s in subjects)
    assert len(inbox.received) == 3
