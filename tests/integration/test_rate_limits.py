"""Rate limits through the gateway: OpenAI's headers and errors, the official SDK's retries, TPM
counted up front, overrides that only lower, and automatic tier promotion (BRIEF C3, C6)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.audit.models import AuditFilter
from keyplane.clock import FrozenClock
from keyplane.errors import InvalidRequest
from keyplane.keys.format import key_id, parse
from keyplane.limits.ratelimit import ModelLimits
from kptest import ServerThread, wait_until
from smtp_support import Inbox, start_smtp

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
HEADERS = (
    "limit-requests",
    "remaining-requests",
    "reset-requests",
    "limit-tokens",
    "remaining-tokens",
    "reset-tokens",
)


@pytest.fixture
def limited(tmp_path: Path, simulator: ServerThread) -> Iterator[Keyplane]:
    kp = start_keyplane(tmp_path, simulator.url + "/v1")
    yield kp
    kp.server.stop()
    kp.container.close()


def limit_key(kp: Keyplane, **limits: int) -> None:
    parsed = parse(kp.key)
    assert parsed is not None
    kp.container.rate_limit_service.set_key_limits(
        kp.org.id, key_id(parsed.public_id), ModelLimits(**limits)
    )
    kp.server.call(kp.gateway.pipeline.money.refresh())


def post(kp: Keyplane, body: dict[str, Any] = CHAT) -> httpx.Response:
    return kphttp.post(
        kp.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {kp.key}"}
    )


def test_headers_on_success_and_on_429_and_the_error_names_the_limit(limited: Keyplane) -> None:
    limit_key(limited, rpm=6)  # one request each 10 s, plus a burst of 10 seconds' worth: 2 at once
    answers = [post(limited) for _ in range(4)]  # well within 10 s, even on a loaded machine
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    for a in answers:
        assert all(f"x-ratelimit-{h}" in a.headers for h in HEADERS), a.headers
        assert a.headers["x-ratelimit-limit-requests"] == "6"
    assert [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers[:2]] == [1, 0]
    error = answers[2].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert error["message"].startswith("Rate limit reached for gpt-4o-mini in API key ")
    assert "requests per min (RPM): Limit 6" in error["message"]
    assert answers[2].headers["x-keyplane-limit"] == "rate"
    assert 0 < int(answers[2].headers["retry-after-ms"]) <= 10_000
    assert int(answers[2].headers["retry-after"]) <= 10
    assert re.fullmatch(r"(\d+m)?\d+(\.\d+)?m?s", answers[2].headers["x-ratelimit-reset-requests"])
    assert len(limited.usage(expect=2)) == 2  # a refused request is never forwarded or billed


def test_the_sdk_retries_rate_limits_by_itself_and_succeeds(limited: Keyplane) -> None:
    limit_key(limited, rpm=60)
    with openai.OpenAI(base_url=limited.base_url, api_key=limited.key) as client:  # default retries
        replies = [client.chat.completions.create(**CHAT) for _ in range(13)]  # type: ignore[call-overload]
    assert len(replies) == 13  # the 12th and 13th waited for Retry-After and went through


def test_tpm_counts_max_tokens_up_front_under_concurrency(
    tmp_path: Path, obedient_simulator: ServerThread
) -> None:
    # Every answer uses its whole max_tokens: settling refunds nothing, so what was admitted is
    # bounded by the limit alone (with refunds, a fast upstream frees room for more).
    limited = start_keyplane(tmp_path, obedient_simulator.url + "/v1")
    try:
        _tpm_burst(limited)
    finally:
        limited.server.stop()
        limited.container.close()


def _tpm_burst(limited: Keyplane) -> None:
    limit_key(limited, tpm=10_000)
    body = {**CHAT, "max_tokens": 1_000}

    async def burst() -> list[httpx.Response]:
        async with kphttp.AsyncClient(base_url=limited.base_url) as client:
            headers = {"authorization": f"Bearer {limited.key}"}
            return await asyncio.gather(
                *(client.post("/chat/completions", json=body, headers=headers) for _ in range(30))
            )

    started = time.monotonic()
    answers = asyncio.run(burst())
    elapsed = time.monotonic() - started
    admitted = sum(a.status_code == 200 for a in answers)
    estimate = 1_000 + 6  # max_tokens + the prompt estimate
    assert admitted * estimate <= 10_000 * (
        1 + elapsed / 60
    )  # the limit, plus what refilled meanwhile
    assert admitted >= 9
    refused = [a.json()["error"] for a in answers if a.status_code == 429]
    assert refused and {e["type"] for e in refused} == {"tokens"}
    assert "tokens per min (TPM): Limit 10000" in refused[0]["message"]


def test_a_request_without_max_tokens_counts_a_few_thousand_output_tokens_up_front(
    limited: Keyplane,
) -> None:
    """Leaving max_tokens out does not slip past a TPM limit: 4,096 output tokens are counted at
    admission (not the model's 16,384, which would make concurrent requests wait a minute), and
    the settlement counts what was written."""
    limit_key(limited, tpm=20_000)
    body = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    answer = post(limited, body)
    assert answer.status_code == 200
    remaining = int(answer.headers["x-ratelimit-remaining-tokens"])
    assert 20_000 - 4_096 - 50 <= remaining <= 20_000 - 4_096


def test_a_model_that_may_write_more_than_the_tpm_limit_still_runs_without_max_tokens(
    limited: Keyplane,
) -> None:
    """Under a 3,000 TPM limit a request without max_tokens counts what the limit leaves after
    its prompt instead of being "too large" forever (as at OpenAI, where a plain gpt-4.1 call runs
    on Tier 1's 30,000 TPM, below its 32,768 output cap); a cap the limit can never admit is."""
    limit_key(limited, tpm=3_000)
    body = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    first = post(limited, body)
    assert first.status_code == 200 and int(first.headers["x-ratelimit-remaining-tokens"]) == 0
    capped = post(limited, {**body, "max_tokens": 12_000})
    assert capped.status_code == 429 and "Request too large" in capped.json()["error"]["message"]


def test_a_project_can_lower_but_never_raise_the_organizations_limits(limited: Keyplane) -> None:
    service = limited.container.rate_limit_service
    with pytest.raises(InvalidRequest):
        service.set_project_limit(
            limited.org.id, limited.project.id, "rl-gpt-4o-mini", ModelLimits(rpm=10**9)
        )
    row = service.set_project_limit(
        limited.org.id, limited.project.id, "rl-gpt-4o-mini", ModelLimits(rpm=2)
    )
    assert row.limits.rpm == 2 and row.id == "rl-gpt-4o-mini"
    limited.server.call(limited.gateway.pipeline.money.refresh())
    assert [post(limited).status_code for _ in range(3)] == [200, 200, 429]
    assert "project " in post(limited).json()["error"]["message"]


def test_tier_promotion_waits_exactly_seven_days_and_emails_the_owners_once(
    tmp_path: Path, simulator: ServerThread
) -> None:
    inbox = Inbox()
    smtp = start_smtp(inbox)
    clock = FrozenClock(time.time())
    kp = start_keyplane(
        tmp_path,
        simulator.url + "/v1",
        clock=clock,
        tier="free",
        smtp_port=smtp.port,
        email_dispatch_interval_s=0.05,
    )
    try:
        promoter, billing = kp.container.promoter, kp.container.billing
        assert promoter.current(kp.org.id).id == "free"
        billing.record_purchase(kp.org.id, 50_000_000)  # $50 on day 0
        assert promoter.check(kp.org.id).id == "tier-1"  # type: ignore[union-attr]
        progress = promoter.progress(kp.org.id)
        assert progress.next is not None and progress.next.id == "tier-2"
        assert (
            progress.paid is not None
            and progress.paid.met
            and progress.days is not None
            and not progress.days.met
        )
        clock.advance(7 * 86400 - 1)
        assert promoter.check(kp.org.id) is None and promoter.current(kp.org.id).id == "tier-1"
        clock.advance(1)
        assert promoter.check(kp.org.id).id == "tier-2"  # type: ignore[union-attr]
        assert promoter.check(kp.org.id) is None  # once
        assert billing.effective_usage_limit(billing.settings(kp.org.id)) == 500_000_000
        wait_until(lambda: len(inbox.received) == 2)
        subjects = sorted(str(r.message["Subject"]) for r in inbox.received)
        assert subjects == [
            "[keyplane] Acme moved up to Tier 1",
            "[keyplane] Acme moved up to Tier 2",
        ]
        assert all(r.rcpt_tos == ["owner@example.com"] for r in inbox.received)
        page = kp.container.audit.query(
            kp.org.id, AuditFilter(event_types=["organization.tier_promoted"])
        )
        assert [e.details["after"]["tier"] for e in page.events] == [
            "tier-2",
            "tier-1",
        ]  # newest first
        # The gateway applies the new tier's limits: Tier 2 allows gpt-4o-mini 5,000 RPM.
        kp.server.call(kp.gateway.pipeline.money.refresh())
        assert post(kp).headers["x-ratelimit-limit-requests"] == "5000"
    finally:
        kp.server.stop()
        kp.container.close()
        smtp.stop()
