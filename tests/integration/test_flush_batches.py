"""A settlement flush stores what was queued when it started. Requests settled while it writes wait
for the next flush: chasing them kept flushes running back to back, a transaction for every few
requests, which cost more CPU than the requests themselves at one connection."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from conftest import initialized
from keyplane import bootstrap
from keyplane.billing.ports import Outcome
from keyplane.billing.wallet import Hold
from keyplane.simulator import SimulatorConfig, create_app
from keyplane.storage.tables import usage_records

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def _scenario(tmp: Path) -> None:
    container, _, _, _, key = initialized(
        tmp, "http://sim/v1", credit=10**9, usage_flush_interval_s=3600
    )  # (flushes only when this test asks)
    sim = httpx.ASGITransport(app=create_app(SimulatorConfig()))
    gateway = bootstrap.build_gateway(container, transport=sim)
    money = gateway.pipeline.money
    await gateway.pipeline.auth.refresh()
    await money.refresh()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway, client=("127.0.0.1", 5555)),
        base_url="http://kp",
        headers={"authorization": f"Bearer {key}"},
    )

    async def post() -> int:
        return (await client.post("/v1/chat/completions", json=BODY)).status_code

    try:
        assert [await post() for _ in range(20)] == [200] * 20
        store: Any = money._store
        original = store.resolve_stepwise
        batches: list[int] = []
        late: list[int] = []

        def held_open(
            outcomes: Sequence[Outcome], at: int, new_holds: Sequence[Hold] = ()
        ) -> Generator[None, None, int] | None:
            """The real batch, kept open until the late requests are answered."""
            batches.append(len(outcomes))
            steps = original(outcomes, at, new_holds)
            if steps is None:
                return None

            def wait_then_write() -> Generator[None, None, int]:
                for _ in range(100_000):  # each yield lets the event loop run once
                    if len(late) == 5:
                        break
                    yield
                count: int = yield from steps
                return count

            return wait_then_write()

        store.resolve_stepwise = held_open
        flushing = asyncio.create_task(money.flush())
        late.extend(await asyncio.gather(*(post() for _ in range(5))))
        assert late == [200] * 5
        assert await flushing == 20
        assert batches == [20], "the late requests must wait for the next flush"
        # The spend watcher reads stored spend: it hears of the organization after each flush
        # that stored some of its settlements, including the one storing the late requests.
        org_id = container.accounts.organizations()[0].id
        assert money.take_touched()[0] == {org_id}
        assert await money.flush() == 5
        assert batches == [20, 5]
        assert money.take_touched()[0] == {org_id}
        with container.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(usage_records)).scalar() == 25
    finally:
        await client.aclose()
        await gateway.shutdown()
        container.close()


def test_a_flush_stores_what_was_queued_when_it_started(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))
