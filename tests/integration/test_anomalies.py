"""Anomaly alerts (BRIEF C7): a key used from a new network, and a key spending far faster than its
usual hour, reach the Owners by email, the audit log and webhooks, once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

import kphttp
from conftest import Keyplane, initialized, start_keyplane
from keyplane import bootstrap
from keyplane.audit.models import AuditFilter
from keyplane.clock import FrozenClock
from keyplane.keys.format import KeyKind
from keyplane.storage.notify_tables import email_outbox
from keyplane.storage.webhook_tables import webhook_deliveries
from kptest import ServerThread, wait_until

HOUR = 3600


def outbox(c: bootstrap.Container) -> list[str]:
    with c.engine.connect() as conn:
        return [r.subject for r in conn.execute(select(email_outbox))]


def events(c: bootstrap.Container, org_id: str, kind: str) -> list[str]:
    page = c.audit.query(org_id, AuditFilter(event_types=[kind]))
    return [str(e.details.get("reason")) for e in page.events]


def networks(kp: Keyplane) -> list[object]:
    with kp.container.engine.connect() as conn:
        return list(conn.exec_driver_sql("SELECT network FROM key_networks").all())


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[bootstrap.Container, str, str, FrozenClock]]:
    clock = FrozenClock(1_800_000_000.0)
    c, owner, org, project, _ = initialized(tmp_path, "http://sim/v1", clock=clock)
    key, _ = c.keys.create(
        kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name="prod app",
        owner_type="user", owner_id=owner.id, created_by=owner.id,
    )  # fmt: skip
    c.webhooks.create(org.id, "https://hooks.example/kp", ["api_key.new_network"])
    yield c, org.id, key.id, clock
    c.close()


def test_every_new_network_of_a_key_is_audited_and_sent_and_emailed_once_a_day(
    setup: tuple[bootstrap.Container, str, str, FrozenClock],
) -> None:
    c, org, key, clock = setup
    watch = c.anomalies.check
    assert watch({(org, key, "198.51.100.7"): None}, {}) == 0  # its first network: the baseline
    assert watch({(org, key, "198.51.100.200"): None}, {}) == 0  # the same /24
    assert watch({(org, key, "203.0.113.9"): None, (org, key, "2001:db8::1"): None}, {}) == 2
    (subject,) = outbox(c)
    assert subject == "[keyplane] Unusual use of the API key 'prod app'"
    reasons = sorted(events(c, org, "api_key.new_network"))
    assert reasons == [
        "used from 2001:db8::1 (2001:db8::/48), where it was never used before",
        "used from 203.0.113.9 (203.0.113.0/24), where it was never used before",
    ]
    with c.engine.connect() as conn:
        deliveries = conn.execute(select(webhook_deliveries)).all()
    assert len(deliveries) == 2 and all(key in d.body for d in deliveries)
    # Another new network the same day (an attacker after the owner's own new office): audited
    # and sent, not emailed again; the next day's first one is emailed.
    assert watch({(org, key, "192.0.2.1"): None}, {}) == 1
    assert len(outbox(c)) == 1 and len(events(c, org, "api_key.new_network")) == 3
    clock.advance(24 * HOUR)
    assert watch({(org, key, "100.64.0.1"): None}, {}) == 1
    assert len(outbox(c)) == 2
    assert watch({(org, key, "100.64.0.99"): None}, {}) == 0  # known by now


def test_a_key_spending_far_above_its_usual_hour_is_reported(
    setup: tuple[bootstrap.Container, str, str, FrozenClock],
) -> None:
    c, org, key, clock = setup
    now_hour = int(clock.now()) // HOUR
    # Two days at ten cents an hour.
    c.anomalies.check({}, {(org, key, now_hour - h): 100_000 for h in range(1, 49)})
    assert c.anomalies.check({}, {(org, key, now_hour): 4_000_000}) == 0  # 40x, but under $5
    assert c.anomalies.check({}, {(org, key, now_hour): 2_000_000}) == 1  # $6: 60x its hour
    (reason,) = events(c, org, "api_key.spend_spike")
    assert "spent $6.00 this hour" in reason and "($0.10)" in reason
    assert c.anomalies.check({}, {(org, key, now_hour): 1_000_000}) == 1  # (the email: once)
    assert len(outbox(c)) == 1


def test_a_new_key_has_no_usual_hour_to_exceed(
    setup: tuple[bootstrap.Container, str, str, FrozenClock],
) -> None:
    c, org, key, clock = setup
    now_hour = int(clock.now()) // HOUR
    c.anomalies.check({}, {(org, key, now_hour - 3): 1_000})
    assert c.anomalies.check({}, {(org, key, now_hour): 50_000_000}) == 0
    assert outbox(c) == []


@pytest.fixture
def behind_proxy(tmp_path: Path, simulator: ServerThread) -> Iterator[Keyplane]:
    """A gateway behind a proxy on 127.0.0.1 (X-Forwarded-For gives the client), looking for
    anomalies twenty times a second."""
    kp = start_keyplane(
        tmp_path, simulator.url + "/v1", trusted_proxies=["127.0.0.1/32"],
        anomaly_check_interval_s=0.05,
    )  # fmt: skip
    yield kp
    kp.server.stop()
    kp.container.close()


def test_through_the_gateway_a_request_from_a_new_network_alerts_the_owners(
    behind_proxy: Keyplane,
) -> None:
    kp = behind_proxy
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    def call(address: str) -> None:
        r = kphttp.post(
            kp.base_url + "/chat/completions", json=body,
            headers={"authorization": f"Bearer {kp.key}", "x-forwarded-for": address},
        )  # fmt: skip
        assert r.status_code == 200, r.text

    call("198.51.100.7")
    kp.usage(expect=1)
    wait_until(lambda: networks(kp))  # the first network: the baseline
    call("198.51.100.8")  # the same network
    call("203.0.113.50")
    wait_until(lambda: outbox(kp.container), timeout=10)
    assert outbox(kp.container) == ["[keyplane] Unusual use of the API key 'test key'"]
    # (the email is queued a moment before the audit entry is written)
    (reason,) = wait_until(lambda: events(kp.container, kp.org.id, "api_key.new_network"))
    assert reason.startswith("used from 203.0.113.50 (203.0.113.0/24)")


def test_an_admin_key_used_from_a_new_network_alerts_too(behind_proxy: Keyplane) -> None:
    kp = behind_proxy
    _, admin = kp.container.keys.create(
        kind=KeyKind.ADMIN, org_id=kp.org.id, project_id=None, name="ops", owner_type="user",
        owner_id=kp.owner.id, created_by=kp.owner.id,
    )  # fmt: skip

    def call(address: str) -> None:
        r = kphttp.get(
            kp.server.url + "/v1/organization/credit_balance",
            headers={"authorization": f"Bearer {admin}", "x-forwarded-for": address},
        )  # fmt: skip
        assert r.status_code == 200, r.text

    call("198.51.100.7")
    wait_until(lambda: networks(kp))  # the first network: the baseline
    call("203.0.113.50")
    wait_until(lambda: events(kp.container, kp.org.id, "api_key.new_network"), timeout=10)
    (reason,) = events(kp.container, kp.org.id, "api_key.new_network")
    assert reason.startswith("used from 203.0.113.50")
