"""OpenAI's Responses API and Moderations API through keyplane, with the official SDK, over
loopback sockets: answered, streamed, metered exactly once, and each stored response kept to the
project that created it."""
# ruff: noqa: F811  (kp, each test's argument, is test_sdk's fixture: keyplane on each database)

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from test_sdk import _close_clients, client, kp  # noqa: F401

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane import simulator as sim
from keyplane.config import UpstreamSettings
from keyplane.keys.format import KeyKind
from keyplane.usage.pricing import PriceTable
from keyplane.usage.records import Outcome
from kptest import ServerThread, wait_until

INSTRUCTIONS = "Answer briefly."
QUESTION = "Say hello to keyplane"
DOLLAR = 1_000_000


def cost(model: str, inp: int, out: int) -> int:
    price = PriceTable.load().price(model, 2_000_000_000)
    assert price is not None
    return price.token_cost(inp, 0, out)


def input_tokens(text: str, instructions: str | None) -> int:
    """The simulator's input tokens of a request whose ``input`` is ``text``."""
    return sim.response_input_tokens([{"role": "user", "content": text}], instructions)


def other_project_key(kp: Keyplane) -> str:
    project = kp.container.accounts.create_project(kp.org.id, "Other project")
    _, secret = kp.container.keys.create(
        kind=KeyKind.PROJECT, org_id=kp.org.id, project_id=project.id, name="other",
        owner_type="user", owner_id=kp.owner.id, created_by=kp.owner.id,
    )  # fmt: skip
    return secret


def test_a_response_is_answered_metered_and_kept_to_its_project(kp: Keyplane) -> None:
    c = client(kp)
    first = c.responses.create(
        model="gpt-4o-mini", instructions=INSTRUCTIONS, input=QUESTION, max_output_tokens=9
    )
    inp = input_tokens(QUESTION, INSTRUCTIONS)
    assert first.output_text == sim.completion_text(9)
    assert first.usage is not None and (first.usage.input_tokens, first.usage.output_tokens) == (
        inp,
        9,
    )
    [record] = kp.usage(expect=1)
    assert (record.endpoint, record.model, record.status, record.stream) == (
        "responses", "gpt-4o-mini", 200, False,
    )  # fmt: skip
    assert (record.input_tokens, record.output_tokens) == (inp, 9)
    assert record.cost_micro_usd == cost("gpt-4o-mini", inp, 9) and not record.tokens_estimated

    # Its project reads it, its input items, and continues it (the earlier exchange is input).
    assert c.responses.retrieve(first.id).output_text == sim.completion_text(9)
    items = c.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    second = c.responses.create(
        model="gpt-4o-mini", input="And again", previous_response_id=first.id, max_output_tokens=5
    )
    carried = inp + 9 + input_tokens("And again", None)
    assert second.usage is not None and second.usage.input_tokens == carried
    records = {r.request_id: r for r in kp.usage(expect=2)}
    assert sorted(r.input_tokens for r in records.values()) == sorted([inp, carried])

    # Another project's key cannot read, list, continue or delete it: not found, as at OpenAI.
    stranger = client(kp, other_project_key(kp))
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.input_items.list(first.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as refused:
        stranger.responses.create(
            model="gpt-4o-mini", input="hi", previous_response_id=first.id, max_output_tokens=5
        )
    assert refused.value.code == "previous_response_not_found"
    assert len(kp.usage()) == 2  # nothing forwarded for the stranger, nothing metered

    # Deleted by its project: gone for it too.
    c.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(first.id)
    kp.server.call(kp.gateway.pipeline.stored.flush())
    assert kp.container.response_store.stored_response(first.id) is None
    assert kp.container.response_store.stored_response(second.id) is not None


def test_a_response_the_upstream_does_not_store_is_not_noted(kp: Keyplane) -> None:
    reply = client(kp).responses.create(
        model="gpt-4o-mini", input=QUESTION, store=False, max_output_tokens=4
    )
    kp.usage(expect=1)
    kp.server.call(kp.gateway.pipeline.stored.flush())
    assert kp.container.response_store.stored_response(reply.id) is None
    with pytest.raises(openai.NotFoundError):
        client(kp).responses.retrieve(reply.id)


def test_a_streamed_response_passes_every_event_and_is_metered_on_its_usage(
    kp: Keyplane,
) -> None:
    events = list(
        client(kp).responses.create(
            model="gpt-4o-mini", input=QUESTION, max_output_tokens=7, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == sim.completion_text(7)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    inp = input_tokens(QUESTION, None)
    [record] = kp.usage(expect=1)
    assert record.stream and (record.input_tokens, record.output_tokens) == (inp, 7)
    assert not record.tokens_estimated and record.cost_micro_usd == cost("gpt-4o-mini", inp, 7)
    # Stored, and noted as this project's from the stream's first event.
    response_id = events[0].response.id  # type: ignore[union-attr]
    assert client(kp).responses.retrieve(response_id).id == response_id


@pytest.fixture
def slow_kp(tmp_path: Path) -> Iterator[Keyplane]:
    """keyplane before a simulator that streams 40 tokens a second, 400 of them."""
    slow = ServerThread(
        sim.create_app(sim.SimulatorConfig(tokens_per_second=40, completion_tokens=400))
    ).start()
    kp = start_keyplane(tmp_path, slow.url + "/v1")
    try:
        yield kp
    finally:
        kp.server.stop()
        kp.container.close()
        slow.stop()


def stream_a_little(kp: Keyplane, body: dict[str, Any], deltas: int, during: Any = None) -> str:
    """Streams ``body`` from /v1/responses, leaves after ``deltas`` text deltas (calling
    ``during(response_id)`` first); returns the response's id."""
    headers = {"authorization": f"Bearer {kp.key}"}
    seen = 0
    response_id = ""
    with (
        kphttp.Client() as http,
        http.stream(
            "POST", kp.base_url + "/responses", json={**body, "stream": True}, headers=headers
        ) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and not response_id:
                response_id = orjson.loads(line[6:])["response"]["id"]
            seen += line == "event: response.output_text.delta"
            if seen == deltas:
                if during is not None:
                    during(response_id)
                break
    return response_id


def test_a_stream_the_client_leaves_is_billed_for_what_was_streamed(slow_kp: Keyplane) -> None:
    kp = slow_kp

    def meanwhile(response_id: str) -> None:  # its project may read it while it streams
        assert client(kp).responses.retrieve(response_id).id == response_id

    stream_a_little(kp, {"model": "gpt-4o-mini", "input": QUESTION}, 3, meanwhile)
    [record] = kp.usage(expect=1)
    assert record.outcome is Outcome.CLIENT_DISCONNECTED and record.tokens_estimated
    assert 3 <= record.output_tokens < 400  # four characters a token, as streamed
    assert record.input_tokens > 0 and record.cost_micro_usd > 0


def test_a_continuation_left_mid_stream_is_billed_the_context_it_carried(
    slow_kp: Keyplane,
) -> None:
    """The estimate of a continuation cut short counts what the stored response adds to its input
    (its own input and output), not only the new input: the upstream bills all of it."""
    kp = slow_kp
    long = "x" * 40_000
    first = client(kp).responses.create(model="gpt-4o-mini", input=long, max_output_tokens=20)
    assert first.usage is not None
    carried = first.usage.input_tokens + first.usage.output_tokens
    stream_a_little(
        kp, {"model": "gpt-4o-mini", "input": "go on", "previous_response_id": first.id}, 1
    )
    records = kp.usage(expect=2)
    [cut] = [r for r in records if r.stream]
    assert cut.tokens_estimated and cut.outcome is Outcome.CLIENT_DISCONNECTED
    assert cut.input_tokens >= carried > 10_000


def test_a_continuation_goes_only_where_the_response_is_stored(
    tmp_path: Path, simulator: ServerThread
) -> None:
    upstreams = [
        UpstreamSettings(name="a", base_url=simulator.url + "/v1", models=["gpt-4o-mini"]),
        UpstreamSettings(name="b", base_url=simulator.url + "/v1", models=["gpt-4o"]),
    ]
    kp = start_keyplane(tmp_path, simulator.url + "/v1", upstreams=upstreams)
    try:
        c = client(kp)
        first = c.responses.create(model="gpt-4o-mini", input=QUESTION, max_output_tokens=4)
        with pytest.raises(openai.NotFoundError) as refused:
            c.responses.create(model="gpt-4o", input="more", previous_response_id=first.id)
        assert refused.value.code == "model_not_found" and "'a'" in refused.value.message
        kp.usage(expect=1)
    finally:
        kp.server.stop()
        kp.container.close()


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"background": True}, "background", "unsupported_parameter"),
        ({"background": "true"}, "background", "unsupported_parameter"),  # read as true upstream
        ({"tools": [{"type": "web_search"}]}, "tools", "unsupported_tool"),
        ({"tools": [{"type": ["function"]}]}, "tools", "unsupported_tool"),
        ({"conversation": "conv_123"}, "conversation", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_123"}}, "prompt", "unsupported_parameter"),
        (
            {"input": [{"type": "item_reference", "id": "msg_123"}]},
            "input",
            "unsupported_parameter",
        ),
        ({"input": [{"id": "msg_123"}]}, "input", "unsupported_parameter"),  # untyped: a reference
        ({"max_output_tokens": 0}, "max_output_tokens", None),
        ({"previous_response_id": 7}, "previous_response_id", None),
    ],
)
def test_what_keyplane_cannot_bound_or_keep_to_a_project_is_refused_clearly(
    kp: Keyplane, extra: dict[str, Any], param: str, code: str | None
) -> None:
    body = {"model": "gpt-4o-mini", "input": QUESTION, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client(kp).post("/responses", body=body, cast_to=httpx.Response)
    assert refused.value.param == param and refused.value.code == code
    assert kp.usage() == []  # refused before forwarding: nothing metered


def test_function_tools_are_forwarded(kp: Keyplane) -> None:
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    reply = client(kp).responses.create(
        model="gpt-4o-mini",
        input=QUESTION,
        tools=[tool],
        max_output_tokens=3,  # type: ignore[list-item]
    )
    assert reply.output_text == sim.completion_text(3)
    kp.usage(expect=1)


def test_a_continuation_is_held_at_what_the_stored_response_carries(
    tmp_path: Path, simulator: ServerThread
) -> None:
    """The stored response's input and output, as its upstream reported them, are all a
    continuation can carry over: the hold counts them, not the model's whole context window
    (gpt-4o's 128,000 tokens would hold $0.32, more than this organization has)."""
    kp = start_keyplane(tmp_path, simulator.url + "/v1", credit=50_000)
    try:
        c = client(kp)
        first = c.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=16)
        second = c.responses.create(
            model="gpt-4o", input="more", previous_response_id=first.id, max_output_tokens=16
        )
        assert second.usage is not None and first.usage is not None
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        spent = sum(r.cost_micro_usd for r in kp.usage(expect=2))
        assert kp.container.billing.balance(kp.org.id).available == 50_000 - spent
    finally:
        kp.server.stop()
        kp.container.close()


def test_a_continuation_of_what_was_not_reported_needs_the_models_context_window(
    slow_kp: Keyplane,
) -> None:
    """A stream cut short reported no usage: what continuing it carries is bounded by the model's
    context window only, and sim-chat's price entry sets none, so no hold can be placed."""
    kp = slow_kp
    first_id = stream_a_little(kp, {"model": "sim-chat", "input": QUESTION}, 1)
    kp.usage(expect=1)  # (its request has ended: noted with what it carries, unknown)
    with pytest.raises(openai.BadRequestError) as refused:
        client(kp).responses.create(model="sim-chat", input="more", previous_response_id=first_id)
    assert refused.value.param == "previous_response_id"
    assert "context_window" in refused.value.message
    assert len(kp.usage()) == 1


def test_the_output_cap_is_lowered_to_what_the_money_affords(
    tmp_path: Path, obedient_simulator: ServerThread
) -> None:
    kp = start_keyplane(tmp_path, obedient_simulator.url + "/v1", credit=DOLLAR)
    try:
        reply = client(kp).responses.create(model="gpt-4o", input="hi", max_output_tokens=1_000_000)
        # $1 at $10/M output covers < 100k tokens: the upstream was told less than asked.
        assert reply.usage is not None and 99_000 < reply.usage.output_tokens < 100_000
        assert reply.status == "incomplete"
        [record] = kp.usage(expect=1)
        assert record.cost_micro_usd <= DOLLAR
        balance = kp.container.billing.balance(kp.org.id)
        assert balance.held == 0 and balance.available == DOLLAR - record.cost_micro_usd
    finally:
        kp.server.stop()
        kp.container.close()


def test_moderations_are_served_and_metered_at_no_cost(kp: Keyplane) -> None:
    c = client(kp)
    flagged = c.moderations.create(input="hello [flag]")
    assert flagged.results[0].flagged and flagged.results[0].categories.violence
    fine = c.moderations.create(model="text-moderation-latest", input=["hello", "there"])
    assert [r.flagged for r in fine.results] == [False, False]
    records = sorted(kp.usage(expect=2), key=lambda r: r.model)
    assert [(r.endpoint, r.model, r.status, r.cost_micro_usd) for r in records] == [
        ("moderations", "omni-moderation-latest", 200, 0),  # the default when none is named
        ("moderations", "text-moderation-latest", 200, 0),
    ]
    assert wait_until(lambda: kp.container.billing.balance(kp.org.id).held == 0)
