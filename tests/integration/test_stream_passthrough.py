"""Streams: passed through as they arrive, and billed even when cut short."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kphttp
from conftest import Keyplane, start_keyplane
from keyplane.usage.records import Outcome
from kptest import ServerThread, answer_models, watch_disconnect

CHUNK = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"abcd"}}]}\n\n'


class GatedUpstream:
    """An upstream that streams one chunk each time the test opens the gate, so a test can tell
    whether keyplane forwards a chunk before the upstream has produced the next one."""

    def __init__(self, *, break_after: int | None = None) -> None:
        self.gate = threading.Semaphore(0)
        self.sent = 0
        self.finished = threading.Event()
        self.client_left = threading.Event()  # keyplane closed the upstream connection
        self.break_after = break_after

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await answer_models(send, "gpt-4o-mini")
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        watcher = watch_disconnect(receive, self.client_left)
        try:
            for _ in range(50):
                await asyncio.to_thread(self.gate.acquire)
                if self.break_after is not None and self.sent >= self.break_after:
                    raise RuntimeError("upstream dies mid-stream")
                self.sent += 1
                await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            self.finished.set()
            await asyncio.sleep(0)
            if self.client_left.is_set():
                watcher.cancel()


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[GatedUpstream, Keyplane]]:
    upstream = GatedUpstream()
    server = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, server.url + "/v1")
    yield upstream, kp
    for _ in range(60):
        upstream.gate.release()
    kp.server.stop()
    server.stop()
    kp.container.close()


def _stream(kp: Keyplane) -> Any:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return kphttp.stream(
        "POST", kp.base_url + "/chat/completions", json=body,
        headers={"authorization": f"Bearer {kp.key}"},
    )  # fmt: skip


def test_each_chunk_is_forwarded_before_the_upstream_sends_the_next(
    gated: tuple[GatedUpstream, Keyplane],
) -> None:
    upstream, kp = gated
    with _stream(kp) as resp:
        assert resp.status_code == 200
        events = resp.iter_raw()
        for i in range(3):
            upstream.gate.release()  # let the upstream produce exactly one more chunk
            assert next(events) == CHUNK, f"chunk {i} was held back"
            assert upstream.sent == i + 1


def test_client_disconnect_after_three_chunks_is_billed_once(
    gated: tuple[GatedUpstream, Keyplane],
) -> None:
    upstream, kp = gated
    with _stream(kp) as resp:
        events = resp.iter_raw()
        for _ in range(3):
            upstream.gate.release()
            next(events)
    # keyplane notices the client left, stops reading the upstream, and meters what was streamed.
    [record] = kp.usage(expect=1)
    assert record.outcome is Outcome.CLIENT_DISCONNECTED
    assert record.output_tokens == 3  # three chunks of four characters
    assert record.input_tokens > 0 and record.tokens_estimated
    assert record.cost_micro_usd > 0
    assert upstream.client_left.wait(10), "keyplane kept the upstream stream open"
    assert upstream.sent == 3
    kp.flush()
    assert len(kp.usage()) == 1


def test_upstream_breaking_mid_stream_is_billed_and_reported(tmp_path: Path) -> None:
    upstream = GatedUpstream(break_after=2)
    server = ServerThread(upstream).start()
    kp = start_keyplane(tmp_path, server.url + "/v1")
    try:
        for _ in range(5):
            upstream.gate.release()
        with _stream(kp) as resp:
            body = b"".join(resp.iter_raw())
        assert body.count(CHUNK) == 2
        assert b'"error"' in body and b"upstream" in body
        [record] = kp.usage(expect=1)
        assert record.outcome is Outcome.UPSTREAM_BROKEN and record.output_tokens == 2
    finally:
        kp.server.stop()
        server.stop()
        kp.container.close()


def test_unreachable_upstream_is_502_and_metered_at_zero(tmp_path: Path) -> None:
    closed = ServerThread(lambda *a: None)  # bind a port, never start: connections are refused
    closed.sock.close()
    kp = start_keyplane(tmp_path, f"http://127.0.0.1:{closed.port}/v1")
    kp.gateway.pipeline.router.upstreams[0].models = frozenset({"gpt-4o-mini"})
    try:
        resp = kphttp.post(
            kp.base_url + "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers={"authorization": f"Bearer {kp.key}"},
        )
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "upstream_error"
        [record] = kp.usage(expect=1)
        assert record.outcome is Outcome.UPSTREAM_UNREACHABLE and record.cost_micro_usd == 0
    finally:
        kp.server.stop()
        kp.container.close()


def test_every_answer_has_a_request_id(kp: Keyplane) -> None:
    for resp in (
        kphttp.get(kp.base_url + "/models"),
        kphttp.get(kp.base_url + "/models", headers={"authorization": f"Bearer {kp.key}"}),
        kphttp.post(kp.base_url + "/nowhere"),
    ):
        assert resp.headers["x-request-id"].startswith("req_")
