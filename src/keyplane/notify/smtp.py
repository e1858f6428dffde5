"""SmtpMailer: sends an outbox message through an SMTP server with the standard library.

One connection per message: emails are rare (verification, invitations, limit alerts), and a
fresh connection never inherits a half-broken session from an earlier failure.
"""

from __future__ import annotations

import base64
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Literal

from pydantic import SecretStr

from keyplane.config import Settings
from keyplane.notify.models import OutboundEmail
from keyplane.notify.ports import MailError

log = logging.getLogger(__name__)

TlsMode = Literal["none", "starttls", "tls"]


class SmtpMailer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        mail_from: str,
        tls: TlsMode = "none",
        username: str | None = None,
        password: SecretStr | None = None,
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if tls not in ("none", "starttls", "tls"):
            raise ValueError(f"unknown SMTP TLS mode {tls!r}")
        if password is not None and username is None:
            raise ValueError("an SMTP password needs a username")
        self._host = host
        self._port = port
        self._mail_from = mail_from
        self._tls: TlsMode = tls
        self._username = username
        self._password = password
        self._timeout_s = timeout_s
        self._ssl_context = ssl_context
        domain = parseaddr(mail_from)[1].rpartition("@")[2]
        self._msgid_domain = domain or "localhost"

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpMailer:
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            mail_from=settings.mail_from,
            tls=settings.smtp_tls,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout_s=settings.smtp_timeout_s,
        )

    def __repr__(self) -> str:
        return (
            f"SmtpMailer(host={self._host!r}, port={self._port}, tls={self._tls!r}, "
            f"username={self._username!r})"
        )

    def message(self, outbound: OutboundEmail) -> EmailMessage:
        """Returns the MIME message for ``outbound``. Raises ValueError on a malformed header."""
        msg = EmailMessage()
        msg["From"] = self._mail_from
        msg["To"] = ", ".join(outbound.to)
        msg["Subject"] = outbound.subject
        msg["Date"] = formatdate(outbound.created_at, usegmt=True)
        # Stable per outbox row: if a crash makes us send twice, mail systems that deduplicate
        # by Message-ID (Gmail among them) show the message once.
        msg["Message-ID"] = f"<{outbound.id}@{self._msgid_domain}>"
        msg.set_content(outbound.body_text)
        if outbound.body_html is not None:
            msg.add_alternative(outbound.body_html, subtype="html")
        return msg

    def send(self, email: OutboundEmail) -> None:
        try:
            msg = self.message(email)
        except (ValueError, TypeError) as exc:
            raise MailError(f"cannot build message {email.id}: {self._scrub(str(exc))}") from None
        try:
            with self._connect() as smtp:
                if self._tls == "starttls":
                    smtp.starttls(context=self._context())
                if self._username is not None:
                    secret = self._password.get_secret_value() if self._password else ""
                    smtp.login(self._username, secret)
                refused = smtp.send_message(msg)
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            # ``from None``: the chained exception could carry what a server echoed back.
            raise MailError(self._describe(exc)) from None
        if refused:
            # Some recipients were accepted: retrying would send them a second copy.
            log.warning("email %s: the server refused %s", email.id, ", ".join(sorted(refused)))

    def _connect(self) -> smtplib.SMTP:
        if self._tls == "tls":
            return smtplib.SMTP_SSL(
                self._host, self._port, timeout=self._timeout_s, context=self._context()
            )
        return smtplib.SMTP(self._host, self._port, timeout=self._timeout_s)

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _describe(self, exc: BaseException) -> str:
        where = f"{self._host}:{self._port}"
        if isinstance(exc, smtplib.SMTPResponseException):
            reply = exc.smtp_error
            text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
            detail = f"{exc.smtp_code} {text}"
        else:
            detail = str(exc) or type(exc).__name__
        return self._scrub(f"SMTP {where}: {type(exc).__name__}: {detail}")

    def _scrub(self, text: str) -> str:
        """Removes the password, plain or as sent in AUTH PLAIN / LOGIN, from ``text``."""
        if self._password is None or not self._password.get_secret_value():
            return text
        secret = self._password.get_secret_value()
        user = self._username or ""
        forms = {
            secret,
            base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"\0{user}\0{secret}".encode()).decode(),
        }
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "[redacted]")
        return text
