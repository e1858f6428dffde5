"""The gateway's access-policy cache: a change announced while a policy is being read is never
overwritten by that (older) read."""

from __future__ import annotations

import asyncio
import threading

from keyplane.gateway.access import AccessGuard
from keyplane.keys.access import AccessPolicy
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey

KEY = ApiKey(
    id="key_1", kind=KeyKind.PROJECT, org_id="org-1", project_id="proj_1", owner_type="user",
    owner_id="u", name="k", secret_hash="h", redacted_value="sk-…", created_at=0, created_by=None,
)  # fmt: skip


class SlowStore:
    """Answers the policies it holds now; the first read waits until the test lets it go."""

    def __init__(self) -> None:
        self.models: tuple[str, ...] = ("gpt-4o",)
        self.reads = 0
        self.reading = threading.Event()
        self.go = threading.Event()

    def policy(self, scope_type: str, scope_id: str) -> AccessPolicy:
        answer = AccessPolicy(allowed_models=self.models)
        self.reads += 1
        if self.reads == 1:
            self.reading.set()
            self.go.wait(10)
        return answer

    def save_policy(self, *args: object) -> None:
        raise NotImplementedError


def test_a_change_during_a_read_is_not_lost() -> None:
    async def scenario() -> None:
        store = SlowStore()
        guard = AccessGuard(store, [])
        first = asyncio.create_task(guard.levels(KEY))
        await asyncio.to_thread(store.reading.wait, 10)
        store.models = ("gpt-4o-mini",)  # the policy changes while the old one is being read
        guard.forget("org-1")
        store.go.set()
        stale, _ = await first
        assert stale.allowed_models == ("gpt-4o",)  # that request saw the policy it read
        org, _ = await guard.levels(KEY)
        assert org.allowed_models == ("gpt-4o-mini",)
        assert not guard.model_allowed(await guard.levels(KEY), KEY, "gpt-4o")

    asyncio.run(scenario())


def test_levels_are_cached_until_forgotten() -> None:
    async def scenario() -> None:
        store = SlowStore()
        store.go.set()
        guard = AccessGuard(store, [])
        await guard.levels(KEY)
        reads = store.reads
        await guard.levels(KEY)
        assert store.reads == reads  # no database read per request
        guard.forget("proj_1")
        await guard.levels(KEY)
        assert store.reads == reads + 1  # the project's policy read again, the org's still cached

    asyncio.run(scenario())
