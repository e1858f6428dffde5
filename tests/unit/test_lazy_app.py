"""The Admin API and the dashboard are built on their first request, off the event loop: the
gateway keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import threading

import pytest

from keyplane.app import KeyplaneApp, Lazy
from keyplane.gateway.asgi import ASGIApp, Receive, Scope, Send


def answering(body: bytes) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


async def get(app: ASGIApp, path: str) -> bytes:
    """The body ``app`` answers a GET of ``path`` with."""
    body = b""

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        nonlocal body
        body += message.get("body", b"")  # type: ignore[operator]

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "client": None}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return body


class SlowBuild:
    """A factory that waits for the test before returning its app; counts its calls."""

    def __init__(self, fail_first: bool = False) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        self.finished = threading.Event()
        self.calls = 0
        self.fail_first = fail_first

    def __call__(self) -> ASGIApp:
        self.calls += 1
        self.started.set()
        self.go.wait(5)
        self.finished.set()
        if self.fail_first and self.calls == 1:
            raise RuntimeError("the build failed")
        return answering(b"admin")


def test_the_gateway_answers_while_the_admin_api_is_built() -> None:
    async def scenario() -> None:
        build = SlowBuild()
        web = KeyplaneApp(answering(b"gateway"), Lazy(build))
        first = asyncio.create_task(get(web, "/v1/organization/projects"))
        second = asyncio.create_task(get(web, "/v1/organization/users"))
        await asyncio.to_thread(build.started.wait, 5)
        assert await get(web, "/v1/models") == b"gateway"
        assert not build.finished.is_set()  # answered during the build, not after it
        build.go.set()
        assert await first == b"admin"
        assert await second == b"admin"
        assert await get(web, "/v1/organization/invites") == b"admin"
        assert build.calls == 1  # the first requests shared one build

    asyncio.run(scenario())


def test_a_failed_build_is_tried_again_by_the_next_request() -> None:
    async def scenario() -> None:
        build = SlowBuild(fail_first=True)
        build.go.set()
        web = KeyplaneApp(answering(b"gateway"), Lazy(build))
        with pytest.raises(RuntimeError):
            await get(web, "/v1/organization/projects")
        assert await get(web, "/v1/organization/projects") == b"admin"
        assert build.calls == 2

    asyncio.run(scenario())
