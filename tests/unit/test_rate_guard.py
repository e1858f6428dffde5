"""The gateway's rate-limit override cache: a change announced while an override is being read is
never overwritten by that (older) read."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

from keyplane.clock import FrozenClock
from keyplane.gateway.ratelimits import RateGuard
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.limits.ratelimit import InMemoryRateLimiter, LimitScope, ModelLimits
from keyplane.limits.tiers import TierTable

KEY = ApiKey(
    id="key_1", kind=KeyKind.PROJECT, org_id="org-1", project_id="proj_1", owner_type="user",
    owner_id="u", name="k", secret_hash="h", redacted_value="sk-…", created_at=0, created_by=None,
)  # fmt: skip


TOP = TierTable.load().tiers[-1].id  # (limits above the overrides: these apply)


class SlowStore:
    """Answers the overrides it holds now; the first read of the ``slow`` kind waits for the test."""

    def __init__(self, slow: str = "project") -> None:
        self.slow = slow  # which read waits: "project" or "key"
        self.project_rpm = 100
        self.key_rpm = 50
        self.reads = {"project": 0, "key": 0}
        self.reading = threading.Event()
        self.go = threading.Event()

    def _wait(self, kind: str, slow: str) -> None:
        self.reads[kind] += 1
        if kind == slow and self.reads[kind] == 1:
            self.reading.set()
            self.go.wait(10)

    def project_limits(self, project_id: str) -> Mapping[str, ModelLimits]:
        answer = {"gpt-4o": ModelLimits(rpm=self.project_rpm)}
        self._wait("project", self.slow)
        return answer

    def key_limits(self, key_id: str) -> ModelLimits | None:
        answer = ModelLimits(rpm=self.key_rpm)
        self._wait("key", self.slow)
        return answer


def _guard(store: SlowStore) -> RateGuard:
    clock = FrozenClock(1_000_000.0)
    return RateGuard(InMemoryRateLimiter(), TierTable.load(), store, clock)  # type: ignore[arg-type]


def _rpm(scopes: list[LimitScope], kind: str) -> int | None:
    """The RPM of the request's ``kind`` scope ("project" or "key")."""
    return next(s.limits.rpm for s in scopes if s.scope_id.startswith(f"{kind}:"))


def _scenario(slow: str) -> None:
    async def scenario() -> None:
        store = SlowStore(slow)
        guard = _guard(store)
        first = asyncio.create_task(guard.scopes(KEY, TOP, "gpt-4o"))
        await asyncio.to_thread(store.reading.wait, 10)
        # The override is lowered while the old one is being read, and the change announced.
        store.project_rpm, store.key_rpm = 10, 5
        guard.forget(KEY.project_id if slow == "project" else KEY.id)
        store.go.set()
        await first  # (that request counted against what it read)
        fresh = await guard.scopes(KEY, TOP, "gpt-4o")
        assert _rpm(fresh, slow) == (10 if slow == "project" else 5)

    asyncio.run(scenario())


def test_a_project_override_changed_during_its_read_is_not_lost() -> None:
    _scenario("project")


def test_a_key_override_changed_during_its_read_is_not_lost() -> None:
    _scenario("key")


def test_overrides_are_read_once_until_forgotten() -> None:
    async def scenario() -> None:
        store = SlowStore()
        store.go.set()
        guard = _guard(store)
        await guard.scopes(KEY, TOP, "gpt-4o")
        await guard.scopes(KEY, TOP, "gpt-4o")
        assert store.reads == {"project": 1, "key": 1}  # no database read per request
        guard.forget(KEY.id)
        await guard.scopes(KEY, TOP, "gpt-4o")
        assert store.reads == {"project": 1, "key": 2}  # the key's read again, the project's kept

    asyncio.run(scenario())
