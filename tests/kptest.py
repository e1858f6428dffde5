"""Test support: real servers on loopback sockets in background threads, and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import orjson

from keyplane import server

T = TypeVar("T")
DAY = 86400


def just_before_month_end() -> float:
    """Half a second before this month ends (UTC). A ``FrozenClock`` started there turns over the
    day and the month as soon as a test moves it on a second: where a test that works out "today"
    apart from the code under test breaks, as it would in a run across midnight."""
    now = dt.datetime.now(dt.UTC)
    next_month = (now.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    midnight = next_month.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp() - 0.5


async def read_body(receive: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> bytes:
    """The whole request body an ASGI app receives."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def wait_until(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.01) -> T:
    """Polls ``predicate`` until it returns something truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections while in use: bound, never listening. (One bound
    and closed again at once could be given meanwhile to another process, the other test pass
    say, which would then answer on it.)"""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class ServerThread:
    """Runs an ASGI app under keyplane's server on 127.0.0.1:<ephemeral> in a thread with its own loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = server.bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = server.make_server(app)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        # As asyncio.Runner (keyplane serve) ends: database calls still running in worker threads
        # finish first, or closing the container meanwhile would strand their connections.
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def start(self) -> ServerThread:
        self._thread.start()
        wait_until(lambda: self.server.started, timeout=15)
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Runs a coroutine on the server's loop (e.g. flush the usage buffer) and waits for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()


class Upstream:
    """A minimal OpenAI-compatible server to serve in a ``ServerThread``: ``answer`` makes each
    answer to a POST (status 200, JSON unless ``status``/``content_type`` say otherwise); it
    records the bodies and headers it was sent."""

    status = 200
    content_type = b"application/json"
    models: tuple[str, ...] = ("gpt-3.5-turbo", "gpt-4o")  # what GET /models lists
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()  # sent with each answer to a POST

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[bytes, bytes]] = []

    def answer(self, body: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def respond(
        self, path: str, headers: list[tuple[bytes, bytes]], raw: bytes
    ) -> tuple[int, bytes, bytes]:
        """A POST's answer: (status, content type, body). Here its JSON body and headers are
        recorded and ``answer`` makes the answer; a subclass may read the request otherwise."""
        body = orjson.loads(raw)
        self.bodies.append(body)
        self.headers.append(dict(headers))
        return self.status, self.content_type, self.answer(body)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            status, content_type = 200, b"application/json"
            answer = orjson.dumps({"data": [{"id": model} for model in self.models]})
        else:
            status, content_type, answer = self.respond(
                scope["path"], scope["headers"], b"".join(chunks)
            )
        headers = [(b"content-type", content_type)]
        if scope["method"] != "GET":
            headers += self.extra_headers
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


async def answer_models(send: Any, *models: str) -> None:
    """Answers an upstream's ``GET /v1/models`` with ``models`` (for a hand-written ASGI upstream;
    ``Upstream`` does it itself)."""
    body = orjson.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def watch_disconnect(receive: Any, left: threading.Event) -> asyncio.Task[None]:
    """A task that sets ``left`` when the client (keyplane) closes the connection, for an ASGI
    upstream that streams its answer; the upstream cancels it when done."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        left.set()

    return asyncio.create_task(watch())


class ChatRecorder(Upstream):
    """Answers every chat completion with "hi" (5 prompt tokens, 1 completion token); records the
    bodies and headers it was sent."""

    def answer(self, body: dict[str, Any]) -> bytes:
        message = {"role": "assistant", "content": "hi"}
        return orjson.dumps(
            {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )  # fmt: skip


@contextlib.contextmanager
def chat_recorder() -> Iterator[tuple[ChatRecorder, str]]:
    """A ``ChatRecorder`` served on loopback, and its base URL (``…/v1``)."""
    recorder = ChatRecorder()
    thread = ServerThread(recorder).start()
    try:
        yield recorder, thread.url + "/v1"
    finally:
        thread.stop()
