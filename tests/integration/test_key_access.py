"""Permissions, allowed models, IP allowlists at every level, and rotation with a grace period
(BRIEF C2), through the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.clock import FrozenClock
from keyplane.keys.format import key_id, parse
from keyplane.keys.permissions import ALL_READ
from keyplane.limits.ratelimit import ModelLimits
from kptest import ServerThread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
EMBED = {"model": "text-embedding-3-small", "input": "hi"}


@pytest.fixture
def kp(tmp_path: Path, simulator: ServerThread) -> Iterator[Keyplane]:
    instance = start_keyplane(tmp_path, simulator.url + "/v1", trusted_proxies=["10.0.0.0/8"])
    yield instance
    instance.server.stop()
    instance.container.close()


def call(
    kp: Keyplane,
    key: str,
    path: str = "/chat/completions",
    body: dict[str, Any] | None = CHAT,
    client: tuple[str, int] | None = None,
    xff: str | None = None,
) -> httpx.Response:
    """A request through the real app in-process, from a chosen client address."""
    headers = {"authorization": f"Bearer {key}"}
    if xff:
        headers["x-forwarded-for"] = xff

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=kp.server.app, client=client or ("127.0.0.1", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://kp") as c:
            if body is None:
                return await c.get("/v1" + path, headers=headers)
            return await c.post("/v1" + path, json=body, headers=headers)

    return kp.server.call(go())


def refresh(kp: Keyplane) -> None:
    kp.server.call(kp.gateway.pipeline.money.refresh())


def test_read_only_and_restricted_keys(kp: Keyplane) -> None:
    _, read_only = kp.new_key("ro", scopes=[ALL_READ])
    assert call(kp, read_only, "/models", None).status_code == 200
    refused = call(kp, read_only)
    assert refused.status_code == 401
    assert (
        refused.json()["error"]["message"]
        == "You have insufficient permissions for this operation. Missing scopes: chat.write."
    )
    _, embed_only = kp.new_key("embed", scopes=["embeddings.write"])
    assert call(kp, embed_only, "/embeddings", EMBED).status_code == 200
    assert call(kp, embed_only).status_code == 401
    assert call(kp, embed_only, "/models", None).status_code == 401  # models.read not granted
    with (
        openai.OpenAI(base_url=kp.base_url, api_key=read_only, max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]


def test_allowed_models_at_project_and_key_level(kp: Keyplane) -> None:
    access = kp.container.access
    access.set_policy(
        kp.org.id,
        "project",
        kp.project.id,
        allowed_models=["gpt-4o-mini", "text-embedding-3-small"],
        allowed_cidrs=None,
    )
    refresh(kp)
    assert call(kp, kp.key).status_code == 200
    refused = call(kp, kp.key, body={**CHAT, "model": "gpt-4o"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    listed = {m["id"] for m in call(kp, kp.key, "/models", None).json()["data"]}
    assert listed == {"gpt-4o-mini", "text-embedding-3-small"}
    _, narrow = kp.new_key("narrow", allowed_models=["text-embedding-3-small", "gpt-4o"])
    assert call(kp, narrow, "/embeddings", EMBED).status_code == 200
    assert call(kp, narrow).status_code == 404  # the key does not allow gpt-4o-mini
    assert (
        call(kp, narrow, body={**CHAT, "model": "gpt-4o"}).status_code == 404
    )  # nor the project gpt-4o


def test_ip_allowlists_apply_at_every_level_and_xff_only_from_trusted_proxies(kp: Keyplane) -> None:
    _, key = kp.new_key("office", allowed_cidrs=["192.0.2.0/24", "2001:db8::/32"])
    assert call(kp, key, client=("192.0.2.7", 1)).status_code == 200
    denied = call(kp, key, client=("198.51.100.1", 1))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ip_not_allowed"
    # A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    assert call(kp, key, client=("198.51.100.1", 1), xff="192.0.2.7").status_code == 403
    # From a trusted proxy, the hop before it is the client; the leftmost claim is not trusted.
    assert call(kp, key, client=("10.1.1.1", 1), xff="192.0.2.7").status_code == 200
    assert call(kp, key, client=("10.1.1.1", 1), xff="192.0.2.7, 198.51.100.1").status_code == 403
    assert call(kp, key, client=("2001:db8::5", 1)).status_code == 200
    assert call(kp, key, client=("::ffff:192.0.2.9", 1)).status_code == 200  # IPv4-mapped
    # The organization's list must pass too: AND, never OR.
    kp.container.access.set_policy(
        kp.org.id, "org", kp.org.id, allowed_models=None, allowed_cidrs=["2001:db8::/32"]
    )
    refresh(kp)
    assert call(kp, key, client=("192.0.2.7", 1)).status_code == 403
    assert call(kp, key, client=("2001:db8::5", 1)).status_code == 200


def test_spoofed_xff_over_a_real_socket_is_ignored(kp: Keyplane) -> None:
    """Through the real server: the HTTP server itself must not rewrite the client address from
    X-Forwarded-For (uvicorn did so for 127.0.0.1 by default); only keyplane's trusted_proxies
    decide."""
    _, key = kp.new_key("office", allowed_cidrs=["192.0.2.0/24"])
    headers = {"authorization": f"Bearer {key}", "x-forwarded-for": "192.0.2.7"}
    resp = kphttp.post(f"{kp.base_url}/chat/completions", json=CHAT, headers=headers)
    assert resp.status_code == 403
    assert "127.0.0.1" in resp.json()["error"]["message"]


def test_rotation_with_a_two_second_grace_and_without(
    tmp_path: Path, simulator: ServerThread
) -> None:
    clock = FrozenClock(time.time())
    kp = start_keyplane(tmp_path, simulator.url + "/v1", clock=clock)
    try:
        parsed = parse(kp.key)
        assert parsed is not None
        old_id = key_id(parsed.public_id)
        new, new_secret = kp.container.keys.rotate(kp.org.id, old_id, grace_s=2, created_by=None)
        kp.gateway.pipeline.auth.forget(old_id)
        assert new.rotated_from == old_id and new.name == "test key"
        assert call(kp, kp.key).status_code == 200  # within the grace period
        assert call(kp, new_secret).status_code == 200
        clock.advance(2)
        expired = call(kp, kp.key)
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
        assert call(kp, new_secret).status_code == 200
        newer, newest_secret = kp.container.keys.rotate(
            kp.org.id, new.id, grace_s=0, created_by=None
        )
        kp.gateway.pipeline.auth.forget(new.id)
        assert call(kp, new_secret).status_code == 401  # no grace: at once
        assert call(kp, newest_secret).status_code == 200 and newer.rotated_from == new.id
    finally:
        kp.server.stop()
        kp.container.close()


def test_last_used_records_only_requests_the_key_was_allowed_to_make(kp: Keyplane) -> None:
    """A request its IP allowlist, permissions, models or rate limits refuse does not make a key
    "used": only one forwarded upstream (or answered by keyplane) after every check passed."""
    kp.container.rate_limit_service.set_project_limit(
        kp.org.id, kp.project.id, "rl-gpt-4o-mini", ModelLimits(rpm=1)
    )

    def last_used(kid: str) -> tuple[int | None, str | None]:
        kp.server.call(kp.gateway._flush_last_used())
        key = kp.container.keys.get(kp.org.id, kid)
        return key.last_used_at, key.last_used_ip

    fenced_id, fenced = kp.new_key("office", allowed_cidrs=["192.0.2.0/24"])
    read_only_id, read_only = kp.new_key("ro", scopes=[ALL_READ])
    narrow_id, narrow = kp.new_key("narrow", allowed_models=["gpt-4o"])
    limited_id, limited = kp.new_key("limited")
    for _ in range(3):
        denied = call(kp, fenced)
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "ip_not_allowed"
    assert call(kp, fenced, "/models", None).status_code == 403
    assert call(kp, read_only).status_code == 401  # chat.write missing
    assert call(kp, narrow).status_code == 404  # gpt-4o-mini not allowed to it
    assert call(kp, kp.key).status_code == 200  # the project's one request a minute ...
    refused = call(kp, limited)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    for kid in (fenced_id, read_only_id, narrow_id, limited_id):
        assert last_used(kid) == (None, None), kid
    served_id = key_id(parse(kp.key).public_id)  # type: ignore[union-attr]
    assert last_used(served_id) == (int(kp.container.clock.now()), "127.0.0.1")

    assert call(kp, fenced, "/models", None, client=("192.0.2.7", 1)).status_code == 200
    assert call(kp, read_only, "/models", None).status_code == 200
    assert last_used(fenced_id)[1] == "192.0.2.7"
    assert last_used(read_only_id)[1] == "127.0.0.1"
