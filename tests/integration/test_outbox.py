"""The email outbox against a real SMTP server (aiosmtpd) and real databases (SQLite, PostgreSQL).

A message is enqueued once per dedupe key and delivered exactly once, through refusals, outages,
competing dispatchers and a dispatcher that dies holding a lease.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import traceback
from base64 import b64encode
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import MIMEPart
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr
from sqlalchemy import Engine, select

from keyplane.clock import FrozenClock
from keyplane.notify.dispatcher import MAX_DELAY_S, EmailDispatcher
from keyplane.notify.ports import MailError
from keyplane.notify.smtp import SmtpMailer
from keyplane.storage import migrate
from keyplane.storage.engine import make_engine
from keyplane.storage.notify_repository import SqlOutbox
from keyplane.storage.notify_tables import email_outbox
from kptest import wait_until
from smtp_support import Inbox, SmtpServer, start_smtp

FROM = "keyplane <noreply@keyplane.test>"
PASSWORD = "hunter2-smtp-Secret-9f3a"
LEASE_S = 300


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp(inbox: Inbox) -> Iterator[SmtpServer]:
    server = start_smtp(inbox)
    yield server
    server.stop()


def sqlite_engine(path: Path) -> Engine:
    return make_engine(f"sqlite:///{path / 'outbox.db'}")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sqlite_engine(tmp_path)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


def mailer(port: int, **kwargs: Any) -> SmtpMailer:
    return SmtpMailer("127.0.0.1", port, mail_from=FROM, timeout_s=5, **kwargs)


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execute(select(email_outbox).order_by(email_outbox.c.dedupe_key))
        return [dict(r) for r in result.mappings()]


def text(part: MIMEPart) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # SMTP carries CRLF line ends


def enqueue_n(outbox: SqlOutbox, n: int, now: float) -> None:
    for i in range(n):
        assert outbox.enqueue(f"msg-{i:03d}", [f"owner{i}@example.com"], f"#{i}", "hi", now=now)


def run(dispatcher: EmailDispatcher) -> int:
    return asyncio.run(dispatcher.run_once())


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Runs fn(0..n-1) in n threads released together; returns the results in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_enqueue_twice_with_one_dedupe_key_stores_one_message(
    engine: Engine, clock: FrozenClock
) -> None:
    outbox = SqlOutbox(engine)
    assert outbox.enqueue(
        "threshold:org_1:2026-11:50", ["a@example.com"], "S", "B", now=clock.now()
    )
    assert not outbox.enqueue("threshold:org_1:2026-11:50", ["b@example.com"], "S2", "B2", now=1)
    [row] = rows(engine)
    assert json.loads(row["recipients"]) == ["a@example.com"] and row["subject"] == "S"
    with pytest.raises(ValueError, match="recipient"):
        outbox.enqueue("other", [], "S", "B", now=clock.now())


def test_twenty_processes_racing_one_dedupe_key_store_exactly_one(
    engine: Engine, tmp_path: Path, clock: FrozenClock
) -> None:
    engines = [sqlite_engine(tmp_path) for _ in range(20)]  # one per "gateway process"
    try:
        won = race(
            20,
            lambda i: SqlOutbox(engines[i]).enqueue(
                "threshold:org_1:2026-11:80", [f"o{i}@example.com"], "80 %", "b", now=clock.now()
            ),
        )
    finally:
        for e in engines:
            e.dispose()
    assert won.count(True) == 1 and won.count(False) == 19
    assert len(rows(engine)) == 1


def test_refusals_are_counted_and_retried_until_each_message_is_delivered_once(
    engine: Engine, smtp: SmtpServer, inbox: Inbox, clock: FrozenClock
) -> None:
    outbox = SqlOutbox(engine)
    enqueue_n(outbox, 3, clock.now())
    dispatcher = EmailDispatcher(outbox, mailer(smtp.port), clock)
    inbox.refuse = True

    assert run(dispatcher) == 0
    assert [r["attempts"] for r in rows(engine)] == [1, 1, 1]
    assert all("451" in r["last_error"] and r["sent_at"] is None for r in rows(engine))
    assert all(r["next_attempt_at"] > clock.now() for r in rows(engine))
    assert run(dispatcher) == 0 and inbox.refused == 3  # backing off: nothing is due yet

    clock.advance(MAX_DELAY_S + 1)
    assert run(dispatcher) == 0
    assert [r["attempts"] for r in rows(engine)] == [2, 2, 2] and inbox.refused == 6

    inbox.refuse = False
    assert run(dispatcher) == 0  # still backing off, even though the server is back
    clock.advance(MAX_DELAY_S + 1)
    assert run(dispatcher) == 3
    delivered_at = int(clock.now())
    clock.advance(MAX_DELAY_S + 1)
    assert run(dispatcher) == 0
    assert sorted(inbox.message_ids().values()) == [1, 1, 1]
    assert all(r["sent_at"] == delivered_at for r in rows(engine))


def test_an_smtp_outage_keeps_messages_queued_until_the_server_returns(
    engine: Engine, inbox: Inbox, clock: FrozenClock
) -> None:
    server = start_smtp(inbox)
    port = server.port
    server.stop()  # connection refused from now on
    outbox = SqlOutbox(engine)
    enqueue_n(outbox, 2, clock.now())
    dispatcher = EmailDispatcher(outbox, mailer(port), clock)
    assert run(dispatcher) == 0
    assert [r["attempts"] for r in rows(engine)] == [1, 1]
    assert all("127.0.0.1:" in r["last_error"] for r in rows(engine))

    server = start_smtp(inbox, port=port)
    try:
        clock.advance(MAX_DELAY_S + 1)
        assert run(dispatcher) == 2
        clock.advance(MAX_DELAY_S + 1)
        assert run(dispatcher) == 0
    finally:
        server.stop()
    assert sorted(inbox.message_ids().values()) == [1, 1]


def test_two_dispatchers_never_deliver_the_same_message_twice(
    engine: Engine, tmp_path: Path, clock: FrozenClock
) -> None:
    inbox = Inbox(hold_first=2)  # both dispatchers must have a message in flight at once
    server = start_smtp(inbox)
    engines = [sqlite_engine(tmp_path) for _ in range(2)]
    try:
        enqueue_n(SqlOutbox(engine), 30, clock.now())
        dispatchers = [
            EmailDispatcher(SqlOutbox(e), mailer(server.port), clock, batch_size=100)
            for e in engines
        ]
        sent = race(2, lambda i: run(dispatchers[i]))
    finally:
        server.stop()
        for e in engines:
            e.dispose()
    assert not inbox.rendezvous_failed
    assert sum(sent) == 30 and all(n > 0 for n in sent)
    assert len(inbox.message_ids()) == 30 and set(inbox.message_ids().values()) == {1}
    assert all(r["sent_at"] is not None for r in rows(engine))


def test_concurrent_claims_never_hand_out_one_message_twice(
    engine: Engine, tmp_path: Path, clock: FrozenClock
) -> None:
    enqueue_n(SqlOutbox(engine), 40, clock.now())
    engines = [sqlite_engine(tmp_path) for _ in range(2)]
    try:
        outboxes = [SqlOutbox(e) for e in engines]
        claims = race(10, lambda i: outboxes[i % 2].claim_due(clock.now(), 7, LEASE_S))
        claims.append(outboxes[0].claim_due(clock.now(), 100, LEASE_S))  # whatever is left
    finally:
        for e in engines:
            e.dispose()
    ids = [m.id for batch in claims for m in batch]
    assert len(ids) == len(set(ids)) == 40


def test_a_dispatcher_dying_after_claim_leaves_the_message_for_after_the_lease(
    engine: Engine, smtp: SmtpServer, inbox: Inbox, clock: FrozenClock
) -> None:
    outbox = SqlOutbox(engine)
    enqueue_n(outbox, 1, clock.now())
    [held] = outbox.claim_due(clock.now(), 10, LEASE_S)  # ...and then the process dies
    dispatcher = EmailDispatcher(outbox, mailer(smtp.port), clock, lease_s=LEASE_S)
    assert run(dispatcher) == 0
    clock.advance(LEASE_S - 1)
    assert run(dispatcher) == 0  # the dead dispatcher's lease still holds
    clock.advance(2)
    assert run(dispatcher) == 1
    clock.advance(LEASE_S * 2)
    assert run(dispatcher) == 0
    assert inbox.message_ids() == Counter({f"<{held.id}@keyplane.test>": 1})
    [row] = rows(engine)
    assert row["attempts"] == 0 and row["sent_at"] is not None


def test_a_late_failure_report_does_not_undo_a_delivery(engine: Engine, clock: FrozenClock) -> None:
    outbox = SqlOutbox(engine)
    enqueue_n(outbox, 1, clock.now())
    [msg] = outbox.claim_due(clock.now(), 1, LEASE_S)
    outbox.mark_sent(msg.id, clock.now())
    outbox.mark_failed(msg.id, clock.now(), "timed out", clock.now() + 5)
    [row] = rows(engine)
    assert row["sent_at"] == int(clock.now()) and row["attempts"] == 0
    clock.advance(LEASE_S * 10)
    assert outbox.claim_due(clock.now(), 10, LEASE_S) == []


def test_the_delivered_message_has_the_right_headers_and_parts(
    engine: Engine, smtp: SmtpServer, inbox: Inbox, clock: FrozenClock
) -> None:
    outbox = SqlOutbox(engine)
    to = ["owner@example.com", "second@example.com"]
    assert outbox.enqueue("a", to, "Budget alert — 80 % used", "Plain ✓ text\n", "<p>HTML ✓</p>", now=clock.now())  # fmt: skip
    assert outbox.enqueue("b", ["x@example.com"], "Verify", "Only text\n", now=clock.now())
    assert run(EmailDispatcher(outbox, mailer(smtp.port), clock)) == 2

    first, second = sorted(inbox.received, key=lambda r: str(r.message["Subject"]))
    msg = first.message
    assert first.mail_from == "noreply@keyplane.test" and first.rcpt_tos == to
    assert msg["From"] == FROM and msg["To"] == ", ".join(to)
    assert msg["Subject"] == "Budget alert — 80 % used"
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and text(plain) == "Plain ✓ text\n"
    assert html is not None and text(html) == "<p>HTML ✓</p>\n"
    assert second.message.get_content_type() == "text/plain"
    assert text(second.message) == "Only text\n"


def test_starttls_and_implicit_tls_deliver(
    engine: Engine, inbox: Inbox, clock: FrozenClock
) -> None:
    import aiosmtpd.tests.certs as certs  # the certificate aiosmtpd's own tests use

    folder = Path(certs.__file__).parent
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(folder / "server.crt", folder / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(folder / "server.crt"))
    client_ctx.check_hostname = False  # the test certificate names "aes", not 127.0.0.1
    outbox = SqlOutbox(engine)
    for mode, server_kwargs in (("starttls", {"tls_context": server_ctx, "require_starttls": True}), ("tls", {"ssl_context": server_ctx})):  # fmt: skip
        server = start_smtp(inbox, **server_kwargs)
        try:
            assert outbox.enqueue(mode, ["a@example.com"], mode, "secret", now=clock.now())
            m = mailer(server.port, tls=mode, ssl_context=client_ctx)
            assert run(EmailDispatcher(outbox, m, clock)) == 1
        finally:
            server.stop()
    assert [str(r.message["Subject"]) for r in inbox.received] == ["starttls", "tls"]


def test_the_smtp_password_never_appears_in_an_error(
    engine: Engine, inbox: Inbox, clock: FrozenClock
) -> None:
    def echoing_authenticator(
        server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        if data.password == PASSWORD.encode():
            return AuthResult(success=True)
        # A careless server that echoes what it got, decoded and encoded.
        encoded = b64encode(data.password).decode()
        message = f"535 5.7.8 bad password {data.password.decode()} ({encoded})"
        return AuthResult(success=False, handled=False, message=message)

    server = start_smtp(inbox, authenticator=echoing_authenticator, auth_require_tls=False)
    try:
        wrong = SecretStr(PASSWORD + "-wrong")
        bad = mailer(server.port, username="keyplane", password=wrong)
        outbox = SqlOutbox(engine)
        assert outbox.enqueue("k", ["a@example.com"], "S", "B", now=clock.now())
        [msg] = outbox.claim_due(clock.now(), 1, LEASE_S)
        with pytest.raises(MailError) as caught:
            bad.send(msg)
        shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + repr(bad)
        assert "535" in shown
        for form in (wrong.get_secret_value(), b64encode(wrong.get_secret_value().encode()).decode()):  # fmt: skip
            assert form not in shown
        assert run(EmailDispatcher(outbox, bad, clock)) == 0  # the lease is still held
        clock.advance(LEASE_S + 1)
        assert run(EmailDispatcher(outbox, bad, clock)) == 0
        [row] = rows(engine)
        assert row["attempts"] == 1 and wrong.get_secret_value() not in row["last_error"]

        good = mailer(server.port, username="keyplane", password=SecretStr(PASSWORD))
        clock.advance(MAX_DELAY_S + 1)
        assert run(EmailDispatcher(outbox, good, clock)) == 1
    finally:
        server.stop()
    assert len(inbox.received) == 1


def test_the_background_loop_delivers_and_stops_when_told(
    engine: Engine, smtp: SmtpServer, inbox: Inbox, clock: FrozenClock
) -> None:
    outbox = SqlOutbox(engine)
    dispatcher = EmailDispatcher(outbox, mailer(smtp.port), clock)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop, interval_s=0.02))
        await asyncio.to_thread(enqueue_n, outbox, 2, clock.now())
        await asyncio.to_thread(wait_until, lambda: len(inbox.received) == 2)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert sorted(inbox.message_ids().values()) == [1, 1]


@pytest.mark.postgres
def test_postgresql_dedupes_enqueues_and_splits_claims(pg_url: str, clock: FrozenClock) -> None:
    engines = [make_engine(pg_url) for _ in range(2)]
    try:
        migrate.upgrade(engines[0])
        outboxes = [SqlOutbox(e) for e in engines]
        won = race(
            12,
            lambda i: outboxes[i % 2].enqueue(
                "threshold:org_1:2026-11:90", ["o@example.com"], "90 %", "b", now=clock.now()
            ),
        )
        assert won.count(True) == 1
        enqueue_n(outboxes[0], 30, clock.now())
        claims = race(8, lambda i: outboxes[i % 2].claim_due(clock.now(), 5, LEASE_S))
        # A claimer that loses every row it selected returns fewer; the rest is still free.
        claims.append(outboxes[0].claim_due(clock.now(), 100, LEASE_S))
        ids = [m.id for batch in claims for m in batch]
        assert len(ids) == len(set(ids)) == 31
        assert outboxes[1].claim_due(clock.now(), 50, LEASE_S) == []
        clock.advance(LEASE_S + 1)
        assert len(outboxes[1].claim_due(clock.now(), 50, LEASE_S)) == 31
    finally:
        for e in engines:
            e.dispose()


def test_bodies_are_sealed_at_rest_and_read_back_in_the_clear(
    engine: Engine, clock: FrozenClock
) -> None:
    from keyplane import sealing

    outbox = SqlOutbox(engine, sealer=sealing.Sealer([b"k" * 48], sealing.OUTBOX))
    link = "https://keyplane.example/verify?token=s3cr3t-single-use-token"
    assert outbox.enqueue(
        "verify:1",
        ["a@example.com"],
        "Verify",
        f"Open {link}",
        f"<a href='{link}'>verify</a>",
        now=clock.now(),
    )
    [row] = rows(engine)
    assert "s3cr3t" not in json.dumps(row, default=str)
    assert str(row["body_text"]).startswith("sealed:v1:")
    [email] = outbox.claim_due(clock.now(), 10, LEASE_S)
    assert (
        email.body_text == f"Open {link}"
        and email.body_html is not None
        and link in email.body_html
    )
    with pytest.raises(ValueError, match="sealed"):
        SqlOutbox(engine).claim_due(clock.now() + 10 * LEASE_S, 10, LEASE_S)
