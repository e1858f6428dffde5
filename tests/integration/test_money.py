"""Spend never exceeds a balance or a budget, under concurrency, over real sockets (BRIEF C12)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from sqlalchemy import func, select

import kphttp
from conftest import Keyplane, initialized, start_keyplane
from keyplane import gateway_assembly
from keyplane.clock import FrozenClock
from keyplane.errors import KeyplaneError
from keyplane.simulator import SimulatorConfig, create_app
from keyplane.storage.billing_tables import ledger_entries
from keyplane.usage.pricing import PriceTable
from kptest import ServerThread, Upstream, just_before_month_end, wait_until

DOLLAR = 1_000_000
GPT4O = PriceTable.load().price("gpt-4o", 2_000_000_000)


async def fire(
    kp: Keyplane, bodies: list[dict[str, Any]], concurrency: int = 100
) -> list[httpx.Response]:
    """Sends every body at once, ``concurrency`` of them in flight at any moment."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)  # httpx's pool gets slow with a thousand waiters
    async with httpx.AsyncClient(base_url=kp.base_url, limits=limits, timeout=60) as client:
        headers = {"authorization": f"Bearer {kp.key}"}

        async def post(body: dict[str, Any]) -> httpx.Response:
            async with gate:
                return await client.post("/chat/completions", json=body, headers=headers)

        return await asyncio.gather(*(post(b) for b in bodies))


def bodies(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "x" * rng.randint(1, 40)}],
            "max_tokens": rng.randint(100, 200),
        }
        for _ in range(n)
    ]


def ledger_total(kp: Keyplane) -> int:
    with kp.container.engine.connect() as conn:
        return int(
            conn.execute(select(func.coalesce(func.sum(ledger_entries.c.amount_micro), 0))).scalar()
            or 0
        )


@pytest.fixture
def funded(tmp_path: Path, obedient_simulator: ServerThread) -> Any:
    instance = start_keyplane(tmp_path, obedient_simulator.url + "/v1", credit=DOLLAR)
    yield instance
    instance.server.stop()
    instance.container.close()


@pytest.fixture
def budgeted(tmp_path: Path, obedient_simulator: ServerThread) -> Any:
    """``funded``, on a clock that stands still half a second before a month ends: a monthly
    budget counts this month's spend, and the month cannot turn between a spend and the check."""
    clock = FrozenClock(just_before_month_end())
    instance = start_keyplane(tmp_path, obedient_simulator.url + "/v1", credit=DOLLAR, clock=clock)
    yield instance
    instance.server.stop()
    instance.container.close()


def test_a_thousand_concurrent_requests_never_overspend_one_dollar(funded: Keyplane) -> None:
    kp = funded
    responses = asyncio.run(fire(kp, bodies(1000)))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert refused, "the balance should run out"
    for r in refused:  # for good once the money is gone; while others hold it, worth a retry
        code = r.json()["error"]["code"]
        assert code in ("insufficient_quota", "spend_held_in_flight")
        assert r.headers["x-keyplane-limit"] == "credits"
        assert ("retry-after" in r.headers) == (code == "spend_held_in_flight")
    assert any(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    records = kp.usage(expect=statuses[200])
    spent = sum(r.cost_micro_usd for r in records)
    assert spent <= DOLLAR  # never a micro-dollar over
    assert spent >= 0.95 * DOLLAR  # and the money is usable: at least 95% of it was admitted
    # Every record is billed at its real tokens, exactly.
    assert GPT4O is not None
    for r in records:
        assert r.cost_micro_usd == GPT4O.token_cost(r.input_tokens, 0, r.output_tokens)
    balance = kp.container.billing.balance(kp.org.id)
    assert balance.held == 0 and balance.available == DOLLAR - spent >= 0
    assert balance.spent == spent
    assert all(lot.remaining >= 0 for lot, _ in balance.lots)
    assert ledger_total(kp) == 0  # double entry: every transaction sums to zero


def test_the_lowest_of_balance_and_budgets_wins(budgeted: Keyplane) -> None:
    kp = budgeted
    kp.container.billing.update_settings(kp.org.id, budget=DOLLAR // 2)
    kp.container.billing.set_project_budget(kp.org.id, kp.project.id, 3 * DOLLAR // 10)
    kp.server.call(kp.gateway.pipeline.money.refresh())
    responses = asyncio.run(fire(kp, bodies(400, seed=3)))
    refused = [r for r in responses if r.status_code == 429]
    assert refused
    codes = {r.json()["error"]["code"] for r in refused}  # (some while others held the rest)
    assert "project_spend_limit_exceeded" in codes
    assert codes <= {"project_spend_limit_exceeded", "spend_held_in_flight"}
    assert {r.headers["x-keyplane-limit"] for r in refused} == {"budget"}
    records = kp.usage(expect=sum(r.status_code == 200 for r in responses))
    spent = sum(r.cost_micro_usd for r in records)
    assert 0.95 * 0.3 * DOLLAR <= spent <= 0.3 * DOLLAR
    # The organization budget binds for another project's keys once it is lower than the project's.
    kp.container.billing.update_settings(kp.org.id, budget=spent)
    kp.server.call(kp.gateway.pipeline.money.refresh())
    [r] = asyncio.run(fire(kp, bodies(1)))
    assert r.status_code == 429 and r.json()["error"]["code"] == "organization_spend_limit_exceeded"
    assert "has reached its monthly budget" in r.json()["error"]["message"]
    # A budget not used up refuses a request that may cost more than is left, and says so (here
    # the project's, with a little left).
    kp.container.billing.update_settings(kp.org.id, budget=spent + 10_000)
    kp.server.call(kp.gateway.pipeline.money.refresh())
    [r] = asyncio.run(
        fire(kp, [{**bodies(1)[0], "messages": [{"role": "user", "content": "x" * 8000}]}])
    )
    message = r.json()["error"]["message"]
    assert r.status_code == 429 and "left of this project's monthly budget" in message


def test_output_is_clamped_to_what_the_money_affords(funded: Keyplane) -> None:
    kp = funded
    [first] = asyncio.run(
        fire(
            kp,
            [
                {
                    "model": "gpt-4o",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 100_000,
                }
            ],
        )
    )
    assert first.status_code == 200
    body = first.json()
    assert body["choices"][0]["finish_reason"] == "length"
    # $1 at $10/M output covers < 100k tokens minus the prompt bound: the upstream was told less.
    assert 100_000 > body["usage"]["completion_tokens"] >= 100_000 - 100
    [record] = kp.usage(expect=1)
    assert record.cost_micro_usd <= DOLLAR


def test_budget_change_applies_at_once_without_a_spurious_429(budgeted: Keyplane) -> None:
    kp = budgeted
    assert all(r.status_code == 200 for r in asyncio.run(fire(kp, bodies(5))))
    spent = sum(r.cost_micro_usd for r in kp.usage(expect=5))
    kp.container.billing.update_settings(
        kp.org.id, budget=spent + DOLLAR // 10
    )  # above current spend
    kp.server.call(kp.gateway.pipeline.money.refresh())
    assert all(r.status_code == 200 for r in asyncio.run(fire(kp, bodies(3))))
    kp.container.billing.update_settings(kp.org.id, budget=spent)  # at or below current spend
    kp.server.call(kp.gateway.pipeline.money.refresh())
    [r] = asyncio.run(fire(kp, bodies(1)))
    assert r.status_code == 429 and r.json()["error"]["code"] == "organization_spend_limit_exceeded"
    assert "has reached its monthly budget" in r.json()["error"]["message"]
    # A budget not used up refuses a request that may cost more than is left, and says so.
    kp.container.billing.update_settings(kp.org.id, budget=spent + 10_000)
    kp.server.call(kp.gateway.pipeline.money.refresh())
    [r] = asyncio.run(
        fire(kp, [{**bodies(1)[0], "messages": [{"role": "user", "content": "x" * 8000}]}])
    )
    assert (
        r.status_code == 429
        and "left of your organization's monthly budget" in (r.json()["error"]["message"])
    )


class GatedUpstream(Upstream):
    """Answers each chat request once ``release`` is set (a long request in flight)."""

    models = ("gpt-4o-mini",)

    def __init__(self) -> None:
        super().__init__()
        self.release, self.received = threading.Event(), threading.Event()

    def answer(self, body: dict[str, Any]) -> bytes:
        self.received.set()
        self.release.wait(30)
        usage = {"prompt_tokens": 5, "completion_tokens": 7}
        return orjson.dumps({"id": "x", "object": "chat.completion", "choices": [], "usage": usage})


def test_a_refusal_that_requests_in_flight_cause_says_so_and_may_be_retried(
    tmp_path: Path,
) -> None:
    """The first request holds the most it may cost, the whole balance; a second, meanwhile, is
    refused, but not as "quota exceeded, do not retry": once the first settles at what it really
    cost, the same request runs."""
    upstream = GatedUpstream()
    server = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, server.url + "/v1", credit=5_000)  # $0.005
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {kp.key}"}

    def chat() -> httpx.Response:
        return kphttp.post(kp.base_url + "/chat/completions", json=body, headers=headers)

    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(chat)
            assert upstream.received.wait(10)
            busy = chat()
            assert busy.status_code == 429, busy.text
            error = busy.json()["error"]
            assert (
                error["code"] == "spend_held_in_flight" and "Try again shortly" in error["message"]
            )
            assert "x-should-retry" not in busy.headers and busy.headers["retry-after"] == "1"
            upstream.release.set()
            assert first.result().status_code == 200
        assert chat().status_code == 200  # the first one cost a few micro-dollars, not its hold
        kp.flush()
        assert kp.container.billing.balance(kp.org.id).available > 0
    finally:
        upstream.release.set()
        kp.server.stop()
        kp.container.close()
        server.stop()


def test_sdk_raises_rate_limit_error_once_without_retrying(
    tmp_path: Path, simulator: ServerThread
) -> None:
    kp = start_keyplane(tmp_path, simulator.url + "/v1", credit=0)
    sent: list[httpx.Request] = []
    try:
        http = openai.DefaultHttpxClient(event_hooks={"request": [sent.append]})
        client = openai.OpenAI(
            base_url=kp.base_url, api_key=kp.key, http_client=http
        )  # default retries
        with client, pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.code == "insufficient_quota"
        assert len(sent) == 1, "insufficient_quota must not be retried"
    finally:
        kp.server.stop()
        kp.container.close()


def test_grants_are_idempotent(funded: Keyplane) -> None:
    from keyplane.errors import Conflict

    billing = funded.container.billing
    first = billing.grant(funded.org.id, 2 * DOLLAR, idempotency_key="k1")
    again = billing.grant(funded.org.id, 2 * DOLLAR, idempotency_key="k1")
    assert again.id == first.id
    with pytest.raises(Conflict):
        billing.grant(funded.org.id, 3 * DOLLAR, idempotency_key="k1")
    assert billing.balance(funded.org.id).available == 3 * DOLLAR


def test_auto_recharge_is_off_by_default_and_enqueued_exactly_once(funded: Keyplane) -> None:
    from keyplane.storage.billing_tables import recharge_jobs

    def jobs() -> list[dict[str, Any]]:
        with funded.container.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(recharge_jobs)).mappings()]

    billing = funded.container.billing
    assert billing.settings(funded.org.id).auto_recharge is False
    assert all(r.status_code == 200 for r in asyncio.run(fire(funded, bodies(3))))
    funded.usage(expect=3)
    assert jobs() == []  # $1 is below any threshold, but auto-recharge is off
    with pytest.raises(KeyplaneError):
        billing.update_settings(
            funded.org.id,
            auto_recharge=True,
            recharge_threshold=5_000_000,
            recharge_target=5_000_000,
        )
    billing.update_settings(
        funded.org.id,
        auto_recharge=True,
        recharge_threshold=5 * DOLLAR,
        recharge_target=10 * DOLLAR,
    )
    funded.server.call(funded.gateway.pipeline.money.refresh())
    assert all(
        r.status_code == 200 for r in asyncio.run(fire(funded, bodies(20, seed=5), concurrency=20))
    )
    funded.usage(expect=23)
    funded.flush()
    [job] = jobs()
    assert job["status"] == "pending" and job["target_micro"] == 10 * DOLLAR


def test_concurrent_first_uses_of_one_idempotency_key_grant_once(funded: Keyplane) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from keyplane.errors import IdempotencyKeyReused

    billing = funded.container.billing

    def attempt(_: int) -> str:
        try:
            return billing.grant(funded.org.id, DOLLAR, idempotency_key="race").id
        except IdempotencyKeyReused:
            return "in progress"

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))
    grants = {r for r in results if r != "in progress"}
    assert len(grants) == 1
    assert billing.balance(funded.org.id).available == 2 * DOLLAR  # $1 funded + exactly one grant


class LooseUpstream(Upstream):
    """As lax as some servers are: it obeys the larger of ``max_tokens`` and
    ``max_completion_tokens`` and writes that many tokens for each of ``n`` (or ``best_of``)
    outputs, reporting them all in ``usage``."""

    def answer(self, body: dict[str, Any]) -> bytes:
        cap = max(int(body.get(f) or 0) for f in ("max_tokens", "max_completion_tokens"))
        outputs = max(int(body.get("n") or 1), int(body.get("best_of") or 1))
        if isinstance(body.get("prompt"), list):  # one completion per prompt of a list
            outputs *= len(body["prompt"])
        usage = {"prompt_tokens": 5, "completion_tokens": cap * outputs}
        return orjson.dumps({"id": "x", "object": "text_completion", "choices": [], "usage": usage})


class NoUsageUpstream(Upstream):
    """Answers a 4,000-character message, or ``raw`` as it is, with no usable ``usage``."""

    def __init__(self, usage: Any = None, raw: bytes | None = None) -> None:
        super().__init__()
        self.usage, self.raw = usage, raw

    def answer(self, body: dict[str, Any]) -> bytes:
        message = {"role": "assistant", "content": "word " * 800}
        answer = {"id": "x", "object": "chat.completion", "choices": [{"message": message}]}
        return self.raw or orjson.dumps({**answer, "usage": self.usage})


def test_an_image_billed_on_estimates_counts_what_an_image_costs_on_its_model(
    tmp_path: Path,
) -> None:
    """gpt-4o-mini reads an image as ~33 times gpt-4o's tokens (at the same price per image);
    an estimate of gpt-4o's 765 would bill it at a thirtieth."""
    upstream = NoUsageUpstream()
    upstream.models = ("gpt-4o-mini", "gpt-4o")
    server = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, server.url + "/v1")
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    try:
        for model in ("gpt-4o-mini", "gpt-4o"):
            r = kphttp.post(
                kp.base_url + "/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": [image] * 2}]},
                headers={"authorization": f"Bearer {kp.key}"},
            )  # fmt: skip
            assert r.status_code == 200
        mini, four_o = sorted(kp.usage(expect=2), key=lambda r: r.model != "gpt-4o-mini")
        assert mini.tokens_estimated and four_o.tokens_estimated
        assert 2 * 25_000 <= mini.input_tokens <= 2 * 26_000  # 2,833 + 4 tiles × 5,667 each
        assert 2 * 765 <= four_o.input_tokens <= 2 * 800  # 85 + 4 tiles × 170 each
    finally:
        kp.server.stop()


@pytest.mark.parametrize(
    "upstream",
    [NoUsageUpstream(), NoUsageUpstream(usage={"prompt_tokens": "5", "completion_tokens": -1}),
     NoUsageUpstream(raw=b"x" * 4000), NoUsageUpstream(raw=b'{"id": "x", "choi' + b"x" * 4000)],
    ids=["none", "garbled", "not_json", "cut_json"],
)  # fmt: skip
def test_an_answer_without_usable_usage_is_billed_on_estimates_not_free(
    tmp_path: Path, upstream: NoUsageUpstream
) -> None:
    server = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, server.url + "/v1")
    try:
        r = kphttp.post(
            kp.base_url + "/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 400}]},
            headers={"authorization": f"Bearer {kp.key}"},
        )  # fmt: skip
        if upstream.raw is None:
            assert r.status_code == 200
        else:  # what no SDK could read comes as an error in OpenAI's envelope
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
        [record] = kp.usage(expect=1)
        assert record.tokens_estimated
        assert record.input_tokens >= 100 and 1000 <= record.output_tokens <= 1005
        assert (
            record.cost_micro_usd
            == GPT4O.token_cost(record.input_tokens, 0, record.output_tokens)
            > 0
        )
    finally:
        kp.server.stop()
        kp.container.close()
        server.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completions", {"prompt": "hi", "max_completion_tokens": 10, "max_tokens": 2_000_000}),
        ("/completions", {"prompt": "hi", "max_tokens": 500, "best_of": 20}),
        ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 10}),
        ("/completions", {"prompt": ["hi"] * 50, "max_tokens": 1000}),
    ],
    ids=["both_caps", "best_of", "n", "prompt_list"],
)
def test_every_output_the_upstream_may_write_is_held_and_paid_for(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    """Spend stays within a cent of credit whatever cap the upstream obeys and however many
    outputs it writes: the hold counts them all and the caps sent are lowered to fit."""
    upstream = LooseUpstream()
    server = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, server.url + "/v1", credit=10_000)  # one cent
    try:
        model = "gpt-3.5-turbo" if path == "/completions" else "gpt-4o"
        r = kphttp.post(
            kp.base_url + path, json={"model": model, **body},
            headers={"authorization": f"Bearer {kp.key}"},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        [sent] = upstream.bodies
        [record] = kp.usage(expect=1)
        price = PriceTable.load().price(model, 2_000_000_000)
        assert price is not None
        # Charged what the upstream reported, within the cent.
        assert record.output_tokens == r.json()["usage"]["completion_tokens"]
        assert record.cost_micro_usd == price.token_cost(5, 0, record.output_tokens) <= 10_000
        assert {f for f in ("max_tokens", "max_completion_tokens") if f in body} <= set(sent)
        for bad in ({"n": "10"}, {"n": 10.0}, {"best_of": 0}, {"n": 129}):
            r = kphttp.post(
                kp.base_url + path, json={"model": model, **body, **bad},
                headers={"authorization": f"Bearer {kp.key}"},
            )  # fmt: skip
            assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(bad)), bad
        assert len(upstream.bodies) == 1
    finally:
        kp.server.stop()
        kp.container.close()
        server.stop()


def test_a_model_without_a_price_is_refused_not_served_free(tmp_path: Path) -> None:
    """An upstream's model keyplane cannot price could not be held against the balance: it is
    refused, and not listed, until an operator prices it (at 0, for a model that is free)."""
    sim = ServerThread(create_app(SimulatorConfig(models=("gpt-4o", "o1-preview-2")))).start()
    free = tmp_path / "free.toml"
    free.write_text(
        '[[price]]\nmodel = "o1-preview-2"\neffective_from = "2024-01-01"\n'
        'input = "0"\ncached_input = "0"\noutput = "0"\n'
    )
    try:
        for price_files, status in (([], 404), ([free], 200)):
            kp = start_keyplane(tmp_path / str(status), sim.url + "/v1", price_files=price_files)
            try:
                r = kphttp.post(
                    kp.base_url + "/chat/completions",
                    json={"model": "o1-preview-2", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {kp.key}"},
                )  # fmt: skip
                assert r.status_code == status, r.text
                auth = {"authorization": f"Bearer {kp.key}"}
                listed = kphttp.get(kp.base_url + "/models", headers=auth).json()
                usable = {m["id"] for m in listed["data"]}
                assert "gpt-4o" in usable and ("o1-preview-2" in usable) == (status == 200)
                head = httpx.head(kp.base_url + "/models", headers=auth, timeout=30)
                assert head.status_code == 200 and head.content == b""
                if status == 404:
                    assert "has no price" in r.json()["error"]["message"]
                    kp.flush()
                    assert kp.usage() == []
                else:
                    [record] = kp.usage(expect=1)
                    assert record.cost_micro_usd == 0 and record.output_tokens > 0
            finally:
                kp.server.stop()
                kp.container.close()
    finally:
        sim.stop()


def test_a_request_outliving_its_hold_is_billed_its_real_cost_not_swept_as_lost(
    tmp_path: Path,
) -> None:
    """The sweeper settles holds of gateways that died; a long request of a live one (a long
    stream, a slow reasoning model) keeps its hold until its answer says what it cost."""
    clock = FrozenClock(time.time())
    simulator = create_app(SimulatorConfig())
    answering = threading.Event()  # the upstream answers once the sweep has run, not before

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            await asyncio.to_thread(answering.wait, 30)
        await simulator(scope, receive, send)

    sim = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, sim.url + "/v1", clock=clock, hold_ttl_s=60)
    money = kp.gateway.pipeline.money
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                kphttp.post, kp.base_url + "/chat/completions",
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {kp.key}"},
            )  # fmt: skip
            wait_until(lambda: (org := money.cached_org(kp.org.id)) is not None and org.holds)
            clock.advance(3600)  # long past the hold's expiry, the answer still coming
            assert kp.server.call(money.sweep()) == 0
            assert not answer.done()
            answering.set()
            assert answer.result().status_code == 200
        [record] = kp.usage(expect=1)
        assert record.outcome.value == "completed" and record.output_tokens == 16
        assert record.cost_micro_usd == GPT4O.token_cost(record.input_tokens, 0, 16)
    finally:
        kp.server.stop()
        kp.container.close()
        sim.stop()


@pytest.mark.anyio
async def test_a_request_cancelled_before_its_answer_is_billed_the_most_it_may_cost(
    tmp_path: Path,
) -> None:
    """A shutdown cancels requests still waiting for their answer after its grace period; the
    upstream goes on and bills them, so keyplane bills the most the hold covers (as the sweeper
    does after a crash), not the prompt alone."""
    container, _, org, _, secret = initialized(tmp_path, "http://simulator/v1")
    slow = create_app(SimulatorConfig(latency_ms=10_000))
    app, gateway = gateway_assembly.build_app(container, transport=httpx.ASGITransport(app=slow))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kp")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
    try:
        await gateway.pipeline.auth.refresh()
        await gateway.pipeline.money.refresh()
        request = asyncio.create_task(
            client.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
            )
        )
        money = gateway.pipeline.money
        deadline = time.monotonic() + 10
        while not ((o := money.cached_org(org.id)) is not None and o.holds):  # placed, forwarded
            assert time.monotonic() < deadline, "the request was never admitted"
            await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await gateway.flush()
        [record] = container.usage_store.query(org.id)
        assert record.outcome.value == "upstream_broken" and record.tokens_estimated
        assert record.output_tokens == 500
        assert record.cost_micro_usd == GPT4O.token_cost(record.input_tokens, 0, 500)
    finally:
        await client.aclose()
        await gateway.shutdown()
        container.close()


@pytest.mark.anyio
async def test_a_request_failing_after_its_hold_but_before_it_is_sent_releases_the_hold(
    tmp_path: Path,
) -> None:
    """An unexpected error between the hold and the forwarding (here: noting the key's use)
    leaves nothing in flight: the request is recorded as a 500 that cost nothing, the credit is
    whole, and the next request is served. (The hold used to stay in flight until a restart,
    then was billed in full as lost.)"""
    container, _, org, _, secret = initialized(tmp_path, "http://simulator/v1")
    app, gateway = gateway_assembly.build_app(
        container, transport=httpx.ASGITransport(app=create_app(SimulatorConfig()))
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kp")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {secret}"}
    pipeline = gateway.pipeline
    try:
        await pipeline.auth.refresh()
        await pipeline.money.refresh()
        balance = container.billing.balance(org.id).available

        class Broken(dict[str, Any]):  # (noting the key's use: a dict the compiled code accepts)
            def __setitem__(self, key: str, value: Any) -> None:
                raise RuntimeError("a bug between the hold and the upstream")

        pipeline.auth._uses = Broken()
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert pipeline.money.in_flight == 0
        money = pipeline.money.cached_org(org.id)
        assert money is not None and not money.holds
        await gateway.flush()
        [record] = container.usage_store.query(org.id)
        assert (record.status, record.cost_micro_usd) == (500, 0)
        assert record.outcome.value == "upstream_unreachable"
        assert container.billing.balance(org.id).available == balance

        pipeline.auth._uses = {}
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200
    finally:
        await client.aclose()
        await gateway.shutdown()
        container.close()


class VisionUpstream(Upstream):
    """Bills each image what the largest image costs on gpt-4o-mini at high detail (2,833 + 8
    tiles × 5,667 tokens), and a file part a full context window, as OpenAI may."""

    models = ("gpt-4o-mini", "own-model")

    def answer(self, body: dict[str, Any]) -> bytes:
        parts = [p for m in body["messages"] for p in m["content"] if isinstance(p, dict)]
        images = sum(p.get("type") == "image_url" for p in parts)
        files = sum(p.get("type") == "file" for p in parts)
        usage = {"prompt_tokens": 10 + 48_169 * images + 128_000 * files, "completion_tokens": 1}
        return orjson.dumps({"id": "x", "object": "chat.completion", "choices": [], "usage": usage})


def test_images_and_files_are_held_at_the_most_they_may_cost(tmp_path: Path) -> None:
    """Twenty large images on gpt-4o-mini cost ~$0.14, a PDF up to ~$0.74: a cent of credit does
    not let either through, a dollar does and pays what the upstream bills. A model whose context
    window keyplane does not know refuses file parts, since nothing could bound them."""
    upstream = VisionUpstream()
    server = ServerThread(upstream).start()
    own = tmp_path / "own.toml"
    own.write_text(
        '[[price]]\nmodel = "own-model"\neffective_from = "2024-01-01"\ninput = "1"\noutput = "1"\n'
    )
    image = {"type": "image_url", "image_url": {"url": "https://example.com/big.png"}}
    pdf = {"type": "file", "file": {"file_id": "file-abc"}}
    mini = PriceTable.load().price("gpt-4o-mini", 2_000_000_000)
    assert mini is not None
    try:
        for credit, status in ((10_000, 429), (DOLLAR, 200)):
            kp = start_keyplane(tmp_path / str(credit), server.url + "/v1", credit=credit,
                                price_files=[own])  # fmt: skip
            try:
                for content in ([image] * 20, [{"type": "text", "text": "sum up"}, pdf]):
                    sent = len(upstream.bodies)
                    r = kphttp.post(
                        kp.base_url + "/chat/completions",
                        json={"model": "gpt-4o-mini", "max_tokens": 1,
                              "messages": [{"role": "user", "content": content}]},
                        headers={"authorization": f"Bearer {kp.key}"},
                    )  # fmt: skip
                    assert r.status_code == status, r.text
                    assert len(upstream.bodies) == sent + (status == 200)
                r = kphttp.post(
                    kp.base_url + "/chat/completions",
                    json={"model": "own-model", "messages": [{"role": "user", "content": [pdf]}]},
                    headers={"authorization": f"Bearer {kp.key}"},
                )  # fmt: skip
                assert (
                    r.status_code == 400 and r.json()["error"]["code"] == "unsupported_file_input"
                )
                assert "context_window" in r.json()["error"]["message"]
                records = kp.usage(expect=2) if status == 200 else kp.usage()
                assert len(records) == (2 if status == 200 else 0)
                for record in records:  # billed what the upstream reported, in full
                    assert record.cost_micro_usd == mini.token_cost(record.input_tokens, 0, 1)
                assert sum(rec.cost_micro_usd for rec in records) <= credit
            finally:
                kp.server.stop()
                kp.container.close()
    finally:
        server.stop()


class LyingUpstream(Upstream):
    """Claims ten million tokens of each kind, whatever it was asked."""

    def answer(self, body: dict[str, Any]) -> bytes:
        usage = {"prompt_tokens": 10_000_000, "completion_tokens": 10_000_000}
        return orjson.dumps({"id": "x", "object": "chat.completion", "choices": [], "usage": usage})


def test_an_upstreams_wrong_usage_counts_no_more_than_the_request_could_use(
    tmp_path: Path,
) -> None:
    """One answer claiming 10M tokens is charged at most its hold, and must not use up the
    organization's tokens a minute for the next hour either."""
    upstream = LyingUpstream()
    server = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, server.url + "/v1")
    try:
        body = {
            "model": "gpt-4o",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}],
        }
        statuses = [
            kphttp.post(
                kp.base_url + "/chat/completions", json=body,
                headers={"authorization": f"Bearer {kp.key}"},
            ).status_code
            for _ in range(3)
        ]  # fmt: skip
        assert statuses == [200, 200, 200]
        records = kp.usage(expect=3)
        assert all(r.cost_micro_usd < GPT4O.token_cost(1_000, 0, 50) for r in records)
    finally:
        kp.server.stop()
        kp.container.close()
        server.stop()
