"""A paced streaming upstream for bench/ttfb.py: the first SSE event at once, the rest later.

    .venv/bin/python bench/sse_upstream.py --port 8199 --delay-ms 20

nginx sends a fixed body in one write, so it cannot show whether a gateway forwards a stream
chunk by chunk. This aiohttp server answers ``POST /v1/chat/completions`` with status 200,
``text/event-stream`` (chunked), writes the first event of fixtures.CHAT_STREAM_RESPONSE (the
role chunk) at once, then after ``--delay-ms`` the rest (content chunks, finish chunk, the usage
chunk, ``[DONE]``) in one write. ``GET /v1/models`` lists the models (keyplane reads it). It
counts the streams it served and prints the count when it stops (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio

import fixtures
from aiohttp import web

FIRST, _, REST = fixtures.CHAT_STREAM_RESPONSE.partition(b"\n\n")
FIRST += b"\n\n"


def make_app(delay_s: float) -> web.Application:
    served = {"streams": 0}

    async def models(_request: web.Request) -> web.Response:
        return web.Response(body=fixtures.MODELS_RESPONSE, content_type="application/json")

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        await resp.write(FIRST)
        await asyncio.sleep(delay_s)
        await resp.write(REST)
        await resp.write_eof()
        served["streams"] += 1
        return resp

    async def report(_app: web.Application) -> None:
        print(f"streams served: {served['streams']}", flush=True)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.on_shutdown.append(report)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    app = make_app(args.delay_ms / 1000)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
