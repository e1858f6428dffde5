"""/metrics and /readyz: what an operator's Prometheus and load balancer read off a gateway,
checked against what happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import kphttp
from conftest import PG_ADMIN, Keyplane, fresh_postgres, start_keyplane
from keyplane.config import UpstreamSettings
from keyplane.errors import StoreUnavailable
from kptest import ServerThread, refusing_port

PROMPT = [{"role": "user", "content": "Say hello to keyplane"}]


@pytest.fixture
def clients() -> Iterator[list[openai.OpenAI]]:
    """The SDK clients a test opened, closed after it (an open socket fails the run)."""
    opened: list[openai.OpenAI] = []
    yield opened
    for c in opened:
        c.close()


def sdk(opened: list[openai.OpenAI], kp: Keyplane, key: str) -> openai.OpenAI:
    c = openai.OpenAI(base_url=kp.base_url, api_key=key, max_retries=0)
    opened.append(c)
    return c


CHAT = "chat.completions"


def scrape(kp: Keyplane, **headers: str) -> str:
    r = kphttp.get(kp.server.url + "/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The one sample ``name`` with (at least) ``labels``; 0 when there is none."""
    found = [
        s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()
    )


def test_metrics_count_what_was_served_and_billed(
    kp: Keyplane, clients: list[openai.OpenAI]
) -> None:
    client = sdk(clients, kp, kp.key)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=20)  # type: ignore[arg-type]
    with client.chat.completions.create(
        model="gpt-4o-mini",
        messages=PROMPT,
        max_tokens=20,
        stream=True,  # type: ignore[arg-type]
    ) as stream:
        for _ in stream:
            pass
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    wrong = sdk(clients, kp, "sk-not-a-keyplane-key")
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=PROMPT)  # type: ignore[arg-type]
    records = kp.usage(expect=5)

    text = scrape(kp)
    chat = {"endpoint": CHAT, "model": "gpt-4o-mini", "status": "200", "outcome": "completed"}
    assert value(text, "keyplane_requests_total", **chat) == 4
    assert value(text, "keyplane_requests_total", endpoint="embeddings", status="200") == 1
    assert total(text, "keyplane_requests_total") == len(records)
    # Tokens and money as billed: the usage records', to the token and the micro-dollar.
    for kind, field in (("input", "input_tokens"), ("output", "output_tokens")):
        assert total(text, "keyplane_tokens_total", type=kind) == sum(
            getattr(r, field) for r in records
        )
    assert total(text, "keyplane_cost_micro_usd_total") == sum(r.cost_micro_usd for r in records)
    assert total(text, "keyplane_cost_micro_usd_total") > 0
    # Every forwarded request in the latency histogram, each within its +Inf bucket.
    assert value(text, "keyplane_request_duration_seconds_count", endpoint=CHAT) == 4
    assert value(text, "keyplane_request_duration_seconds_bucket", endpoint=CHAT, le="+Inf") == 4
    assert value(text, "keyplane_request_duration_seconds_sum", endpoint=CHAT) == pytest.approx(
        sum(r.latency_ms for r in records if r.endpoint == CHAT) / 1000
    )
    # Refusals keyplane answered itself, by status and OpenAI's code.
    assert value(text, "keyplane_errors_total", status="401", code="invalid_api_key") == 1
    assert value(text, "keyplane_errors_total", status="404", code="model_not_found") == 1
    # The state of the process: nothing left in flight or unstored, the key cached.
    assert value(text, "keyplane_holds_in_flight") == 0
    assert value(text, "keyplane_settlements_queued") == 0
    assert value(text, "keyplane_cached_keys") == 1
    assert value(text, "keyplane_settlement_last_flush_timestamp_seconds") > 0
    assert value(text, "process_resident_memory_bytes") > 10_000_000
    # Never a secret, a key or an organization.
    assert kp.key not in text and kp.key[:20] not in text
    assert kp.org.id not in text and kp.project.id not in text


def test_metrics_are_served_only_to_the_allowed_addresses(
    tmp_path: Path, simulator: ServerThread
) -> None:
    kp = start_keyplane(
        tmp_path, simulator.url + "/v1", metrics_allowed_ips=["10.0.0.0/8"],
        trusted_proxies=["127.0.0.1/32"],
    )  # fmt: skip
    try:
        url = kp.server.url + "/metrics"
        refused = kphttp.get(url)  # from 127.0.0.1, not in the list
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "ip_not_allowed"
        assert "keyplane_" not in refused.text
        # Through the trusted proxy, for a scraper inside the allowed network.
        assert "keyplane_requests" in scrape(kp, **{"X-Forwarded-For": "10.1.2.3"})
        # A claim of being in it, from outside, is refused.
        outside = kphttp.get(url, headers={"X-Forwarded-For": "10.1.2.3, 8.8.8.8"})
        assert outside.status_code == 403
        post = kphttp.post(url, headers={"X-Forwarded-For": "10.1.2.3"})
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    finally:
        kp.server.stop()
        kp.container.close()


def test_metrics_can_be_turned_off(tmp_path: Path, simulator: ServerThread) -> None:
    kp = start_keyplane(tmp_path, simulator.url + "/v1", metrics_allowed_ips=[])
    try:
        r = kphttp.get(kp.server.url + "/metrics")
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "Invalid URL (GET /metrics)"
    finally:
        kp.server.stop()
        kp.container.close()


def test_metrics_show_an_unreachable_upstream(tmp_path: Path, clients: list[openai.OpenAI]) -> None:
    with refusing_port() as port:
        dead = f"http://127.0.0.1:{port}/v1"
        kp = start_keyplane(
            tmp_path, dead,
            upstreams=[UpstreamSettings(name="down", base_url=dead, models=["gpt-4o-mini"])],
        )  # fmt: skip
        try:
            client = sdk(clients, kp, kp.key)
            with pytest.raises(openai.APIStatusError) as raised:
                client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
            assert raised.value.status_code == 502
            kp.usage(expect=1)
            text = scrape(kp)
            # Tried once, then retried once (upstream_retries=1 in the tests' settings).
            assert (
                value(text, "keyplane_upstream_failures_total", upstream="down", reason="connect")
                == 2
            )
            assert value(text, "keyplane_errors_total", status="502") == 1
            unreachable = {"endpoint": CHAT, "status": "502", "outcome": "upstream_unreachable"}
            assert value(text, "keyplane_requests_total", **unreachable) == 1
        finally:
            kp.server.stop()
            kp.container.close()


def ready(kp: Keyplane) -> httpx.Response:
    return kphttp.get(kp.server.url + "/readyz")


def test_readyz_turns_a_gateway_away_only_when_it_would_refuse_everything(
    tmp_path: Path, simulator: ServerThread, clients: list[openai.OpenAI]
) -> None:
    # Settlements stored only when the test says, and at most one kept unstored.
    kp = start_keyplane(
        tmp_path, simulator.url + "/v1", max_unstored_settlements=1, usage_flush_interval_s=3600.0
    )
    try:
        r = ready(kp)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "status": "ok", "serving": True, "database": "ok", "settlements_queued": 0,
            "settlements_queued_max": 1,
        }  # fmt: skip
        client = sdk(clients, kp, kp.key)
        client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
        full = ready(kp)
        assert full.status_code == 503
        assert full.json()["status"] == "unavailable" and full.json()["settlements_queued"] == 1
        with pytest.raises(openai.InternalServerError):  # what the load balancer spares clients
            client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
        kp.flush()
        assert ready(kp).status_code == 200
        assert kphttp.get(kp.server.url + "/healthz").json() == {"status": "ok"}
    finally:
        kp.server.stop()
        kp.container.close()


@pytest.mark.postgres
def test_an_unreachable_database_shows_but_keeps_the_gateway_in_service(
    tmp_path: Path, simulator: ServerThread, clients: list[openai.OpenAI]
) -> None:
    with fresh_postgres() as url:
        name = url.rsplit("/", 1)[1]
        kp = start_keyplane(
            tmp_path, simulator.url + "/v1", database_url=url, usage_flush_interval_s=3600.0
        )
        client = sdk(clients, kp, kp.key)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            with pytest.raises(StoreUnavailable):
                kp.flush()
            r = ready(kp)
            assert r.status_code == 200  # the cached key still works: the gateway stays in
            assert r.json()["database"] == "unreachable"
            assert r.json()["settlements_queued"] == 1
            text = scrape(kp)
            assert value(text, "keyplane_settlement_flushes_failed_total") == 1
            assert value(text, "keyplane_settlements_queued") == 1
            client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)  # type: ignore[arg-type]
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            kp.usage(expect=2)
            assert ready(kp).json()["database"] == "ok"
            assert value(scrape(kp), "keyplane_requests_total", status="200") == 2
        finally:
            kp.server.stop()
            kp.container.close()
