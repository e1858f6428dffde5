"""Webhooks (BRIEF C6, C7): an Owner registers an endpoint, and the events it chose arrive signed,
once each, retried until it answers, and never to this machine or a private network unless the
operator allows it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import kphttp
from conftest import Keyplane, initialized, start_keyplane
from keyplane.audit.models import Actor, ActorType
from keyplane.clock import FrozenClock
from keyplane.errors import InvalidRequest
from keyplane.keys.format import KeyKind
from keyplane.notify.webhooks import RETRIES_S, WebhookDispatcher, failure_text
from keyplane.storage.webhook_tables import webhook_deliveries
from keyplane.webhook_http import HttpPoster
from kptest import ServerThread, read_body, wait_until

ORG = "/v1/organization"
FINDER = Actor(ActorType.SYSTEM, "test")


class Receiver:
    """An endpoint that keeps what it is sent and answers ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append((headers, body))
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, ServerThread]]:
    r = Receiver()
    server = ServerThread(r).start()
    yield r, server
    server.stop()


@pytest.fixture
def kp(tmp_path: Path, simulator: ServerThread) -> Iterator[Keyplane]:
    instance = start_keyplane(
        tmp_path, simulator.url + "/v1", webhook_allow_private_addresses=True,
        webhook_dispatch_interval_s=0.05,
    )  # fmt: skip
    yield instance
    instance.server.stop()
    instance.container.close()


def admin_key(kp: Keyplane) -> str:
    _, secret = kp.container.keys.create(
        kind=KeyKind.ADMIN, org_id=kp.org.id, project_id=None, name="admin", owner_type="user",
        owner_id=kp.owner.id, created_by=kp.owner.id,
    )  # fmt: skip
    return secret


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in headers["keyplane-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts["v1"])


def test_an_endpoint_gets_the_events_it_chose_signed_and_once(
    kp: Keyplane, receiver: tuple[Receiver, ServerThread]
) -> None:
    hook, server = receiver
    auth = {"authorization": f"Bearer {admin_key(kp)}"}
    created = kphttp.post(
        kp.server.url + ORG + "/webhooks", headers=auth,
        json={"url": server.url + "/hooks", "events": ["api_key.leaked"]},
    )  # fmt: skip
    assert created.status_code == 200, created.text
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    listed = kphttp.get(kp.server.url + ORG + "/webhooks", headers=auth).json()["data"]
    assert [w["id"] for w in listed] == [created.json()["id"]] and "secret" not in listed[0]
    with kp.container.engine.connect() as conn:  # stored sealed, never in the clear
        assert secret not in str(conn.exec_driver_sql("SELECT * FROM webhook_endpoints").all())

    key = kp.container.leaks.key_of(kp.key)
    assert key is not None
    assert kp.container.leaks.revoke(key, "https://example.com/paste", FINDER, "a test")
    wait_until(lambda: hook.received, timeout=5)
    ((headers, body),) = hook.received
    assert verify(secret, headers, body)
    event = json.loads(body)
    assert event["type"] == "api_key.leaked" and event["object"] == "event"
    assert event["data"]["api_key_id"] == key.id
    assert event["data"]["found_at"] == "https://example.com/paste"
    assert kp.key not in body.decode() and kp.key[-10:] not in body.decode()
    assert headers["keyplane-event-type"] == "api_key.leaked"
    # The same event again (a retried report) is not sent twice; other events were not chosen.
    kp.container.webhooks.publish(
        kp.org.id, "api_key.leaked", {"api_key_id": key.id}, f"leaked:{key.id}"
    )
    kp.container.webhooks.publish(kp.org.id, "spend_alert.triggered", {}, "spend_alert:x:2026-12")
    with kp.container.engine.connect() as conn:
        assert len(conn.execute(select(webhook_deliveries)).all()) == 1
    # Deleted: nothing more arrives.
    gone = kphttp.delete(kp.server.url + ORG + f"/webhooks/{created.json()['id']}", headers=auth)
    assert gone.json() == {"object": "webhook.deleted", "id": created.json()["id"], "deleted": True}
    assert kp.container.webhooks.publish(kp.org.id, "api_key.leaked", {}, "leaked:other") == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://hooks.example/x", "events": ["api_key.leaked"]}, "url"),
        ({"url": "https://user:pw@hooks.example/x", "events": ["api_key.leaked"]}, "url"),
        ({"url": "https://hooks.example/x", "events": ["api_key.stolen"]}, "events"),
        ({"url": "https://hooks.example/x", "events": []}, "events"),
    ],
)
def test_a_bad_endpoint_is_refused_naming_the_field(
    kp: Keyplane, body: dict[str, Any], param: str
) -> None:
    r = kphttp.post(
        kp.server.url + ORG + "/webhooks", json=body,
        headers={"authorization": f"Bearer {admin_key(kp)}"},
    )  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param)


def test_failed_deliveries_are_retried_on_schedule_then_given_up(tmp_path: Path) -> None:
    clock = FrozenClock()
    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1", clock=clock)
    try:
        c.webhooks.create(org.id, "https://hooks.example/x", ["organization.tier_promoted"])
        statuses = [503, 500]
        sent: list[str] = []

        async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
            sent.append(url)
            if statuses:
                return statuses.pop(0)
            raise OSError("connection refused")

        dispatcher = WebhookDispatcher(c.webhook_store, post, clock)
        assert c.webhooks.publish(org.id, "organization.tier_promoted", {"tier": "t"}, "tier:1")
        run = lambda: asyncio.run(dispatcher.run_once())  # noqa: E731
        assert run() == 0 and len(sent) == 1  # 503
        assert run() == 0 and len(sent) == 1  # not due yet
        for wait in RETRIES_S:
            clock.advance(wait)
            run()
        assert len(sent) == 1 + len(RETRIES_S)
        clock.advance(10 * 86400)
        run()
        assert len(sent) == 1 + len(RETRIES_S)  # given up
        with c.engine.connect() as conn:
            (row,) = conn.execute(select(webhook_deliveries)).all()
        assert row.next_attempt_at is None and row.delivered_at is None
        assert row.last_error == "could not connect: connection refused"
        assert row.attempts == 1 + len(RETRIES_S)
        # A delivery that succeeds is not sent again.
        statuses[:] = [204]
        c.webhooks.publish(org.id, "organization.tier_promoted", {"tier": "u"}, "tier:2")
        assert run() == 1
        clock.advance(86400)
        assert run() == 0 and len(sent) == 2 + len(RETRIES_S)
    finally:
        c.close()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/x", "http://localhost/x", "http://169.254.169.254/latest/meta-data",
     "http://10.1.2.3/x", "http://[::1]/x", "http://[64:ff9b::a01:203]/x",
     # (endpoints added before their names were checked: the same check at delivery)
     "http://localhost.:18999/x", "http://LOCALHOST./x", "http://intranet/x",
     "http://metadata.google.internal/x", "http://0/x", "http://[::127.0.0.1]/x"],
)  # fmt: skip
def test_deliveries_to_this_machine_or_private_networks_are_refused(url: str) -> None:
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    poster = HttpPoster(allow_private=False, transport=httpx.MockTransport(handle))
    with pytest.raises(OSError, match="not a public address"):
        asyncio.run(poster(url, b"{}", {}))
    assert calls == []
    allowed = HttpPoster(allow_private=True, transport=httpx.MockTransport(handle))
    assert asyncio.run(allowed(url, b"{}", {})) == 200


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/x", "http://localhost:8080/x", "http://127.1/x", "http://2130706433/x",
     "http://0x7f000001/x", "http://[::ffff:127.0.0.1]/x", "http://169.254.169.254/x",
     "http://0.0.0.0/x", "http://[::]/x", "https://10.0.0.8/x", "http://[::1/x",
     "http://[64:ff9b::7f00:1]/x", "http://[2002:7f00:1::1]/x",
     "http://hooks.example:99999/x",
     # A name is compared as the resolver looks it up: lower case, without the trailing dot of a
     # fully qualified name, international names in their ASCII form.
     "http://localhost./x", "http://localhost.:18999/h", "http://LOCALHOST.:18999/h",
     "http://api.localhost./x", "http://localhost\u3002/x", "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/x",
     "http://127.1./x", "http://0/x", "http://0177.0.0.1/x", "http://[::127.0.0.1]/x",
     # Names that only lead inside: one label (completed with the machine's search domains),
     # mDNS, ICANN's internal, home.arpa, /etc/hosts's localdomain.
     "http://intranet/x", "http://printer.local/x", "http://metadata.google.internal./x",
     "http://router.home.arpa/x", "http://db.localdomain/x", "http://hooks..example/x"],
)  # fmt: skip
def test_an_endpoint_that_could_never_be_delivered_to_is_refused_when_created(
    tmp_path: Path, url: str
) -> None:
    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1")
    try:
        with pytest.raises(InvalidRequest) as refused:
            c.webhooks.create(org.id, url, ["api_key.leaked"])
        assert refused.value.param == "url"
        assert c.webhooks.endpoints(org.id) == []
    finally:
        c.close()


def test_a_public_name_is_accepted_with_or_without_its_trailing_dot(tmp_path: Path) -> None:
    c, _, org, _, _ = initialized(tmp_path, "http://sim/v1")
    try:
        for url in (
            "https://hooks.example./x",
            "https://Hooks.Example/y",
            "https://93.184.216.34/z",
        ):
            c.webhooks.create(org.id, url, ["api_key.leaked"])
        assert len(c.webhooks.endpoints(org.id)) == 3
    finally:
        c.close()


def test_a_delivery_connects_to_the_address_it_checked() -> None:
    """The name is resolved once: a DNS answer that changes after the check (rebinding) cannot
    move the delivery to a private address; the name stays in Host (and in TLS)."""
    answers = [["93.184.216.34"], ["127.0.0.1"]]
    seen: list[httpx.Request] = []

    async def resolver(host: str, port: int) -> list[str]:
        return answers.pop(0)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    poster = HttpPoster(
        allow_private=False, transport=httpx.MockTransport(handle), resolver=resolver
    )
    assert asyncio.run(poster("https://hooks.example:8443/kp?x=1", b"{}", {})) == 204
    (request,) = seen
    assert str(request.url) == "https://93.184.216.34:8443/kp?x=1"
    assert request.headers["host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"
    assert answers == [["127.0.0.1"]]  # resolved once


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (TimeoutError(), "no answer within 10 s"),
        (socket.gaierror(-2, "Name or service not known"),
         "the host name does not resolve (Name or service not known)"),
        (ConnectionRefusedError(111, "Connection refused"), "could not connect: Connection refused"),
        (OSError("[Errno 111] Connection refused"), "could not connect: Connection refused"),
        (OSError("refused: 10.0.0.1 is not a public address"),
         "refused: 10.0.0.1 is not a public address"),
        (OSError(), "could not connect: OSError"),
    ],
)  # fmt: skip
def test_a_failed_delivery_says_why_in_words(exc: OSError | TimeoutError, shown: str) -> None:
    assert failure_text(exc) == shown
