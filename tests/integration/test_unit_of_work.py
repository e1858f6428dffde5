"""Units of work on SQLite and PostgreSQL (``SqlStore.atomic``, which ``AuditService.atomic``
opens): what the stores write inside one is committed together at its end or not at all, and the
audit log's events with it (BRIEF C9). Through the services and stores keyplane uses."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import Engine

from keyplane.accounts.service import AccountService
from keyplane.audit.models import Actor, ActorType, AuditFilter
from keyplane.audit.service import AuditService
from keyplane.clock import SystemClock
from keyplane.errors import Conflict, InvalidRequest, StoreUnavailable
from keyplane.storage.account_repository import SqlAccountStore
from keyplane.storage.audit_repository import SqlAuditLog
from keyplane.storage.auth_repository import SqlAuthStore

ACTOR = Actor(ActorType.SESSION, "sess_test", user_id="user-test", email="o@example.com")


class Org:
    def __init__(self, engine: Engine) -> None:
        self.accounts = AccountService(SqlAccountStore(engine), SystemClock())
        self.audit = AuditService(SqlAuditLog(engine), SystemClock())
        _, org, _ = self.accounts.initialize(
            email="o@example.com", password="correct horse battery", org_name="Units"
        )
        self.id = org.id

    def projects(self) -> set[str]:
        return {p.name for p in self.accounts.projects(self.id)} - {"Default project"}

    def events(self) -> list[str]:
        return [e.type for e in self.audit.query(self.id, AuditFilter(), limit=100).events]

    def create(self, name: str) -> None:
        """A project and its audit entry, in a unit of their own (as OrgService makes one)."""
        with self.audit.atomic():
            project = self.accounts.create_project(self.id, name)
            self.audit.record(self.id, ACTOR, "project.created", target_id=project.id)

    def refused(self, name: str, error: Exception) -> None:
        """A unit that creates ``name`` (seen inside it), then raises ``error``."""
        with self.audit.atomic():
            self.create(name)
            assert name in self.projects()
            raise error


def test_a_change_and_its_entry_are_committed_together_or_not_at_all(engine: Engine) -> None:
    org = Org(engine)
    with pytest.raises(StoreUnavailable):  # (the next write, say)
        org.refused("Lost", StoreUnavailable("The database is unavailable."))
    assert org.projects() == set() and org.events() == []
    org.create("Kept")
    assert org.projects() == {"Kept"} and org.events() == ["project.created"]


def test_a_unit_inside_another_is_undone_alone(engine: Engine) -> None:
    org = Org(engine)
    with org.audit.atomic():
        with pytest.raises(InvalidRequest):  # before the outer one wrote
            org.refused("First inner", InvalidRequest("refused"))
        org.create("Outer")
        with pytest.raises(InvalidRequest):  # after it did (a savepoint)
            org.refused("Second inner", InvalidRequest("refused"))
        # A refused write leaves the unit usable (PostgreSQL aborts a transaction on an error).
        with pytest.raises(Conflict):
            org.accounts.create_project(org.id, "Outer")
        org.create("After")
    assert org.projects() == {"Outer", "After"}
    assert org.events() == ["project.created"] * 2


def test_a_unit_keeps_other_writers_waiting_only_from_its_first_write(engine: Engine) -> None:
    """Nothing before a unit's first write (a payment provider's call, say) holds SQLite's one
    writer: another thread writes meanwhile."""
    org = Org(engine)
    other = threading.Thread(target=org.create, args=("Meanwhile",))
    with org.audit.atomic():
        assert org.projects() == set()
        other.start()
        other.join(timeout=10)
        assert not other.is_alive()
        org.create("Mine")
    assert org.projects() == {"Meanwhile", "Mine"}


def test_a_unit_is_its_threads(engine: Engine) -> None:
    """A worker thread gets a copy of its caller's context: it may not write into the caller's
    unit, on a connection that is not its own."""
    org = Org(engine)
    with org.audit.atomic():
        org.create("Mine")
        with pytest.raises(RuntimeError, match="another thread"):
            asyncio.run(asyncio.to_thread(org.create, "From a worker"))
    assert org.projects() == {"Mine"}


def test_a_throttled_attempt_stays_counted_when_the_unit_around_it_is_undone(
    engine: Engine,
) -> None:
    """A wrong password to turn two-factor off raises through the unit of the change it guarded:
    the attempt it counted is not undone with it."""
    org, store, now = Org(engine), SqlAuthStore(engine), int(time.time())
    limit = {"acct:o@example.com": 1}

    def wrong_password() -> None:
        with org.audit.atomic():
            assert store.reserve_attempt(limit, since=now - 60, at=now).blocked is None
            raise InvalidRequest("That password is not right.")

    with pytest.raises(InvalidRequest):
        wrong_password()
    assert store.reserve_attempt(limit, since=now - 60, at=now).blocked == "acct:o@example.com"
    with org.audit.atomic():
        org.create("Written")
        with pytest.raises(RuntimeError, match="has written"):  # (it would wait for itself)
            store.reserve_attempt({"acct:b@example.com": 5}, since=now - 60, at=now)


def test_an_entry_written_outside_a_unit_warns_and_a_notice_does_not(engine: Engine) -> None:
    """``record`` is for a change's entry, inside the change's unit: outside one it warns (an
    error in the tests), so a new call site cannot forget its unit. A notice (a failed sign-in)
    tells of no change and is written on its own."""
    org = Org(engine)
    with pytest.warns(RuntimeWarning, match="'project.created' written outside a unit of work"):
        org.audit.record(org.id, ACTOR, "project.created", target_id="proj_x")
    org.audit.notice(org.id, ACTOR, "login.failed", target_id="user-test")
    with org.audit.atomic():
        org.audit.record(org.id, ACTOR, "project.updated", target_id="proj_x")
    assert org.events() == ["project.updated", "login.failed", "project.created"]
