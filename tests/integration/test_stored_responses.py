"""Whose each stored response is: noted at once, stored with the flush, kept through a database
error, and told apart by project (usage/stored.py, gateway/responses.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conftest import fresh_postgres
from keyplane.clock import FrozenClock, SystemClock
from keyplane.errors import StoreUnavailable
from keyplane.gateway.responses import DAY, ResponseOwners
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.storage import migrate
from keyplane.storage.engine import make_engine
from keyplane.storage.response_repository import SqlResponseStore
from keyplane.usage.stored import StoredResponse


class FlakyStore(SqlResponseStore):
    """The real store, whose writes fail while ``down``."""

    down = False

    def add_responses(self, rows: Sequence[StoredResponse]) -> None:
        if self.down:
            raise StoreUnavailable("The database is unavailable.")
        super().add_responses(rows)


def key(project: str) -> ApiKey:
    return ApiKey(
        id=f"key_{project}", kind=KeyKind.PROJECT, org_id="org_1", project_id=project,
        owner_type="user", owner_id="user_1", name="k", secret_hash="", redacted_value="",
        created_at=0, created_by="user_1",
    )  # fmt: skip


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlakyStore]:
    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path / 'k.db'}"
            if request.param == "sqlite"
            else stack.enter_context(fresh_postgres())
        )
        engine = make_engine(url)
        migrate.upgrade(engine)
        yield FlakyStore(engine)
        engine.dispose()


def test_a_noted_response_is_its_projects_before_and_after_it_is_stored(
    store: FlakyStore,
) -> None:
    owners = ResponseOwners(store, SystemClock())
    mine, theirs = key("proj_a"), key("proj_b")

    async def run() -> None:
        owners.note("resp_1", mine, "sim")
        assert (await owners.owned("resp_1", mine)) is not None  # before any flush
        assert (await owners.owned("resp_1", theirs)) is None
        store.down = True
        with pytest.raises(StoreUnavailable):
            await owners.flush()
        assert owners.pending == 1 and (await owners.owned("resp_1", mine)) is not None
        store.down = False
        await owners.flush()
        assert owners.pending == 0
        await owners.flush()  # a retried batch stores nothing twice
        stored = await owners.owned("resp_1", mine)
        assert stored is not None and (stored.project_id, stored.upstream) == ("proj_a", "sim")
        assert (await owners.owned("resp_1", theirs)) is None
        assert (await owners.owned("resp_unknown", mine)) is None
        await owners.forget("resp_1")
        assert (await owners.owned("resp_1", mine)) is None

    asyncio.run(run())
    # Noted again when its request ended: what continuing it adds is filled in, nothing else.
    store.add_responses([StoredResponse("resp_2", "org_1", "proj_a", "sim", 1)])
    store.add_responses([StoredResponse("resp_2", "org_1", "proj_b", "other", 2, 300)])
    store.add_responses([StoredResponse("resp_2", "org_1", "proj_a", "sim", 1, 999)])
    assert store.stored_response("resp_2") == StoredResponse(
        "resp_2", "org_1", "proj_a", "sim", 1, 300
    )


def test_a_stored_response_is_forgotten_after_its_retention(store: FlakyStore) -> None:
    """OpenAI keeps a stored response 30 days: past the retention keyplane answers "not found"
    at once, and its hourly check forgets the row (a batch per transaction)."""
    clock = FrozenClock()
    owners = ResponseOwners(store, clock, retention_days=30)
    mine = key("proj_a")

    async def run() -> None:
        owners.note("resp_old", mine, "sim")
        clock.advance(DAY)
        owners.note("resp_new", mine, "sim")
        await owners.flush()
        clock.advance(29 * DAY)  # resp_old is 30 days old: kept to the second
        assert (await owners.owned("resp_old", mine)) is not None
        assert await owners.expire() == 0
        clock.advance(1)
        assert (await owners.owned("resp_old", mine)) is None
        assert (await owners.owned("resp_new", mine)) is not None
        assert await owners.expire() == 1
        assert store.stored_response("resp_old") is None
        assert store.stored_response("resp_new") is not None
        for n in range(7):
            owners.note(f"resp_{n}", mine, "sim")
        await owners.flush()
        clock.advance(31 * DAY)
        assert store.forget_responses_before(int(clock.now()) - 30 * DAY, 3) == 3  # oldest first
        assert store.stored_response("resp_new") is None
        assert await owners.expire() == 5
        assert store.forget_responses_before(int(clock.now()), 100) == 0

    asyncio.run(run())
