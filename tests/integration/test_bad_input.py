"""Bad input of any kind gets a clear 4xx in OpenAI's envelope, never a 500 (BRIEF C12)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Keyplane, make_settings
from keyplane import bootstrap, gateway_assembly
from keyplane.config import UpstreamSettings
from keyplane.gateway.app import Gateway
from keyplane.keys.format import KeyKind
from keyplane.simulator import SimulatorConfig, create_app

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "input",
    "prompt",
    "n",
]
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "model": st.sampled_from(["gpt-4o-mini", "text-embedding-3-small"])
            | st.text(max_size=300)
        },
        optional={f: json_values for f in FIELDS},
    ),
)
PATHS = ["/v1/chat/completions", "/v1/embeddings", "/v1/completions"]


class InProcess:
    """keyplane and the simulator wired together in one event loop, without sockets."""

    def __init__(self, tmp: Path) -> None:
        sim = httpx.ASGITransport(app=create_app(SimulatorConfig()))
        settings_ = make_settings(
            tmp,
            upstreams=[UpstreamSettings(name="sim", base_url="http://sim/v1")],
            max_body_bytes=64 * 1024,
        )
        self.container = bootstrap.build(settings_)
        owner, org, project = self.container.accounts.initialize(
            email="o@example.com", password="correct horse battery", org_name="Fuzz"
        )
        _, self.key = self.container.keys.create(
            kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name="fuzz",
            owner_type="user", owner_id=owner.id, created_by=owner.id,
        )  # fmt: skip
        self.gateway: Gateway = gateway_assembly.build_gateway(self.container, transport=sim)
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.gateway, client=("127.0.0.1", 5555)),
            base_url="http://kp",
        )

    def post(
        self, path: str, content: bytes, headers: dict[str, Any] | None = None
    ) -> httpx.Response:
        h = {
            "authorization": f"Bearer {self.key}",
            "content-type": "application/json",
            **(headers or {}),
        }
        return self.loop.run_until_complete(self.client.post(path, content=content, headers=h))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.gateway.pipeline.router.client.aclose())
        self.loop.close()
        self.container.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    instance = InProcess(tmp_path_factory.mktemp("fuzz"))
    yield instance
    instance.close()


def assert_clean_4xx_or_success(resp: httpx.Response) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert {"message", "type", "param", "code"} <= set(error)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(PATHS), payload=payloads)
def test_random_json_never_gives_a_server_error(app: InProcess, path: str, payload: Any) -> None:
    assert_clean_4xx_or_success(app.post(path, json.dumps(payload).encode()))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(PATHS), body=st.binary(max_size=200))
def test_random_bytes_never_give_a_server_error(app: InProcess, path: str, body: bytes) -> None:
    assert_clean_4xx_or_success(app.post(path, body))


UPLOADS = ["/v1/images/edits", "/v1/images/variations", "/v1/audio/transcriptions"]
FORM_NAMES = st.sampled_from(
    ["prompt", "model", "n", "size", "quality", "stream", "image", "image[]", "mask", "file", "x"]
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(UPLOADS),
    fields=st.lists(st.tuples(FORM_NAMES, st.text(max_size=12)), max_size=5),
    files=st.lists(st.tuples(FORM_NAMES, st.binary(max_size=40)), max_size=4),
    cut=st.integers(min_value=0, max_value=40),
)
def test_random_uploads_never_give_a_server_error(
    app: InProcess, path: str, fields: list[tuple[str, str]], files: list[tuple[str, bytes]],
    cut: int,
) -> None:  # fmt: skip
    """Forms with any fields and files, repeated or missing, whole or cut short."""
    request = httpx.Request(
        "POST", "http://kp" + path, files=[(name, ("f", data)) for name, data in files] or None,
        data=dict(fields) if files else None, content=None if files else b"",
    )  # fmt: skip
    body = request.read()
    content_type = request.headers.get("content-type", "multipart/form-data; boundary=x")
    assert_clean_4xx_or_success(
        app.post(path, body[: len(body) - cut], {"content-type": content_type})
    )


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(UPLOADS), body=st.binary(max_size=200))
def test_random_bytes_as_an_upload_never_give_a_server_error(
    app: InProcess, path: str, body: bytes
) -> None:
    headers = {"content-type": "multipart/form-data; boundary=b"}
    assert_clean_4xx_or_success(app.post(path, b"--b\r\n" + body, headers))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.binary(max_size=120) | st.binary(max_size=80).map(lambda b: b"Bearer " + b))
def test_hostile_authorization_headers_get_401(app: InProcess, value: bytes) -> None:
    header = bytes(b for b in value if b not in b"\r\n\x00")
    resp = app.post("/v1/chat/completions", b"{}", {"authorization": header})
    # (All from one address: past 50 bad keys in a minute it is throttled, as it should be.)
    code = {401: "invalid_api_key", 429: "too_many_failed_attempts"}.get(resp.status_code)
    assert code is not None, resp.status_code
    assert resp.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[]", 400, None),
        (b'{"messages": []}', 400, "model"),
        (b'{"model": 42, "messages": []}', 400, "model"),
        (b'{"model": "gpt-4o-mini"}', 400, "messages"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', 400, "messages"),
        (b'{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}', 400, "stream"),
        (b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": -1}', 400, "max_tokens"),
        (b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": true}', 400, "max_tokens"),
        (b'{"model": "nope", "messages": []}', 404, "model"),
    ],
)
def test_malformed_requests_name_the_problem(
    app: InProcess, body: bytes, status: int, param: str | None
) -> None:
    resp = app.post("/v1/chat/completions", body)
    assert resp.status_code == status
    assert resp.json()["error"]["param"] == param


def test_huge_bodies_and_strings_are_refused_with_413(app: InProcess) -> None:
    huge = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 100_000}]}
    )
    resp = app.post("/v1/chat/completions", huge)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    long_model = orjson.dumps({"model": "m" * 10_000, "messages": []})
    assert app.post("/v1/chat/completions", long_model).status_code == 400


def test_wrong_method_and_unknown_paths_are_404_envelopes(app: InProcess) -> None:
    resp = app.loop.run_until_complete(app.client.get("/v1/embeddings"))
    assert resp.status_code == 404 and "Invalid URL" in resp.json()["error"]["message"]
    assert app.post("/v1/nope", b"{}").status_code == 404
    # An OpenAI endpoint keyplane does not forward says so, rather than "Invalid URL".
    for path in ("/v1/responses/compact", "/v1/responses/input_tokens", "/v1/files/file-abc"):
        resp = app.post(path, b"{}")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "unsupported_endpoint"
        assert "does not serve" in resp.json()["error"]["message"]
    # Stored completions (store=true): listed, retrieved, their messages.
    for path in ("/v1/chat/completions", "/v1/chat/completions/chatcmpl-abc/messages"):
        resp = app.loop.run_until_complete(app.client.get(path))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "unsupported_endpoint"
        assert "does not keep stored completions" in resp.json()["error"]["message"]


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    ("path", "body"),
    [  # rewritten after the hold: its default model; a stream's usage option; tools counted
        ("/v1/moderations", b'{"input": "hi", "x": %s}'),
        ("/v1/chat/completions", b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}], "x": %s}'),
        ("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tools": [%s]}'),
    ],
)  # fmt: skip
def test_json_nested_too_deeply_is_a_400_that_holds_no_money(
    kp: Keyplane, path: str, body: bytes
) -> None:
    """orjson reads 1,024 levels but writes 254: such a body was a 500 after its hold was placed,
    and the hold stayed (money held for ever; billed in full, as lost, after a restart)."""
    headers = {"authorization": f"Bearer {kp.key}"}
    with httpx.Client(base_url=kp.server.url, headers=headers) as client:
        resp = client.post(path, content=body % _nested(300))
        assert resp.status_code == 400, resp.text
        assert "nested too deeply" in resp.json()["error"]["message"]
        assert kp.gateway.pipeline.money.in_flight == 0
        # As deep as keyplane writes is served.
        resp = client.post(path, content=body % _nested(250))
        assert resp.status_code == 200, resp.text
    kp.flush()
    assert kp.container.billing.balance(kp.org.id).held == 0


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/chat/completions", "messages"),
        ("/v1/responses", "input"),
        ("/v1/completions", "input"),
    ],
)
def test_a_content_part_typed_as_an_array_is_no_server_error(
    app: InProcess, path: str, field: str
) -> None:
    """(Its ``type`` was looked up in a set of image kinds: TypeError, unhashable, a 500.)"""
    message = {"role": "user", "content": [{"type": [], "text": "hi"}]}
    payload = {"model": "gpt-4o-mini", field: [message]}
    if path == "/v1/completions":
        payload["prompt"] = "hi"
    assert_clean_4xx_or_success(app.post(path, orjson.dumps(payload)))
