"""What the audit slice needs from storage."""

from __future__ import annotations

from typing import Protocol

from keyplane.audit.models import AuditEvent, AuditFilter, AuditPage


class AuditLog(Protocol):
    def record(self, event: AuditEvent) -> None:
        """Appends ``event``; events are never updated or deleted. Raises StoreUnavailable."""
        ...

    def query(
        self,
        org_id: str,
        filters: AuditFilter,
        limit: int,
        after: str | None = None,
        before: str | None = None,
    ) -> AuditPage:
        """Returns up to ``limit`` of the organization's events that pass ``filters``, newest
        first: older than the event ``after`` or newer than the event ``before`` when given.

        Raises InvalidRequest (param ``after``/``before``) when a cursor is not one of this
        organization's events; StoreUnavailable."""
        ...
