"""What keyplane passes between a client and an upstream it does not control: only the headers
the upstream should see, and errors a client's SDK can read."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import kphttp
from conftest import Keyplane, initialized, start_keyplane
from keyplane import gateway_assembly
from keyplane.config import UpstreamSettings
from keyplane.usage.pricing import PriceTable
from kptest import ServerThread, Upstream

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


class Answering(Upstream):
    def __init__(self, status: int, content_type: bytes, body: bytes) -> None:
        super().__init__()
        self.status, self.content_type, self.body = status, content_type, body

    def answer(self, body: dict[str, Any]) -> bytes:
        return self.body


@pytest.fixture
def upstream() -> Answering:
    answer = b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
    return Answering(200, b"application/json", answer)


@pytest.fixture
def kp(tmp_path: Path, upstream: Answering) -> Iterator[Keyplane]:
    server = ServerThread(upstream).start()
    instance = start_keyplane(tmp_path, server.url + "/v1", upstream_retries=0)
    yield instance
    instance.server.stop()
    instance.container.close()
    server.stop()


def test_credentials_and_client_address_claims_are_not_forwarded(
    kp: Keyplane, upstream: Answering
) -> None:
    sent = {
        "authorization": f"Bearer {kp.key}", "api-key": "azure-secret", "x-api-key": "anthropic",
        "cookie": "session=1", "forwarded": "for=1.2.3.4", "x-real-ip": "1.2.3.4",
        "x-forwarded-for": "1.2.3.4", "x-forwarded-host": "evil", "openai-organization": "org-x",
        "x-custom-trace": "kept", "connection": "keep-alive, X-Hop-Secret",
        "x-hop-secret": "for this hop only", "proxy-connection": "keep-alive", "trailer": "x-late",
    }  # fmt: skip
    r = kphttp.post(kp.base_url + "/chat/completions", json=CHAT, headers=sent)
    assert r.status_code == 200
    [seen] = upstream.headers
    assert seen[b"x-custom-trace"] == b"kept"
    assert kp.key.encode() not in b"".join(seen.values())
    for name in sent.keys() - {"x-custom-trace"}:
        assert name.encode() not in seen, name


@pytest.mark.parametrize(
    "upstream",
    [
        Answering(502, b"text/html", b"<html><body>502 Bad Gateway</body></html>"),
        Answering(404, b"text/plain", b"no such route"),
        Answering(500, b"application/json", b"[1, 2]"),
    ],
    ids=["html", "text", "json_not_an_error"],
)
def test_an_error_not_in_openais_format_reaches_the_client_in_it(
    kp: Keyplane, upstream: Answering
) -> None:
    r = kphttp.post(
        kp.base_url + "/chat/completions", json=CHAT,
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == upstream.status
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert f"answered {upstream.status}" in error["message"] and error["code"] == "upstream_error"
    client = openai.OpenAI(base_url=kp.base_url, api_key=kp.key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert raised.value.status_code == upstream.status
    assert "without an error in OpenAI's format" in raised.value.message
    client.close()


@pytest.mark.parametrize(
    "upstream",
    [Answering(307, b"text/plain", b"moved"), Answering(204, b"application/json", b""),
     Answering(999, b"application/json", b"{}")],
    ids=["redirect", "no_content", "beyond_599"],
)  # fmt: skip
def test_a_status_that_answers_no_api_request_is_a_502(kp: Keyplane, upstream: Answering) -> None:
    """A redirect without its Location, an empty 204, a status past 599: no SDK can use them."""
    r = kphttp.post(
        kp.base_url + "/chat/completions", json=CHAT,
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert f"HTTP {upstream.status}" in r.json()["error"]["message"]


def test_an_openai_error_passes_through_as_it_came(kp: Keyplane, upstream: Answering) -> None:
    upstream.status = 400
    upstream.body = b'{"error":{"message":"bad temperature","type":"invalid_request_error","param":"temperature","code":null}}'
    r = kphttp.post(
        kp.base_url + "/chat/completions", json=CHAT,
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 400 and r.content == upstream.body


def test_a_json_answer_to_a_stream_request_is_billed_on_its_usage(
    kp: Keyplane, upstream: Answering
) -> None:
    """An upstream that ignores stream: true and answers JSON: billed what its usage says, not
    as a stream that had no events (the output was billed 0)."""
    upstream.body = (
        b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
        b'{"role":"assistant","content":"hello there"}}],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":3}}'
    )
    r = kphttp.post(
        kp.base_url + "/chat/completions", json={**CHAT, "stream": True},
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    assert r.status_code == 200 and r.content == upstream.body
    [record] = kp.usage(expect=1)
    assert (record.input_tokens, record.output_tokens) == (9, 3) and not record.tokens_estimated


class Held(Upstream):
    """Answers each chat request once ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release, self.received = threading.Event(), threading.Event()

    def answer(self, body: dict[str, Any]) -> bytes:
        self.received.set()
        self.release.wait(30)
        return b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'


def test_a_request_finding_every_upstream_connection_busy_waits_then_gets_503(
    tmp_path: Path,
) -> None:
    """It queues for a free connection (a burst), but not for ever: then 503 with Retry-After,
    nothing sent upstream and nothing billed."""
    held = Held()
    server = ServerThread(held).start()
    kp = start_keyplane(
        tmp_path, server.url + "/v1", upstream_max_connections=1, upstream_pool_wait_s=0.3
    )
    post = lambda: kphttp.post(  # noqa: E731
        kp.base_url + "/chat/completions", json=CHAT,
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post)
            assert held.received.wait(10)
            busy = post()
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "busy" in busy.json()["error"]["message"] and len(held.bodies) == 1
            held.release.set()
            assert first.result().status_code == 200
        assert post().status_code == 200
        statuses = sorted(r.status for r in kp.usage(expect=3))
        assert statuses == [200, 200, 503]
        assert [r.cost_micro_usd for r in kp.usage() if r.status == 503] == [0]
    finally:
        held.release.set()
        kp.server.stop()
        kp.container.close()
        server.stop()


REFUSED = (
    b'{"error":{"message":"Incorrect API key provided: sk-provi*****cdef. You can find your API '
    b'key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error",'
    b'"param":null,"code":"invalid_api_key"}}'
)


def test_an_upstream_refusing_keyplanes_key_is_not_the_clients_401_and_the_next_one_serves(
    tmp_path: Path,
) -> None:
    """A provider key gone wrong (rotated, say) is the operator's problem: the client is not told
    its own key is invalid, sees no part of the provider key, and a second upstream serves."""
    refusing = Answering(401, b"application/json", REFUSED)
    healthy = Answering(
        200,
        b"application/json",
        b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}',
    )
    servers = [ServerThread(u).start() for u in (refusing, healthy)]
    primary = UpstreamSettings(
        name="primary", base_url=servers[0].url + "/v1", api_key="sk-provider-cdef"
    )
    backup = UpstreamSettings(name="backup", base_url=servers[1].url + "/v1", api_key="sk-other")
    kp = start_keyplane(tmp_path / "two", "", upstreams=[primary, backup])
    alone = start_keyplane(tmp_path / "one", "", upstreams=[primary])
    try:
        r = kphttp.post(kp.base_url + "/chat/completions", json=CHAT,
                        headers={"authorization": f"Bearer {kp.key}"})  # fmt: skip
        assert r.status_code == 200 and len(refusing.bodies) == 1 and len(healthy.bodies) == 1
        r = kphttp.post(alone.base_url + "/chat/completions", json=CHAT,
                        headers={"authorization": f"Bearer {alone.key}"})  # fmt: skip
        assert r.status_code == 502 and b"sk-provi" not in r.content
        assert r.headers["x-should-retry"] == "false"  # the SDK's retries cannot help
        error = r.json()["error"]
        assert (
            error["code"] == "upstream_error"
            and "'primary' refused keyplane's credentials" in (error["message"])
        )
        [record] = alone.usage(expect=1)
        assert record.status == 502 and record.cost_micro_usd == 0
    finally:
        for instance in (kp, alone):
            instance.server.stop()
            instance.container.close()
        for server in servers:
            server.stop()


def test_an_upstreams_retry_after_reaches_the_client_and_is_not_hammered(tmp_path: Path) -> None:
    """An upstream that asks for time (429 or 503 with Retry-After) is not tried again at once by
    keyplane, and the client's SDK is told how long to wait."""
    busy = Answering(
        503,
        b"application/json",
        b'{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}',
    )
    busy.extra_headers = ((b"retry-after", b"2"), (b"retry-after-ms", b"2000"))
    server = ServerThread(busy).start()
    kp = start_keyplane(tmp_path, server.url + "/v1", upstream_retries=2)
    try:
        r = kphttp.post(kp.base_url + "/chat/completions", json=CHAT,
                        headers={"authorization": f"Bearer {kp.key}"})  # fmt: skip
        assert r.status_code == 503 and len(busy.bodies) == 1
        assert r.headers["retry-after"] == "2" and r.headers["retry-after-ms"] == "2000"
    finally:
        kp.server.stop()
        kp.container.close()
        server.stop()


class Hangup(threading.Thread):
    """An upstream that lists gpt-4o, and closes every connection a POST arrives on once it has
    read the request, answering nothing (it crashed, say, after starting on it), or only
    ``first`` bytes of a 200 answer of ``size`` bytes (it broke off)."""

    def __init__(self, first: bytes = b"", size: int = 0, raw: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.first, self.size, self.raw = first, size, raw  # raw: sent as it is, then closed
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.posts = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                if head.startswith(b"GET"):
                    body = b'{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                else:
                    self.posts += 1
                    if self.raw:
                        conn.sendall(self.raw)
                    elif self.first:
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                            b"content-length: %d\r\n\r\n%s" % (self.size, self.first)
                        )


@pytest.mark.parametrize(
    ("raw", "said"),
    [(b"", "before answering"), (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not HTTP"),
     (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello", "not HTTP")],
    ids=["closed", "not_http", "two_lengths"],
)  # fmt: skip
def test_a_request_the_upstream_may_have_received_is_not_sent_again_and_is_billed(
    tmp_path: Path, raw: bytes, said: str
) -> None:
    hangup = Hangup(raw=raw)
    hangup.start()
    kp = start_keyplane(tmp_path, hangup.url)  # (upstream_retries: 1)
    try:
        r = kphttp.post(
            kp.base_url + "/chat/completions", json=CHAT,
            headers={"authorization": f"Bearer {kp.key}"},
        )  # fmt: skip
        assert r.status_code == 502 and said in r.json()["error"]["message"]
        assert hangup.posts == 1  # not sent again: the upstream may be working on it
        [record] = kp.usage(expect=1)
        assert record.tokens_estimated and record.input_tokens > 0 and record.cost_micro_usd > 0
    finally:
        kp.server.stop()
        kp.container.close()
        hangup.sock.close()


def test_an_answer_that_broke_off_is_billed_the_output_that_arrived(tmp_path: Path) -> None:
    """The upstream wrote a whole answer, and bills it, before it broke off: keyplane bills at
    least what arrived of it, not the prompt alone."""
    text = "word " * 2000
    first = b'{"id":"x","object":"chat.completion","choices":[{"message":{"content":"%s' % (
        text.encode()
    )
    hangup = Hangup(first, size=len(first) + 5000)
    hangup.start()
    kp = start_keyplane(tmp_path, hangup.url)
    gpt4o = PriceTable.load().price("gpt-4o", 2_000_000_000)
    assert gpt4o is not None
    try:
        r = kphttp.post(
            kp.base_url + "/chat/completions", json={**CHAT, "max_tokens": None},
            headers={"authorization": f"Bearer {kp.key}"},
        )  # fmt: skip
        assert r.status_code == 502 and "broke off" in r.json()["error"]["message"]
        assert hangup.posts == 1
        [record] = kp.usage(expect=1)
        assert record.tokens_estimated and record.output_tokens >= len(text) // 4
        assert record.outcome.value == "upstream_broken"
        assert record.cost_micro_usd == gpt4o.token_cost(
            record.input_tokens, 0, record.output_tokens
        )
    finally:
        kp.server.stop()
        kp.container.close()
        hangup.sock.close()


MIB = 1024 * 1024  # KEYPLANE_MAX_ANSWER_BYTES in the tests below (its least)


def padded(size: int) -> bytes:
    """A chat completion with usage, padded to exactly ``size`` bytes."""
    head = (
        b'{"id":"x","object":"chat.completion","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2},"pad":"'
    )
    return head + b"a" * (size - len(head) - 2) + b'"}'


@pytest.fixture
def capped(tmp_path: Path, upstream: Answering) -> Iterator[Keyplane]:
    server = ServerThread(upstream).start()
    instance = start_keyplane(
        tmp_path, server.url + "/v1", upstream_retries=0, max_answer_bytes=MIB
    )
    yield instance
    instance.server.stop()
    instance.container.close()
    server.stop()


def post_chat(kp: Keyplane, **fields: Any) -> httpx.Response:
    return kphttp.post(
        kp.base_url + "/chat/completions", json={**CHAT, **fields},
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "json_answer_to_a_stream"])
def test_an_answer_larger_than_max_answer_bytes_is_a_502_billed_as_unread(
    capped: Keyplane, upstream: Answering, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Not held whole (a broken or hostile upstream could make keyplane buffer gigabytes): the
    client gets 502, billed once as an answer keyplane could not read (its estimated prompt and
    all the output the hold covers, as the upstream may have written it all), the hold settled."""
    upstream.body = padded(MIB + 1)
    gpt4o = PriceTable.load().price("gpt-4o", 2_000_000_000)
    assert gpt4o is not None
    r = post_chat(capped, stream=stream)
    assert r.status_code == 502
    assert r.json() == {
        "error": {
            "message": f"The upstream's answer was larger than {MIB} bytes "
            "(KEYPLANE_MAX_ANSWER_BYTES).",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    [record] = capped.usage(expect=1)
    assert record.status == 502 and record.outcome.value == "upstream_broken"
    assert record.tokens_estimated and record.input_tokens > 0
    assert record.output_tokens == CHAT["max_tokens"]  # all that was held
    assert record.cost_micro_usd == gpt4o.token_cost(record.input_tokens, 0, 5) > 0
    balance = capped.container.billing.balance(capped.org.id)
    assert balance.held == 0 and balance.spent == record.cost_micro_usd
    assert balance.available == 5_000_000 - record.cost_micro_usd
    assert capped.gateway.pipeline.money.in_flight == 0
    assert "more than 1048576 bytes" in caplog.text
    # The gateway goes on: the next answer, within the limit, is served and billed its usage.
    upstream.body = padded(MIB)
    r = post_chat(capped)
    assert r.status_code == 200 and r.content == upstream.body
    [served] = [u for u in capped.usage(expect=2) if u.status == 200]
    assert (served.input_tokens, served.output_tokens) == (3, 2) and not served.tokens_estimated


def test_a_model_list_larger_than_max_answer_bytes_is_unreadable(
    capped: Keyplane, upstream: Answering, caplog: pytest.LogCaptureFixture
) -> None:
    """Read as if the upstream could not list its models: then it may serve any."""
    upstream.models = tuple(f"model-{i:05}-" + "m" * 100 for i in range(10_000))  # ~1.2 MB
    r = kphttp.get(capped.base_url + "/models", headers={"authorization": f"Bearer {capped.key}"})
    assert r.status_code == 200 and r.json()["data"] == []
    assert "cannot list models of upstream sim" in caplog.text
    assert post_chat(capped).status_code == 200


@pytest.mark.anyio
async def test_an_answer_too_large_through_an_httpx_transport_is_refused_too(
    tmp_path: Path,
) -> None:
    """The client tests put an httpx transport behind the gateway with (HttpxClient) keeps the
    same limit: the answer is not read whole, the request billed and settled as above."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"data": [{"id": "gpt-4o"}]})
        return httpx.Response(200, content=padded(MIB + 1))

    container, _, org, _, secret = initialized(tmp_path, "http://upstream/v1", max_answer_bytes=MIB)
    app, gateway = gateway_assembly.build_app(container, transport=httpx.MockTransport(answer))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kp")
    try:
        await gateway.pipeline.auth.refresh()
        await gateway.pipeline.money.refresh()
        r = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"}
        )
        assert r.status_code == 502 and "KEYPLANE_MAX_ANSWER_BYTES" in r.json()["error"]["message"]
        await gateway.flush()
        [record] = container.usage_store.query(org.id)
        assert record.outcome.value == "upstream_broken" and record.tokens_estimated
        assert record.output_tokens == CHAT["max_tokens"]
        assert container.billing.balance(org.id).held == 0
    finally:
        await client.aclose()
        await gateway.shutdown()
        container.close()
