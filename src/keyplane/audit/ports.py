"""What the audit slice needs from storage."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from keyplane.audit.models import AuditEvent, AuditFilter, AuditPage


class AuditLog(Protocol):
    def record(self, event: AuditEvent) -> None:
        """Appends ``event``; events are never updated or deleted. Raises StoreUnavailable."""
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """A unit of work on the log's database: the events recorded inside it, and every other
        store's writes on that database made inside it by this thread, are committed together
        when it ends, or none of them if it raises. One opened inside another is part of it
        (undone alone if it raises). Raises StoreUnavailable."""
        ...

    def in_unit(self) -> bool:
        """Whether this thread is inside a unit of work (``atomic``) on the log's database."""
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
