"""The official openai SDK against a real keyplane and simulator over loopback sockets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import Keyplane, fresh_postgres, start_keyplane
from keyplane import simulator as sim
from keyplane.usage.pricing import PriceTable
from kptest import ServerThread

PROMPT = [{"role": "user", "content": "Say hello to keyplane"}]


_open: list[openai.OpenAI] = []


def client(kp: Keyplane, key: str | None = None) -> openai.OpenAI:
    c = openai.OpenAI(base_url=kp.base_url, api_key=key or kp.key, max_retries=0)
    _open.append(c)
    return c


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def kp(
    request: pytest.FixtureRequest, tmp_path: Path, simulator: ServerThread
) -> Iterator[Keyplane]:
    """keyplane on each database it supports: the gateway serves the same on both."""
    with contextlib.ExitStack() as stack:
        url = "" if request.param == "sqlite" else stack.enter_context(fresh_postgres())
        instance = start_keyplane(tmp_path, simulator.url + "/v1", database_url=url)
        try:
            yield instance
        finally:
            instance.server.stop()
            instance.container.close()


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def expected_cost(model: str, inp: int, out: int) -> int:
    price = PriceTable.load().price(model, 2_000_000_000)
    assert price is not None
    return price.token_cost(inp, 0, out)


def test_chat_is_answered_and_metered_once_with_exact_cost(kp: Keyplane) -> None:
    reply = client(kp).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=9)
    assert reply.choices[0].message.content == sim.completion_text(9)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == sim.prompt_tokens(PROMPT)
    [record] = kp.usage(expect=1)
    assert (record.model, record.endpoint, record.status) == (
        "gpt-4o-mini",
        "chat.completions",
        200,
    )
    assert (record.input_tokens, record.output_tokens) == (sim.prompt_tokens(PROMPT), 9)
    assert record.cost_micro_usd == expected_cost("gpt-4o-mini", sim.prompt_tokens(PROMPT), 9)
    assert record.key_id.startswith("key_") and record.project_id == kp.project.id
    assert record.client_ip == "127.0.0.1"
    assert not record.tokens_estimated


def test_stream_delivers_every_chunk_and_usage_last_when_asked(kp: Keyplane) -> None:
    chunks = list(
        client(kp).chat.completions.create(
            model="gpt-4o-mini",
            messages=PROMPT,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == sim.completion_text(16)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16
    [record] = kp.usage(expect=1)
    assert record.stream and record.output_tokens == 16 and not record.tokens_estimated
    assert record.cost_micro_usd == expected_cost("gpt-4o-mini", sim.prompt_tokens(PROMPT), 16)


def test_stream_without_include_usage_gets_no_usage_chunk_but_is_still_metered(
    kp: Keyplane,
) -> None:
    chunks = list(
        client(kp).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, stream=True)
    )
    assert all(c.choices for c in chunks), (
        "the usage-only chunk keyplane asked for must be stripped"
    )
    [record] = kp.usage(expect=1)
    assert (record.input_tokens, record.output_tokens) == (sim.prompt_tokens(PROMPT), 16)
    assert not record.tokens_estimated


def test_embeddings_and_models(kp: Keyplane) -> None:
    c = client(kp)
    result = c.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    ids = {m.id for m in c.models.list()}
    assert {"gpt-4o-mini", "text-embedding-3-small"} <= ids
    assert c.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    [record] = kp.usage(expect=1)
    tokens = sim.text_tokens("hello world") + sim.text_tokens("bye")
    assert (record.endpoint, record.input_tokens, record.output_tokens) == ("embeddings", tokens, 0)
    assert record.cost_micro_usd == expected_cost("text-embedding-3-small", tokens, 0)


def test_legacy_completions(kp: Keyplane) -> None:
    """gpt-3.5-turbo-instruct, the model OpenAI serves there, is listed and priced."""
    c = client(kp)
    assert c.models.retrieve("gpt-3.5-turbo-instruct").id == "gpt-3.5-turbo-instruct"
    reply = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="once upon", max_tokens=3)
    assert reply.choices[0].text == sim.completion_text(3)
    [record] = kp.usage(expect=1)
    assert record.endpoint == "completions" and record.output_tokens == 3
    cost = expected_cost("gpt-3.5-turbo-instruct", record.input_tokens, 3)
    assert record.cost_micro_usd == cost > 0


@pytest.mark.parametrize(
    "bad_key",
    [
        "sk-not-a-keyplane-key",
        "sk-kp-proj-" + "A" * 50,  # well-formed, wrong checksum
    ],
)
def test_bad_keys_raise_authentication_error(kp: Keyplane, bad_key: str) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        client(kp, bad_key).chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    assert err.value.code == "invalid_api_key"
    assert kp.usage() == []


def test_revoked_and_wrong_secret_keys_are_refused(kp: Keyplane) -> None:
    key_id, secret = kp.new_key()
    assert client(kp, secret).models.list().data
    forged = secret[:-10] + ("B" if secret[-10] == "A" else "A") + secret[-9:]
    with pytest.raises(openai.AuthenticationError):
        client(kp, forged).models.list()
    kp.container.keys.revoke(kp.org.id, key_id)
    kp.gateway.pipeline.auth.forget(key_id)
    with pytest.raises(openai.AuthenticationError) as err:
        client(kp, secret).chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    assert err.value.code == "invalid_api_key" and "revoked" in err.value.message


def test_admin_key_cannot_call_the_gateway(kp: Keyplane) -> None:
    from keyplane.keys.format import KeyKind

    _, admin = kp.container.keys.create(
        kind=KeyKind.ADMIN, org_id=kp.org.id, project_id=None, name="admin",
        owner_type="user", owner_id=kp.owner.id, created_by=kp.owner.id,
    )  # fmt: skip
    with pytest.raises(openai.AuthenticationError) as err:
        client(kp, admin).chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    assert "Admin API" in err.value.message


def test_unknown_model_is_not_found(kp: Keyplane) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(kp).chat.completions.create(model="gpt-nonexistent", messages=PROMPT)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client(kp).models.retrieve("gpt-nonexistent")
    assert kp.usage() == []


def test_upstream_errors_pass_through_with_their_status(kp: Keyplane) -> None:
    with pytest.raises(openai.BadRequestError):
        client(kp).chat.completions.create(model="gpt-4o-mini", messages=[])  # simulator: 400
    [record] = kp.usage(expect=1)
    assert record.status == 400 and record.cost_micro_usd == 0


def test_usage_listings_show_the_latest_records_and_totals_count_them_all(
    tmp_path: Path, simulator: ServerThread
) -> None:
    """`keyplane usage` lists the latest records (not the oldest), and its total covers all."""
    kp = start_keyplane(tmp_path, simulator.url + "/v1")
    try:
        client = openai.OpenAI(base_url=kp.base_url, api_key=kp.key, max_retries=0)
        ids = [
            client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}]
            ).headers["x-request-id"]
            for i in range(5)
        ]
        records = kp.usage(expect=5)
        latest = kp.container.usage_store.query(kp.org.id, limit=2)
        assert [r.request_id for r in latest] == ids[-2:]
        count, cost = kp.container.usage_store.summary(kp.org.id)
        assert (count, cost) == (5, sum(r.cost_micro_usd for r in records)) and cost > 0
    finally:
        kp.server.stop()
        kp.container.close()
