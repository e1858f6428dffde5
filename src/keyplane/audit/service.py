"""Recording and reading the audit log."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from keyplane.audit.models import Actor, AuditEvent, AuditFilter, AuditPage
from keyplane.audit.ports import AuditLog
from keyplane.clock import Clock
from keyplane.ids import new_id
from keyplane.keys import format as keyfmt

MAX_TEXT = 500  # a user agent or a name in an event; longer values are cut


def _scrub(value: Any) -> Any:
    """Masks key-shaped strings anywhere in ``value``. Callers never pass a secret; this is the
    net under that rule, because an audit row lives forever and is readable by every Reader."""
    if isinstance(value, str):
        text = keyfmt.KEY_PATTERN.sub(lambda m: keyfmt.redact(m.group(0)), value)
        return text[:MAX_TEXT]
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` for an update: only the fields whose value changed, before and after."""
    keys = [k for k in after if before.get(k) != after[k]]
    return {"before": {k: before.get(k) for k in keys}, "after": {k: after[k] for k in keys}}


class AuditService:
    def __init__(self, log: AuditLog, clock: Clock) -> None:
        self._log = log
        self._clock = clock

    def atomic(self) -> AbstractContextManager[None]:
        """``with audit.atomic(): <the change>; audit.record(...)``: the change and the events that
        tell of it are committed together, or neither is (BRIEF C9: no change without its record,
        none recorded for a change that failed). Whatever raises inside, a failed write of the
        log included, undoes the change and reaches the caller. Raises StoreUnavailable."""
        return self._log.atomic()

    def record(
        self,
        org_id: str,
        actor: Actor,
        event_type: str,
        *,
        target_id: str | None = None,
        project_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Appends one event and returns it: inside ``atomic()``, with the change it tells of.
        Outside one it warns (RuntimeWarning, which the tests turn into a failure): a change
        written before its entry can outlive a failed write of the entry. Raises
        StoreUnavailable."""
        if not self._log.in_unit():
            warnings.warn(
                f"audit entry {event_type!r} written outside a unit of work (AuditService.atomic)",
                RuntimeWarning, stacklevel=2,
            )  # fmt: skip
        return self.notice(
            org_id, actor, event_type, target_id=target_id, project_id=project_id, details=details
        )

    def notice(
        self,
        org_id: str,
        actor: Actor,
        event_type: str,
        *,
        target_id: str | None = None,
        project_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Appends one event that tells of no change (a failed sign-in, a key's use noticed), on
        its own: nothing to be written with it, and a refusal raised after it must not undo it.
        Raises StoreUnavailable."""
        event = self.entry(
            org_id, actor, event_type, target_id=target_id, project_id=project_id, details=details
        )
        self._log.record(event)
        return event

    def entry(
        self,
        org_id: str,
        actor: Actor,
        event_type: str,
        *,
        target_id: str | None = None,
        project_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """The event ``record`` would append, not stored: for a store that writes it in the same
        transaction as the change it tells of (a line of the billing history), so there is one
        whoever makes the change, and none if it is rolled back."""
        return AuditEvent(
            id=new_id("audit_log-"),
            org_id=org_id,
            type=event_type,
            effective_at=int(self._clock.now()),
            actor=Actor(
                type=actor.type,
                id=actor.id,
                user_id=actor.user_id,
                email=actor.email,
                ip_address=actor.ip_address,
                user_agent=None if actor.user_agent is None else actor.user_agent[:MAX_TEXT],
            ),
            project_id=project_id,
            target_id=target_id,
            details=_scrub(dict(details or {})),
        )

    def query(
        self,
        org_id: str,
        filters: AuditFilter,
        *,
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
    ) -> AuditPage:
        return self._log.query(org_id, filters, limit, after, before)
