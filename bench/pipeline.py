"""keyplane's own work per request, without HTTP: the gateway ASGI app called in-process.

    .venv/bin/python bench/pipeline.py [--requests 20000] [--profile] [--stream]

Every check runs (key, IP, permission, parse, model, rate limits, hold, metering, settlement
batches written to SQLite); only the two HTTP ends are replaced: the client by direct ASGI calls,
the upstream by a client answering a fixed chat.completion at once. Prints µs of CPU per request
(median of 5 rounds), so a change to the pipeline can be measured in seconds without wrk or nginx;
``--profile`` prints the functions that cost most (cProfile). ``--stream`` sends the chat request
with ``stream: true`` (the fixed answer is JSON, as from an upstream that ignored it): what a
stream costs keyplane on its way in (its body rewritten to ask for usage), not the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fixtures import CHAT_REQUEST, CHAT_RESPONSE, CHAT_STREAM_REQUEST
from target import BENCH_TIER

from keyplane import bootstrap, gateway_assembly, server
from keyplane.config import Settings, UpstreamSettings
from keyplane.gateway.transport import Headers, UpstreamClient, UpstreamResponse
from keyplane.keys.format import KeyKind


class _Fixed(UpstreamResponse):
    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.headers = [(b"content-type", b"application/json")]
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    async def aclose(self) -> None:
        return None


class FixedUpstream(UpstreamClient):
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0

    async def request(
        self, method: str, url: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        if method == "GET":  # the model list
            return _Fixed(b'{"object":"list","data":[{"id":"gpt-4o-mini"}]}')
        self.calls += 1
        return _Fixed(self.body)

    async def aclose(self) -> None:
        return None


def setup(data_dir: Path) -> tuple[Any, str, FixedUpstream]:
    tiers = data_dir / "bench-tier.toml"
    tiers.write_text(BENCH_TIER)
    settings = Settings(
        data_dir=data_dir,
        tier_files=[tiers],
        upstreams=[UpstreamSettings(name="stub", base_url="http://stub/v1")],
        log_level="warning",
    )
    container = bootstrap.build(settings)
    owner, org, project = container.accounts.initialize(
        email="bench@example.com", password="correct horse battery", org_name="Bench"
    )
    _, secret = container.keys.create(
        kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name="bench",
        owner_type="user", owner_id=owner.id, created_by=owner.id,
    )  # fmt: skip
    container.billing.open_account(org.id, tier="bench", welcome_credit=0)
    container.billing.grant(org.id, 10**12, note="bench")
    gateway = gateway_assembly.build_gateway(container)
    upstream = FixedUpstream(CHAT_RESPONSE)
    gateway.pipeline.router.client = upstream
    return gateway, secret, upstream


async def run(gateway: Any, secret: str, requests: int, stream: bool = False) -> float:
    """Returns CPU seconds per request over ``requests`` sequential calls (settlement included)."""
    started = time.process_time()
    await serve(gateway, secret, requests, stream)
    await gateway.flush()
    return (time.process_time() - started) / requests


async def serve(gateway: Any, secret: str, requests: int, stream: bool = False) -> None:
    """``requests`` sequential calls (``stream``: asking for a stream), their settlements left
    queued for the next flush."""
    body = CHAT_STREAM_REQUEST if stream else CHAT_REQUEST
    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "client": ("127.0.0.1", 5),
        "headers": [(b"authorization", f"Bearer {secret}".encode()),
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(requests):
        await gateway(dict(scope), receive, send)
    bad = [s for s in statuses if s != 200]
    if bad:
        raise SystemExit(f"{len(bad)} requests failed, e.g. status {bad[0]}")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gateway, secret, upstream = setup(Path(tmp))
        await gateway.pipeline.auth.refresh()
        await gateway.pipeline.money.refresh()
        await run(gateway, secret, 500, args.stream)  # warm-up: caches, compiled statements
        server.tune_gc()  # the collector as `keyplane serve` sets it
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await run(gateway, secret, args.requests, args.stream)
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(30)
            return
        rounds = [await run(gateway, secret, args.requests, args.stream) for _ in range(5)]
        print(
            f"{statistics.median(rounds) * 1e6:.1f} µs of CPU per request "
            f"(rounds: {', '.join(f'{r * 1e6:.1f}' for r in rounds)}; "
            f"{upstream.calls} forwarded)"
        )
        gateway.pipeline.money.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stream", action="store_true", help="ask for a stream (stream: true)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
