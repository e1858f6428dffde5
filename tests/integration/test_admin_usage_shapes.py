"""The Admin API's usage and rate-limit endpoints as OpenAI's SDK reads them: the audio tokens of
completions usage, the hosted tools' usage pages (empty: keyplane forwards no hosted tools), and
the ``before`` cursor of a project's rate limits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.admin.organization.projects.project_rate_limit import ProjectRateLimit
from openai.types.admin.organization.usage_code_interpreter_sessions_response import (
    UsageCodeInterpreterSessionsResponse,
)
from openai.types.admin.organization.usage_vector_stores_response import (
    UsageVectorStoresResponse,
)
from test_admin_billing import ORG, Env, env, error_of, open_env  # noqa: F401  (env: a fixture)

from keyplane.clock import FrozenClock
from kptest import just_before_month_end

pytestmark = pytest.mark.anyio
DAY = 86400
HOUR = 3600


def sdk(env: Env) -> openai.AsyncOpenAI:  # noqa: F811  (not the fixture)
    """OpenAI's own client, pointed at keyplane with the organization's admin key."""
    return openai.AsyncOpenAI(
        api_key="unused", admin_api_key=env.admin_key, base_url="http://keyplane/v1",
        http_client=env.client, max_retries=0,
    )  # fmt: skip


# -- audio tokens of completions ------------------------------------------------------------------
HEARD = {"cached_tokens": 0, "audio_tokens": 25}  # gpt-4o-audio-preview's usage: 25 of 40 heard
SAID = {"reasoning_tokens": 0, "audio_tokens": 80}  # and 80 of 90 spoken


def _usage(prompt: int, completion: int, audio: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}  # fmt: skip
    if audio:
        usage |= {"prompt_tokens_details": HEARD, "completion_tokens_details": SAID}
    return usage


def _answer(request: httpx.Request) -> httpx.Response:
    """An upstream serving an audio chat model: a request whose messages carry audio is answered
    with audio tokens in its usage (streamed or not), any other with text tokens only."""
    body = orjson.loads(request.content)
    audio = b"input_audio" in request.content
    usage = _usage(40, 90, audio)
    message = {"role": "assistant", "content": "hi"}
    if not body.get("stream"):
        answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
                  "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                  "usage": usage}  # fmt: skip
        return httpx.Response(200, json=answer)
    chunks = [
        {"id": "chatcmpl-2", "object": "chat.completion.chunk", "model": "gpt-4o",
         "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}], "usage": None},
        {"id": "chatcmpl-2", "object": "chat.completion.chunk", "model": "gpt-4o",
         "choices": [], "usage": usage},
    ]  # fmt: skip
    events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
    headers = {"content-type": "text/event-stream"}
    return httpx.Response(200, stream=_Events(events), headers=headers)


class _Events(httpx.AsyncByteStream):
    """A stream's events, one at a time (a body given whole would be read before keyplane)."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for e in self.events:
            yield e


@pytest.fixture
async def audio_env(tmp_path: Path) -> AsyncIterator[Env]:
    """On a clock that stands still half a second before a month ends: the day the requests are
    made is the day their usage is asked for."""
    clock = FrozenClock(just_before_month_end())
    async with open_env(tmp_path, httpx.MockTransport(_answer), clock=clock) as opened:
        yield opened


async def test_completions_usage_counts_the_audio_tokens_the_upstream_reports(
    audio_env: Env,
) -> None:
    kp = audio_env
    spoken = [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]
    headers = {"authorization": f"Bearer {kp.project_key}"}
    speak = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
    for content, stream in ((spoken, False), (spoken, True), ("hello", False)):
        body = {"model": "gpt-4o-audio-preview", "messages": [{"role": "user", "content": content}],
                "max_tokens": 100, "stream": stream}  # fmt: skip
        if content is spoken:
            body |= speak
        r = await kp.client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
    await kp.gateway.flush()
    records = kp.container.usage_store.query(kp.org.id)
    assert sorted((r.input_audio_tokens, r.output_audio_tokens) for r in records) == [
        (0, 0), (25, 80), (25, 80),
    ]  # fmt: skip

    today = int(kp.container.clock.now()) // DAY * DAY
    page = await sdk(kp).admin.organization.usage.completions(start_time=today)
    [result] = [r for bucket in page.data for r in bucket.results]
    assert result.object == "organization.usage.completions.result"
    assert (result.input_tokens, result.output_tokens) == (120, 270)
    assert (result.input_audio_tokens, result.output_audio_tokens) == (50, 160)
    assert result.num_model_requests == 3


# -- hosted tools' usage ----------------------------------------------------------------------------
async def test_vector_stores_and_code_interpreter_sessions_usage_are_pages_of_empty_buckets(
    env: Env,  # noqa: F811
) -> None:
    usage = sdk(env).admin.organization.usage
    start = int(time.time()) // HOUR * HOUR - 4 * HOUR
    assert (await env.chat(max_tokens=5)).status_code == 200  # usage of another kind
    await env.gateway.flush()
    stores = await usage.vector_stores(
        start_time=start, bucket_width="1h", limit=3, group_by=["project_id"],
        project_ids=[env.project.id],
    )  # fmt: skip
    assert isinstance(stores, UsageVectorStoresResponse)
    assert [b.start_time for b in stores.data] == [start, start + HOUR, start + 2 * HOUR]
    assert all(b.object == "bucket" and b.results == [] for b in stores.data)
    assert stores.has_more and stores.next_page == str(start + 3 * HOUR)
    rest = await usage.vector_stores(
        start_time=start, bucket_width="1h", limit=3, page=stores.next_page
    )
    assert rest.data[0].start_time == start + 3 * HOUR and not rest.has_more
    sessions = await usage.code_interpreter_sessions(start_time=start, end_time=start + DAY)
    assert isinstance(sessions, UsageCodeInterpreterSessionsResponse)
    [bucket] = sessions.data  # one day, as the other usage endpoints' default width
    assert (bucket.start_time, bucket.end_time, bucket.results) == (start, start + DAY, [])
    assert not sessions.has_more and sessions.next_page is None


@pytest.mark.parametrize("kind", ["vector_stores", "code_interpreter_sessions"])
async def test_hosted_tools_usage_refuses_what_the_other_usage_endpoints_refuse(
    env: Env,  # noqa: F811
    kind: str,
) -> None:
    today = int(time.time()) // DAY * DAY
    for query, param in (
        (f"start_time={today}&group_by=model", "group_by"),  # as OpenAI's SDK sends it
        (f"start_time={today}&group_by[]=model", "group_by[].0"),  # (as every usage endpoint)
        (f"start_time={today}&end_time={today}", "end_time"),
        (f"start_time={today}&limit=32", "limit"),  # 1d buckets: 31 at most
        (f"start_time={today}&bucket_width=1w", "bucket_width"),
        (f"start_time={today}&page={today + 5}", "page"),
        ("end_time=5", "start_time"),
    ):
        r = await env.client.get(f"{ORG}/usage/{kind}?{query}", headers=env.admin())
        assert error_of(r, 400)["param"] == param, (query, r.text)
    project_key = {"authorization": f"Bearer {env.project_key}"}
    r = await env.client.get(f"{ORG}/usage/{kind}?start_time={today}", headers=project_key)
    assert r.status_code == 401


# -- rate limits' before --------------------------------------------------------------------------
async def test_project_rate_limits_page_backwards_with_before(env: Env) -> None:  # noqa: F811
    limits = sdk(env).admin.organization.projects.rate_limits

    async def ids(**query: Any) -> tuple[list[str], bool | None]:
        page = await limits.list_rate_limits(env.project.id, **query)
        assert all(isinstance(r, ProjectRateLimit) for r in page.data)
        return [r.id for r in page.data], page.has_more

    every, more = await ids(limit=100)
    assert len(every) >= 5 and not more
    assert await ids(limit=2, after=every[1]) == (every[2:4], True)
    # The page before one (OpenAI's example: before its first id), and whether more lie before.
    assert await ids(limit=2, before=every[2]) == (every[:2], False)
    assert await ids(limit=2, before=every[4]) == (every[2:4], True)
    assert await ids(limit=100, after=every[0], before=every[3]) == (every[1:3], False)
    assert await ids(before=every[0]) == ([], False)
    r = await env.client.get(
        f"{ORG}/projects/{env.project.id}/rate_limits?before=rl-no-such-model", headers=env.admin()
    )
    assert error_of(r, 400)["param"] == "before"
