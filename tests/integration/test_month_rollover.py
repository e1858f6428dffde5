"""Budgets are per calendar month (UTC): at 00:00 UTC on the 1st spend starts at $0 for requests
admitted from then on; a request in flight across midnight settles into the month it was admitted
in (BRIEF C6), with an injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson

import kphttp
from conftest import start_keyplane
from keyplane.clock import FrozenClock
from kptest import ServerThread

LAST_SECOND_OF_NOVEMBER = dt.datetime(2026, 11, 30, 23, 59, 59, tzinfo=dt.UTC).timestamp()
REPLY = orjson.dumps(
    {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 100, "total_tokens": 110},
    }
)  # fmt: skip


class HeldUpstream:
    """Answers every chat request with REPLY (1,025 micro-dollars at gpt-4o prices), but only
    once the test opens the gate when ``hold`` is set."""

    def __init__(self) -> None:
        self.hold = False
        self.arrived = threading.Event()
        self.gate = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if self.hold:
            self.arrived.set()
            await self.gate.wait()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": REPLY})


def test_spend_restarts_at_midnight_utc_and_in_flight_requests_keep_their_month(
    tmp_path: Path,
) -> None:
    upstream = HeldUpstream()
    server = ServerThread(upstream).start()
    clock = FrozenClock(LAST_SECOND_OF_NOVEMBER)
    kp = start_keyplane(tmp_path, server.url + "/v1", clock=clock)
    kp.gateway.pipeline.router.upstreams[0].models = frozenset({"gpt-4o"})
    kp.container.billing.update_settings(
        kp.org.id, budget=2_400
    )  # room for two requests a month, not three
    kp.server.call(kp.gateway.pipeline.money.refresh())
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    headers = {"authorization": f"Bearer {kp.key}"}

    def post() -> httpx.Response:
        return kphttp.post(kp.base_url + "/chat/completions", json=body, headers=headers)

    try:
        assert post().status_code == 200  # November: 1,025 spent
        upstream.hold = True
        in_flight: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: in_flight.append(post()))
        thread.start()
        assert upstream.arrived.wait(10)  # admitted in November, still running
        assert post().status_code == 429  # November's budget is taken (spent + held)
        clock.set(LAST_SECOND_OF_NOVEMBER + 1)  # 00:00:00 UTC, December 1st
        upstream.hold = False
        assert post().status_code == 200  # December starts at $0
        assert post().status_code == 200
        refused = post()
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "organization_spend_limit_exceeded"
        assert server.loop is not None
        server.loop.call_soon_threadsafe(upstream.gate.set)
        thread.join(10)
        assert in_flight[0].status_code == 200
        records = kp.usage(expect=4)
        by_period: dict[str, int] = {}
        for r in records:
            by_period[r.period] = by_period.get(r.period, 0) + r.cost_micro_usd
        assert by_period == {"2026-11": 2 * 1_025, "2026-12": 2 * 1_025}
    finally:
        kp.server.stop()
        server.stop()
        kp.container.close()
