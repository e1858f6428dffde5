"""Reminders to rotate old keys (BRIEF C2: keys older than the policy age are flagged "in the
dashboard and by email"). A periodic job emails the organization's Owners once for each key each
time its age passes another policy period (90, 180, 270… days by default), through the outbox:
its dedupe key makes that exactly once, across restarts and processes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from keyplane.clock import Clock
from keyplane.keys.format import KeyKind
from keyplane.keys.links import key_page
from keyplane.keys.models import ApiKey
from keyplane.keys.ports import KeyStore
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox

DAY_S = 86400


class RotationReminder:
    def __init__(
        self,
        keys: KeyStore,
        outbox: Outbox,
        clock: Clock,
        *,
        org_ids: Callable[[], Sequence[str]],
        owner_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        project_name: Callable[[str, str], str],
        public_url: str,
        max_age_days: int,
    ) -> None:
        self._keys = keys
        self._outbox = outbox
        self._clock = clock
        self._org_ids = org_ids
        self._owner_emails = owner_emails
        self._org_name = org_name
        self._project_name = project_name
        self._public_url = public_url.rstrip("/")
        self._max_age_s = max_age_days * DAY_S

    def due(self, org_id: str) -> list[ApiKey]:
        """The organization's keys that should be rotated: working, older than the policy age, and
        not already replaced by a rotation (the old key of a rotation works out its grace)."""
        now = self._clock.now()
        keys = self._keys.list(org_id)
        replaced = {k.rotated_from for k in keys if k.rotated_from}
        return [k for k in keys if k.id not in replaced and k.needs_rotation(now, self._max_age_s)]

    def check_all(self) -> int:
        """The periodic job: returns how many reminders it queued."""
        now = self._clock.now()
        queued = 0
        for org_id in self._org_ids():
            due = self.due(org_id)
            recipients = list(self._owner_emails(org_id)) if due else []
            for key in due if recipients else ():
                period = int((now - key.created_at) // self._max_age_s)
                subject, body, page = self._message(org_id, key, now)
                queued += self._outbox.enqueue(
                    f"rotate:{key.id}:{period}", recipients, subject, body, page, now=now
                )
        return queued

    def _message(self, org_id: str, key: ApiKey, now: float) -> tuple[str, str, str]:
        """The reminder's subject, plain text and HTML. Its link opens the key's Rotate page in the
        dashboard (on API keys, or Admin keys for an admin key), in ``org_id``."""
        days = int((now - key.created_at) // DAY_S)
        created = dt.datetime.fromtimestamp(key.created_at, dt.UTC).strftime("%Y-%m-%d")
        where = (
            "an admin key"
            if key.kind is KeyKind.ADMIN
            else f"project {self._project_name(org_id, key.project_id or '')}"
        )
        subject = f"[keyplane] Rotate the API key {key.name!r}: it is {days} days old"
        api_path = (
            None
            if key.project_id is None
            else f"/v1/organization/projects/{key.project_id}/api_keys/{key.id}/rotate"
        )
        api = "" if api_path is None else f"or POST {api_path} with an admin key, "
        listing = "Admin keys" if key.kind is KeyKind.ADMIN else "API keys"
        how = f"Use Rotate on the dashboard's {listing} page, or run:"
        org = self._org_name(org_id)
        body = (
            f"The API key {key.name!r} ({key.redacted_value}, {key.id}) of {where} in "
            f"{org} was created on {created}, {days} days ago.\n\n"
            "Rotate keys regularly: a key in use a long time has had more chances to leak. "
            "Rotating gives a new secret and lets the old one work for a grace period (up to 7 "
            f"days) while your apps switch over. {how}\n\n"
            f"  keyplane keys rotate {key.id} --grace 24h\n\n"
            f"{api}or revoke the key if nothing uses it. If it is still in use, you will be "
            f"reminded again in {self._max_age_s // DAY_S} days.\n"
        )
        rotate_url = key_page(self._public_url, key, "rotate")
        body += f"\nRotate the key: {rotate_url}\n"
        page = render_html(
            "key_rotation.html", subject=subject, org=org, owner=where, key_name=repr(key.name),
            redacted=key.redacted_value, key_id=key.id, created=created, days=days, how=how,
            api_path=api_path, every=self._max_age_s // DAY_S, rotate_url=rotate_url,
        )  # fmt: skip
        return subject, body, page
