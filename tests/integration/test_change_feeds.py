"""The change feeds (key_events, money_events) are read by number: a gateway asks for what came
after the last number it saw. So no change may commit after a later-numbered one was read — on
PostgreSQL two transactions can take numbers 10 and 11 and commit 11 first, and a reader in
between would move past 10 for good: a revocation, a lowered budget, credit taken back, never
seen (storage/store.py, ``append_to_feed``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy import Engine

from keyplane.accounts.service import AccountService
from keyplane.clock import SystemClock
from keyplane.keys.access import NO_POLICY
from keyplane.keys.format import KeyKind
from keyplane.keys.service import KeyService
from keyplane.storage.account_repository import SqlAccountStore
from keyplane.storage.billing_repository import SqlMoneyStore
from keyplane.storage.key_repository import SqlKeyStore
from keyplane.storage.limits_repository import SqlAccessPolicyStore


@pytest.mark.parametrize("feed", ["keys", "money"])
def test_a_feed_reader_never_moves_past_a_change_still_being_committed(
    engine: Engine, feed: str
) -> None:
    clock = SystemClock()
    user, org, project = AccountService(SqlAccountStore(engine), clock).initialize(
        email="feeds@example.com", password="x" * 12, org_name="Feeds"
    )
    key_store = SqlKeyStore(engine)
    keys = KeyService(key_store, b"pepper" * 8, clock)
    made = [
        keys.create(
            kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name=f"k{i}",
            owner_type="user", owner_id=user.id, created_by=user.id,
        )[0].id
        for i in range(2)
    ]  # fmt: skip
    policies, money = SqlAccessPolicyStore(engine), SqlMoneyStore(engine)
    change: Callable[[int], object]
    read: Callable[[int | None], tuple[int, Sequence[str]]]
    if feed == "keys":
        change, read, expected = (
            lambda i: keys.revoke(org.id, made[i]),
            key_store.changes_since,
            made,
        )
    else:

        def change(i: int) -> None:
            policies.save_policy(org.id, "key", made[i], NO_POLICY, int(clock.now()))

        def read(seq: int | None) -> tuple[int, Sequence[str]]:
            last, events = money.events_since(seq)
            return last, [e.ref or "" for e in events]

        expected = made
    start, _ = read(None)

    begun, release = threading.Event(), threading.Event()

    def first() -> None:  # numbered first, committed last
        with key_store.atomic():
            change(0)
            begun.set()
            assert release.wait(10)

    one = threading.Thread(target=first)
    one.start()
    assert begun.wait(10)
    two = threading.Thread(target=lambda: change(1))
    two.start()
    # A gateway polls meanwhile: the second change, if it can commit before the first, shows.
    deadline = time.monotonic() + 1.0
    while not read(start)[1] and time.monotonic() < deadline:
        time.sleep(0.01)
    seq, early = read(start)
    release.set()
    one.join(10)
    two.join(10)
    _, late = read(seq)
    assert sorted({*early, *late}) == sorted(expected), (early, late)
