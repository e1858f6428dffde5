"""Admin API for usage and costs (BRIEF C7), in OpenAI's shapes: buckets that add up to the usage
records, to the micro-dollar, grouped and paged as OpenAI's are. The clock stands half a second
before a month ends while the requests are made and moves past midnight before their report is
asked for: a report asked for the day the requests were made holds them whenever it is read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from test_admin_billing import ORG, Env, open_env

from keyplane.clock import FrozenClock
from keyplane.simulator.images import PNG_1X1
from keyplane.usage.records import UsageRecord
from kptest import DAY, just_before_month_end

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(just_before_month_end())


@pytest.fixture
async def env(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[Env]:
    async with open_env(tmp_path, clock=clock) as made:
        yield made


def day_of(records: Iterable[UsageRecord]) -> int:
    """The day (its first second, UTC) the records were made: what a report of them starts at."""
    [day] = {r.created_at // DAY * DAY for r in records}
    return day


async def reported_day(env: Env, clock: FrozenClock) -> int:
    """Flushes the usage; returns the day it was made on, once midnight has passed (yesterday)."""
    await env.gateway.flush()
    day = day_of(env.container.usage_store.query(env.org.id))
    clock.advance(1)
    assert int(clock.now()) // DAY * DAY == day + DAY
    return day


async def test_costs_and_usage_add_up_to_the_usage_records(env: Env, clock: FrozenClock) -> None:
    for tokens in (10, 20):
        assert (await env.chat(max_tokens=tokens)).status_code == 200
    embed = await env.client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hello"},
        headers={"authorization": f"Bearer {env.project_key}"},
    )  # fmt: skip
    assert embed.status_code == 200
    day = await reported_day(env, clock)
    records = env.container.usage_store.query(env.org.id)
    assert len(records) == 3

    costs = await env.client.get(
        f"{ORG}/costs?start_time={day}&group_by[]=line_item&group_by[]=project_id",
        headers=env.admin(),
    )  # fmt: skip
    assert costs.status_code == 200
    page = costs.json()
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    [bucket, today] = page["data"]  # the requests' day, and today's so far
    assert bucket["object"] == "bucket" and bucket["start_time"] == day
    assert bucket["end_time"] == today["start_time"] == day + DAY and today["results"] == []
    by_item = {r["line_item"]: r for r in bucket["results"]}
    assert set(by_item) == {"gpt-4o", "text-embedding-3-small"}
    for model, result in by_item.items():
        micros = sum(r.cost_micro_usd for r in records if r.model == model)
        assert result["amount"] == {"value": micros / 1_000_000, "currency": "usd"}
        assert result["project_id"] == env.project.id

    usage = await env.client.get(
        f"{ORG}/usage/completions?start_time={day}&bucket_width=1h&limit=24&group_by[]=model",
        headers=env.admin(),
    )  # fmt: skip
    hours = usage.json()["data"]  # the day's 24 hours; today's so far are on the next page
    assert [b["end_time"] - b["start_time"] for b in hours] == [3600] * 24
    assert usage.json()["next_page"] == str(day + DAY)
    [result] = [r for b in hours for r in b["results"]]
    chats = [r for r in records if r.endpoint == "chat.completions"]
    assert result["model"] == "gpt-4o" and result["num_model_requests"] == 2
    assert result["output_tokens"] == sum(r.output_tokens for r in chats) == 30
    assert result["input_tokens"] == sum(r.input_tokens for r in chats)

    # Filters and groupings as OpenAI's SDK sends them (no []), none of them ignored.
    async def requests(query: str) -> list[dict[str, object]]:
        r = await env.client.get(f"{ORG}/usage/completions?start_time={day}&{query}",
                                 headers=env.admin())  # fmt: skip
        assert r.status_code == 200, r.text
        return [x for b in r.json()["data"] for x in b["results"]]

    assert (await requests(f"project_ids={env.other_project_id}")) == []
    assert (await requests("user_ids=user-nobody")) == []
    assert (await requests("batch=true")) == []  # keyplane runs no batches
    [mine] = await requests(f"project_ids={env.project.id}&group_by=user_id")
    assert mine["num_model_requests"] == 2 and mine["user_id"] == env.owner.id
    bad = await env.client.get(f"{ORG}/usage/completions?start_time={day}&group_by=color",
                               headers=env.admin())  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    embeddings = await env.client.get(
        f"{ORG}/usage/embeddings?start_time={day}", headers=env.admin()
    )
    [result] = [r for b in embeddings.json()["data"] for r in b["results"]]
    assert result["num_model_requests"] == 1 and result["model"] is None  # not grouped


async def test_pages_of_buckets_and_bad_queries(env: Env, clock: FrozenClock) -> None:
    assert (await env.chat(max_tokens=5)).status_code == 200
    day = await reported_day(env, clock)
    start = day - 3 * DAY
    first = (
        await env.client.get(f"{ORG}/costs?start_time={start}&limit=2", headers=env.admin())
    ).json()
    assert [b["start_time"] for b in first["data"]] == [start, start + DAY]
    assert first["has_more"] and all(b["results"] == [] for b in first["data"])
    rest = await env.client.get(
        f"{ORG}/costs?start_time={start}&limit=2&page={first['next_page']}", headers=env.admin()
    )
    starts = [b["start_time"] for b in rest.json()["data"]]
    assert starts == [start + 2 * DAY, day] and rest.json()["data"][1]["results"]
    last = await env.client.get(
        f"{ORG}/costs?start_time={start}&limit=2&page={rest.json()['next_page']}",
        headers=env.admin(),
    )  # fmt: skip
    assert [b["start_time"] for b in last.json()["data"]] == [day + DAY]  # today's, so far
    assert last.json()["has_more"] is False
    for query, param in (
        (f"start_time={day}&end_time={day}", "end_time"),
        (f"start_time={day}&limit=32", "limit"),
        (f"start_time={day}&page=12x", "page"),
        (f"start_time={day}&page={day + 5}", "page"),
    ):
        r = await env.client.get(f"{ORG}/usage/completions?{query}", headers=env.admin())
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    r = await env.client.get(f"{ORG}/costs", headers=env.admin())
    assert r.status_code == 400  # start_time is required
    other = await env.client.get(
        f"{ORG}/costs?start_time={day}", headers=env.admin(env.other_admin_key)
    )
    assert all(b["results"] == [] for b in other.json()["data"])  # another organization's


async def test_responses_count_as_completions_and_moderations_have_their_own(
    env: Env, clock: FrozenClock
) -> None:
    headers = {"authorization": f"Bearer {env.project_key}"}
    for path, body in (
        ("/v1/responses", {"model": "gpt-4o", "input": "hello", "max_output_tokens": 16}),
        ("/v1/moderations", {"input": ["hello", "there"]}),
    ):
        assert (await env.client.post(path, json=body, headers=headers)).status_code == 200
    day = await reported_day(env, clock)
    [answer, moderation] = sorted(
        env.container.usage_store.query(env.org.id), key=lambda r: r.endpoint != "responses"
    )

    async def results(kind: str) -> list[dict[str, object]]:
        r = await env.client.get(
            f"{ORG}/usage/{kind}?start_time={day}&group_by=model", headers=env.admin()
        )
        assert r.status_code == 200, r.text
        return [x for b in r.json()["data"] for x in b["results"]]

    [completions] = await results("completions")
    assert (completions["model"], completions["num_model_requests"]) == ("gpt-4o", 1)
    assert completions["output_tokens"] == answer.output_tokens == 16
    [moderations] = await results("moderations")
    assert moderations["object"] == "organization.usage.moderations.result"
    assert (moderations["model"], moderations["num_model_requests"]) == (
        "omni-moderation-latest",
        1,
    )
    assert moderations["input_tokens"] == moderation.input_tokens > 0


async def test_images_have_their_own_usage(env: Env, clock: FrozenClock) -> None:
    headers = {"authorization": f"Bearer {env.project_key}"}
    body = {"model": "dall-e-2", "prompt": "a key", "n": 2, "size": "512x512"}
    png = {"image": ("key.png", PNG_1X1)}
    for path, kwargs in (
        ("/v1/images/generations", {"json": body}),
        ("/v1/images/edits", {"data": {"prompt": "a key", "n": "3"}, "files": png}),
        ("/v1/images/variations", {"files": png}),
    ):
        r = await env.client.post(path, headers=headers, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
    day = await reported_day(env, clock)
    r = await env.client.get(
        f"{ORG}/usage/images?start_time={day}&group_by=model", headers=env.admin()
    )
    assert r.status_code == 200, r.text
    [result] = [x for b in r.json()["data"] for x in b["results"]]
    assert result["object"] == "organization.usage.images.result"
    assert (result["model"], result["images"], result["num_model_requests"]) == ("dall-e-2", 6, 3)

    # OpenAI's source grouping and filter: generations, edits and variations.
    async def results(query: str) -> list[dict[str, object]]:
        r = await env.client.get(f"{ORG}/usage/images?start_time={day}&{query}",
                                 headers=env.admin())  # fmt: skip
        assert r.status_code == 200, r.text
        return [x for b in r.json()["data"] for x in b["results"]]

    by_source = await results("group_by=source&group_by[]=model")
    assert [(x["source"], x["model"], x["images"], x["num_model_requests"]) for x in by_source] == [
        ("image.generation", "dall-e-2", 2, 1),
        ("image.edit", "dall-e-2", 3, 1),
        ("image.variation", "dall-e-2", 1, 1),
    ]
    assert [x["images"] for x in await results("sources[]=image.generation")] == [2]
    assert [x["images"] for x in await results("sources=image.edit&sources=image.variation")] == [4]
    assert [x["source"] for x in await results("sources=image.edit&group_by=source")] == [
        "image.edit"
    ]
    # Sizes are not recorded: asking for them is refused, never answered with every size.
    for query, param in (("sizes[]=512x512", "sizes"), ("group_by=size", "group_by"),
                         ("sources=image.painting", "sources")):  # fmt: skip
        r = await env.client.get(f"{ORG}/usage/images?start_time={day}&{query}",
                                 headers=env.admin())  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


async def test_gpt_image_1_shows_its_tokens_in_images_usage_and_costs(
    env: Env, clock: FrozenClock
) -> None:
    headers = {"authorization": f"Bearer {env.project_key}"}
    for body in (
        {"model": "gpt-image-1", "prompt": "a key", "n": 2, "quality": "low", "size": "1024x1024"},
        {"model": "dall-e-2", "prompt": "a key", "size": "256x256"},
    ):
        r = await env.client.post("/v1/images/generations", json=body, headers=headers)
        assert r.status_code == 200, r.text
    day = await reported_day(env, clock)
    records = {r.model: r for r in env.container.usage_store.query(env.org.id)}
    gpt = records["gpt-image-1"]
    assert (gpt.images, gpt.input_tokens, gpt.output_tokens) == (2, 2, 2 * 272)
    r = await env.client.get(
        f"{ORG}/usage/images?start_time={day}&group_by=model", headers=env.admin()
    )
    assert r.status_code == 200, r.text
    results = {x["model"]: x for b in r.json()["data"] for x in b["results"]}
    shown = {m: (x["images"], x["input_tokens"], x["output_tokens"]) for m, x in results.items()}
    assert shown == {"gpt-image-1": (2, 2, 544), "dall-e-2": (1, 0, 0)}
    assert await dollars_by_line_item(env, day) == {
        m: r.cost_micro_usd / 1_000_000 for m, r in records.items()
    }
    # 2 text tokens at $5 per 1M and 544 image tokens at $40 per 1M, in micro-dollars.
    assert gpt.cost_micro_usd == 2 * 5 + 544 * 40


async def test_gpt_4o_transcribe_shows_its_tokens_in_audio_transcriptions_usage(
    env: Env, clock: FrozenClock
) -> None:
    headers = {"authorization": f"Bearer {env.project_key}"}
    for model in ("gpt-4o-transcribe", "whisper-1"):
        r = await env.client.post(
            "/v1/audio/transcriptions", data={"model": model},
            files={"file": ("a.mp3", b"x" * 32_000)}, headers=headers,
        )  # fmt: skip
        assert r.status_code == 200, r.text
    day = await reported_day(env, clock)
    records = {r.model: r for r in env.container.usage_store.query(env.org.id)}
    gpt = records["gpt-4o-transcribe"]
    assert (gpt.audio_seconds, gpt.input_tokens) == (0, 20)  # 2 s, 10 audio tokens a second
    r = await env.client.get(
        f"{ORG}/usage/audio_transcriptions?start_time={day}&group_by=model", headers=env.admin()
    )
    assert r.status_code == 200, r.text
    results = {x["model"]: x for b in r.json()["data"] for x in b["results"]}
    shown = {m: (x["seconds"], x["input_tokens"], x["output_tokens"]) for m, x in results.items()}
    assert shown == {"gpt-4o-transcribe": (0, 20, gpt.output_tokens), "whisper-1": (2, 0, 0)}
    assert all(x["num_model_requests"] == 1 for x in results.values())
    assert await dollars_by_line_item(env, day) == {
        m: r.cost_micro_usd / 1_000_000 for m, r in records.items()
    }
    # 20 audio tokens at $6 per 1M and the transcript at $10 per 1M, rounded up once.
    assert gpt.cost_micro_usd == -(-(20 * 6 + gpt.output_tokens * 10) // 1)


async def dollars_by_line_item(kp: Env, since: int) -> dict[str, float]:
    """The Admin API's costs since ``since``, in dollars by line item (a model)."""
    costs = await kp.client.get(
        f"{ORG}/costs?start_time={since}&group_by[]=line_item", headers=kp.admin()
    )
    assert costs.status_code == 200, costs.text
    return {
        x["line_item"]: x["amount"]["value"] for b in costs.json()["data"] for x in b["results"]
    }
