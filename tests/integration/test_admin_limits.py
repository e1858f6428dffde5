"""Admin API for rate limits and usage tiers (BRIEF C6): OpenAI's project.rate_limit objects,
lowering only, applied by the gateway at once, and the usage tier with its progress."""

from __future__ import annotations

import pytest
from openai.types.admin.organization.projects.project_rate_limit import ProjectRateLimit
from test_admin_billing import ORG, Env, env  # noqa: F401  (env is a fixture)

pytestmark = pytest.mark.anyio


async def test_project_rate_limits_list_lower_and_refuse_raising(env: Env) -> None:  # noqa: F811
    path = f"{ORG}/projects/{env.project.id}/rate_limits"
    listed = (await env.client.get(path, headers=env.admin())).json()
    assert listed["object"] == "list"
    row = next(r for r in listed["data"] if r["model"] == "gpt-4o")
    assert row["object"] == "project.rate_limit" and row["id"] == "rl-gpt-4o"
    assert row["max_requests_per_1_minute"] > 0 and row["max_tokens_per_1_minute"] > 0
    too_high = await env.client.post(
        path + "/rl-gpt-4o", json={"max_requests_per_1_minute": 10**9}, headers=env.admin()
    )
    assert (
        too_high.status_code == 400
        and too_high.json()["error"]["param"] == "max_requests_per_1_minute"
    )
    lowered = await env.client.post(
        path + "/rl-gpt-4o", json={"max_requests_per_1_minute": 1}, headers=env.admin()
    )
    assert lowered.status_code == 200 and lowered.json()["max_requests_per_1_minute"] == 1
    assert (await env.chat(max_tokens=5)).status_code == 200
    refused = await env.chat(max_tokens=5)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    other = await env.client.get(
        f"{ORG}/projects/{env.other_project_id}/rate_limits", headers=env.admin()
    )
    assert other.status_code == 404
    bad = await env.client.post(
        path + "/rl-gpt-4o", json={"max_requests_per_1_minute": "1"}, headers=env.admin()
    )
    assert bad.status_code == 400


async def test_every_row_is_openais_project_rate_limit_image_and_audio_models_too(
    env: Env,  # noqa: F811
) -> None:
    """OpenAI's type makes requests and tokens per minute integers on every model: an image or
    audio model, limited by neither tokens nor (here) audio, shows 0 tokens, not null."""
    path = f"{ORG}/projects/{env.project.id}/rate_limits"
    rows = (await env.client.get(path, headers=env.admin())).json()["data"]
    assert {"dall-e-3", "whisper-1", "gpt-4o"} <= {r["model"] for r in rows}
    for row in rows:
        ProjectRateLimit.model_validate(row)  # (the SDK's list does not validate: it constructs)
    shown = {r["model"]: r for r in rows}
    dall_e = shown["dall-e-3"]
    assert (dall_e["max_requests_per_1_minute"], dall_e["max_tokens_per_1_minute"]) == (10_000, 0)
    assert dall_e["max_images_per_1_minute"] == 50  # (Tier 5's figures)
    assert shown["whisper-1"]["max_tokens_per_1_minute"] == 0
    lowered = await env.client.post(
        path + "/rl-dall-e-3", json={"max_images_per_1_minute": 5}, headers=env.admin()
    )
    assert lowered.status_code == 200, lowered.text
    updated = ProjectRateLimit.model_validate(lowered.json())
    assert (updated.max_tokens_per_1_minute, updated.max_images_per_1_minute) == (0, 5)


async def test_a_limit_for_a_model_nobody_serves_is_refused(env: Env) -> None:  # noqa: F811
    """A typo in the model would otherwise store a limit that limits nothing, silently."""
    path = f"{ORG}/projects/{env.project.id}/rate_limits"
    before = (await env.client.get(path, headers=env.admin())).json()["data"]
    typo = await env.client.post(
        path + "/rl-gpt4o-mini", json={"max_requests_per_1_minute": 1}, headers=env.admin()
    )
    assert typo.status_code == 404 and typo.json()["error"]["param"] == "rate_limit_id"
    assert "gpt4o-mini" in typo.json()["error"]["message"]
    assert (await env.client.get(path, headers=env.admin())).json()["data"] == before
    snapshot = await env.client.post(  # a dated snapshot is limited through its model's id
        path + "/rl-gpt-4o-mini-2024-07-18", json={"max_requests_per_1_minute": 1},
        headers=env.admin(),
    )  # fmt: skip
    assert snapshot.status_code == 400 and "rl-<model>" in snapshot.json()["error"]["message"]


async def test_usage_tier_shows_progress_to_the_next(env: Env) -> None:  # noqa: F811
    tier = (await env.client.get(f"{ORG}/usage_tier", headers=env.admin())).json()
    assert tier["object"] == "organization.usage_tier" and tier["tier"] == "tier-5"
    env.container.billing.update_settings(env.org.id, tier="free")
    tier = (await env.client.get(f"{ORG}/usage_tier", headers=env.admin())).json()
    assert tier["tier"] == "free" and tier["monthly_usage_limit_micro_usd"] == 100_000_000
    assert tier["next"]["tier"] == "tier-1" and tier["next"]["paid_needed_micro_usd"] == 5_000_000
    env.container.billing.record_purchase(env.org.id, 5_000_000)
    tier = (await env.client.get(f"{ORG}/usage_tier", headers=env.admin())).json()
    assert tier["tier"] == "tier-1"  # promoted when checked
    assert tier["next"]["paid_micro_usd"] == 5_000_000 and tier["next"]["days_needed"] == 7
    assert tier["next"]["days_met"] is False and tier["next"]["days_met_at"] is not None
    project_key = await env.client.get(
        f"{ORG}/usage_tier", headers={"authorization": f"Bearer {env.project_key}"}
    )
    assert project_key.status_code == 401
