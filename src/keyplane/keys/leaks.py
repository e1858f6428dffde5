"""A keyplane key found where it should not be (BRIEF C8): in files or git history
(``keyplane scan --revoke``), or in public, reported by a secret scanning service
(``web/leak_reports.py``). A key counts only when it is one of this installation's with its real
secret (checked against the stored hash), so a forged string cannot get a key revoked. A leaked key
still working is revoked at once (every gateway refuses it within a second, through the key feed),
the revocation is audited, and the organization's Owners are emailed where it was found."""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Callable, Sequence

from keyplane.audit.models import Actor
from keyplane.audit.service import AuditService
from keyplane.clock import Clock
from keyplane.keys.format import KeyKind, Peppers, key_id, parse
from keyplane.keys.links import key_page
from keyplane.keys.models import ApiKey
from keyplane.keys.ports import KeyStore
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish, publish_nowhere

MAX_WHERE = 500  # characters of "where it was found" kept (a URL, a file and line)


class LeakResponder:
    def __init__(
        self,
        store: KeyStore,
        pepper: bytes | Peppers,
        audit: AuditService,
        outbox: Outbox,
        clock: Clock,
        *,
        owner_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        project_name: Callable[[str, str], str],
        public_url: str,
        publish: Publish = publish_nowhere,
    ) -> None:
        self._store = store
        self._publish = publish
        self._peppers = Peppers(pepper) if isinstance(pepper, bytes) else pepper
        self._audit = audit
        self._outbox = outbox
        self._clock = clock
        self._owner_emails = owner_emails
        self._org_name = org_name
        self._project_name = project_name
        self._public_url = public_url.rstrip("/")

    def key_of(self, token: str) -> ApiKey | None:
        """The stored key ``token`` is, with its real secret; None for anything else (a string
        that is no keyplane key, a forged look-alike, another installation's key)."""
        parsed = parse(token)
        if parsed is None:
            return None
        stored = self._store.get(key_id(parsed.public_id))
        if stored is None or not self._peppers.matches(
            parsed.secret, stored.secret_hash, stored.pepper_id
        ):
            return None
        return stored

    def revoke(self, key: ApiKey, where: str, actor: Actor, how: str) -> bool:
        """Revokes ``key``, found at ``where`` by ``how`` ("keyplane scan", "a secret scanning
        report"), audits it and emails the Owners, all in one transaction; False (and nothing
        done) when it no longer works (revoked or expired). Raises StoreUnavailable."""
        now = self._clock.now()
        if not key.is_usable(now):
            return False
        where = shown(where)
        recipients = list(self._owner_emails(key.org_id))
        email = self._message(key, where, how, now) if recipients else None
        with self._audit.atomic():
            if not self._store.revoke(key.id, int(now)):
                return False  # (revoked meanwhile, by someone else: their change, their audit)
            self._audit.record(
                key.org_id, actor, "api_key.deleted", target_id=key.id, project_id=key.project_id,
                details={"data": {"name": key.name, "redacted_value": key.redacted_value},
                         "reason": f"found by {how} at {where}"},
            )  # fmt: skip
            self._publish(
                key.org_id, "api_key.leaked",
                {"api_key_id": key.id, "name": key.name, "redacted_value": key.redacted_value,
                 "project_id": key.project_id, "found_at": where, "found_by": how,
                 "revoked_at": int(now)},
                f"leaked:{key.id}",
            )  # fmt: skip
            if email is not None:
                subject, body, page = email
                self._outbox.enqueue(f"leaked:{key.id}", recipients, subject, body, page, now=now)
        return True

    def _message(self, key: ApiKey, where: str, how: str, now: float) -> tuple[str, str, str]:
        """The email's subject, plain text and HTML. Its links open the dashboard's form for a new
        key of its kind (Create new secret key, or Create new admin key) and a project key's
        project usage, in ``key.org_id``."""
        at = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        admin = key.kind is KeyKind.ADMIN
        owner = (
            "an admin key"
            if admin
            else f"project {self._project_name(key.org_id, key.project_id or '')}"
        )
        org = self._org_name(key.org_id)
        subject = f"[keyplane] The API key {key.name!r} leaked and was revoked"
        env = "OPENAI_ADMIN_KEY" if admin else "OPENAI_API_KEY"
        # (an admin key spends nothing: what it did is in the audit log)
        check = "the audit log for changes" if admin else "the usage page for requests"
        body = (
            f"The API key {key.name!r} ({key.redacted_value}, {key.id}) of {owner} in "
            f"{org} was found by {how} at:\n\n  {where}\n\n"
            f"keyplane revoked it at {at}: anyone who copied it can no longer use it, and nor "
            "can your apps, which now get 401 invalid_api_key with it.\n\n"
            "Create a new key for them, and keep it out of code and repositories: read it from an "
            f"environment variable ({env}) or a secrets manager. Then check {check} "
            "you do not recognize.\n"
        )
        new_url = key_page(self._public_url, key, "new")
        body += f"\nCreate a new key: {new_url}\n"
        usage_url = None
        if key.project_id is not None:
            usage_url = f"{self._public_url}/usage?project={key.project_id}&org={key.org_id}"
            body += f"Usage of its project: {usage_url}\n"
        # ``where`` is what a report said (often a URL): shown as text, never made a link.
        page = render_html(
            "key_leaked.html", subject=subject, org=org, owner=owner, key_name=repr(key.name),
            redacted=key.redacted_value, key_id=key.id, how=how, where=where, at=at,
            new_url=new_url, usage_url=usage_url, check=check, env=env,
        )  # fmt: skip
        return subject, body, page


def shown(where: str) -> str:
    """``where`` as it may go into an email and the audit log: control and format characters (line
    breaks, bidirectional overrides) as "?", at most MAX_WHERE characters."""
    return "".join("?" if unicodedata.category(c).startswith("C") else c for c in where[:MAX_WHERE])
