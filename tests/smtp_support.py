"""A real SMTP server for tests (aiosmtpd), with an inbox that can refuse on demand."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class Inbox:
    """An aiosmtpd handler that keeps what it receives, refuses on demand, and can hold the first
    ``hold_first`` messages until that many are in flight at once (proof of concurrency)."""

    def __init__(self, *, hold_first: int = 0) -> None:
        self.received: list[Received] = []
        self.refuse = False
        self.refused = 0
        self.hold_first = hold_first
        self.rendezvous_failed = False
        self._arrived = 0
        self._gate: asyncio.Event | None = None

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            self.refused += 1
            return "451 4.3.0 Mail server busy, try again later"
        if self._arrived < self.hold_first:
            self._gate = self._gate or asyncio.Event()
            self._arrived += 1
            if self._arrived == self.hold_first:
                self._gate.set()
            try:
                await asyncio.wait_for(self._gate.wait(), 10)
            except TimeoutError:
                self.rendezvous_failed = True
                return "451 4.3.0 no concurrent delivery arrived"
        assert isinstance(envelope.content, bytes) and envelope.mail_from is not None
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 2.0.0 OK"

    def message_ids(self) -> Counter[str]:
        return Counter(str(r.message["Message-ID"]) for r in self.received)


class SmtpServer(Controller):
    def _trigger_server(self) -> None:
        # aiosmtpd 1.4 binds port 0 but then probes ``self.port``: learn the real port first.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


def start_smtp(handler: Any, port: int = 0, **kwargs: Any) -> SmtpServer:
    server = SmtpServer(
        handler, hostname="127.0.0.1", port=port, server_hostname="localhost", **kwargs
    )
    server.start()
    return server
