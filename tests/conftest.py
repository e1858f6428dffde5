"""Shared fixtures: a keyplane instance (SQLite in a temp dir) in front of the simulator."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine

from keyplane import bootstrap, gateway_assembly
from keyplane.accounts import passwords
from keyplane.accounts.models import Organization, Project, User
from keyplane.clock import Clock, SystemClock
from keyplane.config import Settings, UpstreamSettings
from keyplane.gateway.app import Gateway
from keyplane.keys.format import KeyKind
from keyplane.simulator import SimulatorConfig, create_app
from keyplane.storage import migrate
from keyplane.storage.engine import make_engine
from keyplane.usage.records import UsageRecord
from kptest import ServerThread, wait_until
from smtp_support import Inbox, SmtpServer, start_smtp
from stripe_fake import FakeStripe

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# pytest-xdist starts its workers with COLUMNS set to the controller's terminal width; the CLI's
# console takes its width from COLUMNS once, when imported, and the CLI tests set their own.
os.environ.pop("COLUMNS", None)
# argon2's defaults (64 MiB, three passes: ~0.1-0.2 s a hash here) would be paid by every test that
# makes an Owner or logs in; the tests hash with its cheapest parameters instead. A hash carries
# its parameters, so verifying works the same (test_passwords.py checks the shipped ones).
passwords._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PEPPER = "test-pepper-" + "p" * 40


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "pepper": PEPPER,
        "encryption_key": "e" * 48,
        "key_poll_interval_s": 0.05,
        "usage_flush_interval_s": 0.05,
        "upstream_retries": 1,
        **overrides,
    }
    return Settings(**values)


@dataclass
class Keyplane:
    """A running gateway plus the container behind it, initialized with one Owner and project."""

    container: bootstrap.Container
    gateway: Gateway
    server: ServerThread
    owner: User
    org: Organization
    project: Project
    key: str  # a project key's full secret

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def new_key(self, name: str = "another", **kwargs: Any) -> tuple[str, str]:
        """Returns (key id, secret) of a new project key."""
        key, secret = self.container.keys.create(
            kind=KeyKind.PROJECT, org_id=self.org.id, project_id=self.project.id, name=name,
            owner_type="user", owner_id=self.owner.id, created_by=self.owner.id, **kwargs,
        )  # fmt: skip
        return key.id, secret

    def flush(self) -> None:
        self.server.call(self.gateway.flush())

    def usage(self, expect: int | None = None) -> list[UsageRecord]:
        """The stored usage records, waiting (with a deadline) until there are ``expect`` of them."""

        def read() -> list[UsageRecord]:
            self.flush()
            return list(self.container.usage_store.query(self.org.id))

        if expect is None:
            return read()
        rows = wait_until(lambda: (r := read()) and len(r) >= expect and r)
        assert len(rows) == expect, rows
        return rows


def initialized(
    tmp_path: Path,
    upstream_url: str,
    *,
    clock: Clock | None = None,
    credit: int = 5_000_000,
    tier: str = "tier-5",  # generous rate limits unless a test is about them
    **overrides: Any,
) -> tuple[bootstrap.Container, Any, Any, Any, str]:
    """A container with one Owner, organization, project and project key (its secret last)."""
    upstreams = overrides.pop("upstreams", None) or [
        UpstreamSettings(name="sim", base_url=upstream_url)
    ]
    settings = make_settings(tmp_path, upstreams=upstreams, **overrides)
    container = bootstrap.build(settings, clock=clock or SystemClock())
    owner, org, project = container.accounts.initialize(
        email="owner@example.com", password="correct horse battery", org_name="Acme"
    )
    _, secret = container.keys.create(
        kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name="test key",
        owner_type="user", owner_id=owner.id, created_by=owner.id,
    )  # fmt: skip
    container.billing.open_account(org.id, tier=tier, welcome_credit=0)
    if credit:
        container.billing.grant(org.id, credit, note="test credit")
    return container, owner, org, project, secret


def start_keyplane(tmp_path: Path, upstream_url: str, **options: Any) -> Keyplane:
    """``initialized`` (same options), served over real sockets."""
    container, owner, org, project, secret = initialized(tmp_path, upstream_url, **options)
    app, gateway = gateway_assembly.build_app(container)
    thread = ServerThread(app).start()
    return Keyplane(container, gateway, thread, owner, org, project, secret)


@pytest.fixture(scope="session")
def simulator() -> Iterator[ServerThread]:
    sim = ServerThread(create_app(SimulatorConfig())).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def obedient_simulator() -> Iterator[ServerThread]:
    """A simulator that always writes exactly ``max_tokens`` tokens (so costs are predictable)."""
    sim = ServerThread(create_app(SimulatorConfig(completion_tokens=1_000_000))).start()
    yield sim
    sim.stop()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpServer]]:
    """A real SMTP server (aiosmtpd) and the inbox it delivers to."""
    inbox = Inbox()
    server = start_smtp(inbox)
    yield inbox, server
    server.stop()


@pytest.fixture
def kp(tmp_path: Path, simulator: ServerThread) -> Iterator[Keyplane]:
    instance = start_keyplane(tmp_path, simulator.url + "/v1")
    yield instance
    instance.server.stop()
    instance.container.close()


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    """A fresh, throw-away PostgreSQL database; fails (not skips) in CI when the server is down."""
    name = "kp_test_" + secrets.token_hex(6)
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required in CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A test on each database: ``start_keyplane``'s ``database_url``, "" (SQLite, in the data
    directory) then a fresh PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        yield "" if request.param == "sqlite" else stack.enter_context(fresh_postgres())


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    """Stripe's API, served (tests/stripe_fake.py; a test may stop it: Stripe unreachable)."""
    api = FakeStripe().start()
    yield api
    api.stop()


Start = Callable[..., Keyplane]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def start(
    request: pytest.FixtureRequest, tmp_path: Path, simulator: ServerThread
) -> Iterator[Start]:
    """Starts keyplanes (each on a database of its own, of the kind the test runs on) with the
    ``credit`` given, in front of the simulator or ``upstream``."""
    started: list[Keyplane] = []
    with contextlib.ExitStack() as stack:

        def make(credit: int, upstream: str = simulator.url + "/v1") -> Keyplane:
            url = "" if request.param == "sqlite" else stack.enter_context(fresh_postgres())
            data = tmp_path / f"kp{len(started)}"
            data.mkdir()
            instance = start_keyplane(data, upstream, database_url=url, credit=credit)
            stack.callback(instance.container.close)
            stack.callback(instance.server.stop)
            started.append(instance)
            return instance

        yield make


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database, SQLite (a file) then PostgreSQL (fresh), for tests of the storage."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path}/keyplane.db"
        else:
            url = stack.enter_context(fresh_postgres())
        made = make_engine(url)
        stack.callback(made.dispose)
        migrate.upgrade(made)
        yield made


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


__all__ = ["IN_CI", "Keyplane", "Start", "make_settings", "start_keyplane", "wait_until"]
