"""The gateway as a pure ASGI app: routing, error answers, and the background loops it owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

from keyplane.errors import KeyplaneError, StoreUnavailable
from keyplane.gateway import responses
from keyplane.gateway.asgi import Receive, Scope, Send, send_bytes, send_json
from keyplane.gateway.errors import ApiError, from_domain, model_not_found
from keyplane.gateway.pipeline import ENDPOINTS, Call, Pipeline
from keyplane.gateway.upstreams import UpstreamUnavailable
from keyplane.ids import new_request_id
from keyplane.keys import network
from keyplane.keys.permissions import Access, Group

log = logging.getLogger("keyplane.gateway")

MODEL_CREATED = 1_700_000_000
_WRITE = Access.WRITE  # (a global: an enum member lookup is ~80 ns on Python 3.11)


_READ_METHODS = ("GET", "HEAD")  # (the server sends no body to a HEAD)
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


# OpenAI endpoints keyplane does not forward (yet): said plainly rather than "Invalid URL".
NOT_SERVED = frozenset({"/v1/responses/input_tokens", "/v1/responses/compact"})
_NOT_SERVED_PREFIXES = ("/v1/files", "/v1/batches", "/v1/assistants", "/v1/threads",
                        "/v1/vector_stores", "/v1/fine_tuning", "/v1/uploads", "/v1/realtime",
                        "/v1/conversations", "/v1/chatkit", "/v1/containers", "/v1/evals",
                        "/v1/videos")  # fmt: skip
SERVED = (
    "/v1/chat/completions, /v1/completions, /v1/responses (and stored responses), "
    "/v1/embeddings, /v1/moderations, /v1/images/generations, /v1/images/edits, "
    "/v1/images/variations, /v1/audio/transcriptions, /v1/audio/translations, /v1/audio/speech "
    "and /v1/models"
)


class Gateway:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        key_poll_interval_s: float,
        usage_flush_interval_s: float,
        last_used_flush_s: float,
        sweep_interval_s: float = 5.0,
        after_flush: Callable[[], Awaitable[Any]] | None = None,
        background: Sequence[tuple[float, Callable[[], Awaitable[Any]]]] = (),
        data_version: Callable[[], Hashable | None] = lambda: None,
        metrics_allowed_ips: Sequence[str] = (),
    ) -> None:
        self.pipeline = pipeline
        self.meter = pipeline.money.meter
        # Who may read /metrics (none: /metrics is not served). Checked against the caller's
        # address as the IP allowlists see it (through trusted proxies).
        self._metrics_allowed = network.parse_networks(metrics_allowed_ips)
        self._metrics: Callable[[], bytes] | None = None
        self.flushes_failed = 0  # flushes the database refused (each retried by the next)
        self.last_flush_ok = 0.0  # time.time() of the last flush that stored everything queued
        self.database_ok = True  # whether the last flush reached the database
        self.serving = False  # started (lifespan) and not shutting down: what /readyz says
        self._data_version = data_version
        self._polled: Hashable | None = None  # the data version both feeds were last read at
        self._after_flush = after_flush
        # One hook at a time, so a flush returns only after the hook that took its settlements
        # (maybe a concurrent flush's) is done: its emails and recharge jobs are then stored.
        self._after_flush_lock = asyncio.Lock()
        # The last two also run once more at shutdown, so nothing settled is left unwritten.
        self._loops: list[tuple[float, Callable[[], Awaitable[Any]]]] = [
            (key_poll_interval_s, self._poll_feeds),
            (sweep_interval_s, pipeline.money.sweep),
            *background,
            (usage_flush_interval_s, self.flush),
            (last_used_flush_s, self._flush_last_used),
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def flush(self) -> None:
        """Writes settled requests (usage records and ledger entries) and whose the responses the
        upstream stores are, then runs the after-flush hook (threshold notifications,
        auto-recharge jobs)."""
        try:
            await self.pipeline.money.flush()
            await self.pipeline.stored.flush()
        except StoreUnavailable:
            self.flushes_failed += 1
            self.database_ok = False
            raise
        self.last_flush_ok = time.time()
        self.database_ok = True
        if self._after_flush is not None:
            async with self._after_flush_lock:
                await self._after_flush()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        rid = [(b"x-request-id", request_id.encode())]
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            endpoint = ENDPOINTS.get(path)
            if endpoint is not None and method == "POST":
                client_ip = self.pipeline.access.client_ip(scope)
                key, levels = await self.pipeline.admit_caller(
                    scope, client_ip, endpoint.group, _WRITE
                )
                call = Call(request_id, endpoint, key, levels, client_ip, time.monotonic())
                await self.pipeline.handle(call, scope, receive, send)
            elif method in _READ_METHODS and (
                path == "/v1/models" or path.startswith("/v1/models/")
            ):
                await self._models(scope, send, path.removeprefix("/v1/models").strip("/"), rid)
            elif method in _READ_METHODS and path == "/healthz":
                await send_json(send, 200, {"status": "ok"}, rid)
            elif method in _READ_METHODS and path == "/readyz":
                await self._readyz(send, rid)
            elif path == "/metrics" and self._metrics_allowed:
                await self._serve_metrics(scope, method, send, rid)
            elif path.startswith(responses.PREFIX) and path not in NOT_SERVED:
                await self._stored_response(scope, method, path, send, rid)
            elif path == "/v1/chat/completions" or path.startswith("/v1/chat/completions/"):
                raise ApiError(  # (not a POST to it: the stored completions of store: true)
                    404, "keyplane does not keep stored completions (store: true): it forwards "
                    "POST /v1/chat/completions only.", code="unsupported_endpoint",
                )  # fmt: skip
            elif path in NOT_SERVED or path.startswith(_NOT_SERVED_PREFIXES):
                raise ApiError(
                    404, f"keyplane does not serve {path} yet: it serves {SERVED}.",
                    code="unsupported_endpoint",
                )  # fmt: skip
            else:
                raise ApiError(404, f"Invalid URL ({method} {path})")
        except ApiError as exc:
            self.meter.error(exc.status, exc.code)
            await send_json(send, exc.status, exc.body(), rid + list(exc.extra_headers))
        except KeyplaneError as exc:
            error = from_domain(exc)
            self.meter.error(error.status, error.code)
            await send_json(send, error.status, error.body(), rid + list(error.extra_headers))
        except Exception:
            log.exception("unexpected error in %s %s (request %s)", method, path, request_id)
            self.meter.error(500, "server_error")
            error = ApiError(500, "keyplane failed to handle this request.", type="server_error")
            with contextlib.suppress(Exception):
                await send_json(send, 500, error.body(), rid)

    async def _models(
        self, scope: Scope, send: Send, model: str, rid: list[tuple[bytes, bytes]]
    ) -> None:
        access = self.pipeline.access
        client_ip = access.client_ip(scope)
        key, levels = await self.pipeline.admit_caller(scope, client_ip, Group.MODELS, Access.READ)
        self.pipeline.auth.used(key, client_ip, self.pipeline.clock.now())
        # The models this key may use: allowed to it, and priced (an unpriced one is refused).
        prices, now = self.pipeline.prices, self.pipeline.clock.now()
        names = [
            m
            for m in await self.pipeline.router.models()
            if access.model_allowed(levels, key, m) and prices.price(m, now) is not None
        ]
        if model:
            if model not in names:
                raise model_not_found(model)
            await send_json(send, 200, _model(model), rid)
            return
        await send_json(send, 200, {"object": "list", "data": [_model(m) for m in names]}, rid)

    async def _stored_response(
        self, scope: Scope, method: str, path: str, send: Send, rid: list[tuple[bytes, bytes]]
    ) -> None:
        """A stored response read, deleted or cancelled, or its input items listed: for keys of
        the project that created it, from the upstream storing it; free (nothing is generated)."""
        response_id, _, rest = path.removeprefix(responses.PREFIX).partition("/")
        access = responses.ROUTES.get((method, rest))
        if access is None or not response_id:
            raise ApiError(404, f"Invalid URL ({method} {path})")
        pipeline = self.pipeline
        client_ip = pipeline.access.client_ip(scope)
        key, _levels = await pipeline.admit_caller(scope, client_ip, Group.CHAT, access)
        found = await pipeline.stored_at(response_id, key)
        if found is None:
            raise responses.not_found(response_id)
        pipeline.auth.used(key, client_ip, pipeline.clock.now())
        _, up = found
        query = scope.get("query_string", b"").decode("latin-1")
        target = path.removeprefix("/v1") + (f"?{query}" if query else "")
        try:
            resp, content = await pipeline.router.fetch(up, method, target, scope["headers"])
        except UpstreamUnavailable as exc:
            status = 503 if exc.busy else 502
            raise ApiError(status, str(exc), type="server_error", code="upstream_error") from None
        if method == "DELETE" and resp.status == 200:
            await pipeline.stored.forget(response_id)
        content_type = next((v for k, v in resp.headers if k == b"content-type"), b"")
        if not content_type.startswith(b"application/json") or not 200 <= resp.status <= 599:
            raise ApiError(
                502, f"The upstream answered HTTP {resp.status} without JSON.",
                type="server_error", code="upstream_error",
            )  # fmt: skip
        await send_bytes(send, resp.status, content, rid, content_type=content_type)

    async def _readyz(self, send: Send, rid: list[tuple[bytes, bytes]]) -> None:
        """503 while this process cannot serve: not started yet, shutting down, or its unstored
        settlements at ``max_unstored_settlements`` (it refuses every request then). A database
        that is unreachable only shows: cached keys keep working meanwhile, and taking every
        gateway out of a load balancer for it would refuse those too."""
        money = self.pipeline.money
        full = money.queued >= money.max_unstored
        ready = self.serving and not full
        body = {
            "status": "ok" if ready else "unavailable",
            "serving": self.serving,
            "database": "ok" if self.database_ok else "unreachable",
            "settlements_queued": money.queued,
            "settlements_queued_max": money.max_unstored,
        }
        await send_json(send, 200 if ready else 503, body, rid)

    async def _serve_metrics(
        self, scope: Scope, method: str, send: Send, rid: list[tuple[bytes, bytes]]
    ) -> None:
        """Prometheus's text format, to the addresses in ``metrics_allowed_ips`` only."""
        if method not in _READ_METHODS:
            raise ApiError(
                405, f"Method not allowed ({method} /metrics): use GET.",
                extra_headers=((b"allow", b"GET, HEAD"),),
            )  # fmt: skip
        addr = network.parse_address(self.pipeline.access.client_ip(scope))
        if not network.allowed_nonempty(addr, self._metrics_allowed):
            raise ApiError(
                403, "/metrics is served only to the addresses in KEYPLANE_METRICS_ALLOWED_IPS.",
                type="invalid_request_error", code="ip_not_allowed",
            )  # fmt: skip
        if self._metrics is None:
            from keyplane.gateway.metrics import exposition  # (loaded by the first scrape only)

            self._metrics = exposition(self)
        body = self._metrics()
        await send_bytes(send, 200, body, rid, content_type=METRICS_CONTENT_TYPE)

    async def _poll_feeds(self) -> None:
        """Reads the key feed and the money feed (revocations, grants, settings changed by other
        processes or this one's Admin API), unless the database says nothing was committed since
        they were last read (``data_version``: SQLite's, which the settlement batches leave
        alone; None on PostgreSQL: always read). An idle gateway then reads nothing (each read
        cost ~0.3-0.6 ms of CPU, two reads 4 times a second)."""
        version = self._data_version()
        if version is not None and version == self._polled:
            return
        await self.pipeline.auth.refresh()
        await self.pipeline.money.refresh()
        self._polled = version  # (read before the feeds: a commit since then shows next time)

    async def _flush_last_used(self) -> None:
        """Writes the keys' last-use times, and the new hashes of keys that were checked with a
        previous pepper (keys/authenticator.py), in the same batch."""
        auth = self.pipeline.auth
        uses = auth.take_uses()
        if uses:
            await asyncio.to_thread(auth.store_uses, uses)
        rehashes = auth.take_rehashes()
        if rehashes:
            try:
                await asyncio.to_thread(auth.store_rehashes, rehashes)
            except StoreUnavailable:
                auth.keep_rehashes(rehashes)
                raise

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.pipeline.auth.refresh()
                    await self.pipeline.money.recover()  # holds of a gateway that died here
                    await self.pipeline.money.refresh()
                except StoreUnavailable:
                    log.warning("database unavailable at startup; serving from cache as it fills")
                self._tasks = [asyncio.create_task(every(s, fn)) for s, fn in self._loops]
                self.serving = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def shutdown(self) -> None:
        self.serving = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for _, fn in self._loops[-2:]:
            try:
                await fn()
            except StoreUnavailable:
                log.error("could not write usage at shutdown: database unavailable")
        await self.pipeline.money.leave()
        await self.pipeline.money.tidied()
        self.pipeline.money.close()
        await self.pipeline.router.client.aclose()


async def every(
    seconds: float,
    fn: Callable[[], Awaitable[Any]],
    now: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Calls ``fn`` every ``seconds``, counted from one start to the next, not from one end to the
    next start; one that ran late is followed at once (no burst to catch up). Under load the
    settlement flush itself takes about its interval: waiting a whole interval after it doubled
    the settlements queued at a time, and with them the memory they hold (~0.6 KB each, kept by
    the process once grown) and the batches' size. ``now`` and ``sleep``: the loop's clock."""
    clock = now or asyncio.get_running_loop().time
    due = clock()
    while True:
        due = max(due + seconds, clock())
        await sleep(due - clock())
        try:
            await fn()
        except StoreUnavailable:
            log.warning("%s: database unavailable, will retry", getattr(fn, "__name__", fn))
        except Exception:
            log.exception("background task %s failed", getattr(fn, "__name__", fn))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "keyplane"}
