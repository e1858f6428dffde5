"""The Python floor under keyplane: the same HTTP server, upstream client, event loop and process
tuning as ``keyplane serve``, forwarding each request to the upstream with no check at all (no
key, limits, money, metering). Started by bench/floor.py with keyplane's compiled build on
PYTHONPATH, so its server and client are the compiled ones.

    python bench/bare_proxy.py --port P --upstream http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
from typing import Any

from keyplane import server
from keyplane.gateway.h1client import H1Client

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]


class BareProxy:
    """ASGI: POST /v1/… forwarded to ``upstream`` + the path after /v1, the answer passed back
    (a stream event by event)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.client = H1Client(max_connections=256, connect_timeout_s=5, read_timeout_s=60)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await self.client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] != "POST":  # (the bench's readiness check)
            await send({"type": "http.response.start", "status": 200, "headers": _JSON})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        url = self.upstream + scope["path"].removeprefix("/v1")
        answer = await self.client.request("POST", url, _JSON, body)
        try:
            stream = (b"content-type", b"text/event-stream") in answer.headers
            start = {"type": "http.response.start", "status": answer.status}
            if not stream:
                data = await answer.read()
                await send({**start, "headers": _JSON})
                await send({"type": "http.response.body", "body": data})
                return
            await send({**start, "headers": _SSE})
            async for chunk in answer.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await answer.aclose()


async def _serve(port: int, upstream: str) -> None:
    srv = server.make_server(BareProxy(upstream))
    server.stop_on_signals([srv])
    await srv.serve([server.bind("127.0.0.1", port)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    server.run(_serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
