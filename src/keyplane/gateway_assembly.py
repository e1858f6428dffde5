"""The gateway assembled over the container (its upstream client, its pipeline, its background
jobs) and the one ASGI app around it: what a serving process builds once ``bootstrap.build`` has
built the services."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from keyplane.app import KeyplaneApp, Lazy, behind_proxies
from keyplane.billing.watcher import SpendWatcher
from keyplane.bootstrap import Container
from keyplane.gateway.access import AccessGuard
from keyplane.gateway.app import Gateway
from keyplane.gateway.asgi import ASGIApp
from keyplane.gateway.h1client import H1Client
from keyplane.gateway.journal import HoldJournal
from keyplane.gateway.meter import Meter
from keyplane.gateway.money import MoneyGuard
from keyplane.gateway.pipeline import Pipeline
from keyplane.gateway.ratelimits import RateGuard
from keyplane.gateway.responses import ResponseOwners
from keyplane.gateway.transport import UpstreamClient
from keyplane.gateway.upstreams import UpstreamRouter
from keyplane.keys.authenticator import KeyAuthenticator
from keyplane.limits.ratelimit import InMemoryRateLimiter
from keyplane.notify.dispatcher import EmailDispatcher
from keyplane.notify.webhooks import WebhookDispatcher
from keyplane.storage.gateway_lock import GatewayLock
from keyplane.upstream_keys import open_upstreams
from keyplane.webhook_http import HttpPoster

if TYPE_CHECKING:
    import httpx


def build_gateway(
    container: Container, *, transport: httpx.AsyncBaseTransport | None = None
) -> Gateway:
    s = container.settings
    upstreams = open_upstreams(s)
    timeouts = {
        "connect_timeout_s": s.upstream_connect_timeout_s,
        "read_timeout_s": s.upstream_read_timeout_s,
    }
    client: UpstreamClient
    if transport is None:
        client = H1Client(
            max_connections=s.upstream_max_connections, pool_wait_s=s.upstream_pool_wait_s,
            max_answer_bytes=s.max_answer_bytes, **timeouts,
        )  # fmt: skip
    else:  # tests: the simulator in-process, a MockTransport
        from keyplane.gateway.httpx_client import HttpxClient

        client = HttpxClient(transport, max_answer_bytes=s.max_answer_bytes, **timeouts)
    rates = RateGuard(
        InMemoryRateLimiter(s.rpm_burst_s),
        container.billing.tiers,
        container.rate_limits,
        container.clock,
    )
    access = AccessGuard(container.access_policies, s.trusted_proxies)
    meter = Meter()  # what /metrics counts
    pipeline = Pipeline(
        auth=KeyAuthenticator(
            container.key_store, container.peppers, container.clock, max_entries=s.key_cache_size
        ),
        router=UpstreamRouter(upstreams, client, retries=s.upstream_retries, meter=meter),
        prices=container.prices,
        money=MoneyGuard(
            container.money_store,
            container.clock,
            HoldJournal(s.data_dir / "journal"),
            usage_limit_for=container.billing.usage_limit_for,
            hold_ttl_s=s.hold_ttl_s,
            gateway_timeout_s=s.gateway_timeout_s,
            min_output_tokens=s.min_output_tokens,
            batch_size=s.usage_batch_size,
            max_unstored=s.max_unstored_settlements,
            flush_interval_s=s.usage_flush_interval_s,
            meter=meter,
        ),
        rates=rates,
        access=access,
        clock=container.clock,
        stored=ResponseOwners(
            container.response_store, container.clock, retention_days=s.stored_response_days
        ),
        max_body_bytes=s.max_body_bytes,
        default_max_output_tokens=s.default_max_output_tokens,
    )
    pipeline.money.listeners.append(lambda event: rates.forget(event.ref))
    pipeline.money.listeners.append(lambda event: access.forget(event.ref))
    watcher = SpendWatcher(
        container.money_store,
        container.outbox,
        container.clock,
        billing_emails=container.billing_emails,
        org_name=container.accounts.org_name,
        project_name=container.accounts.project_name,
        public_url=s.public_url,
        publish=container.webhooks.publish,
        audit=container.audit,
    )
    dispatcher = EmailDispatcher(container.outbox, container.mailer, container.clock)
    hooks = WebhookDispatcher(
        container.webhook_store,
        HttpPoster(allow_private=s.webhook_allow_private_addresses),
        container.clock,
    )

    async def anomalies() -> None:
        """Keys' new networks and spend spikes, from what the settlements stored since the last
        look (a database outage loses that minute's activity, never a request's record)."""
        addresses, spend = pipeline.money.meter.take_activity()
        if addresses or spend:
            await asyncio.to_thread(container.anomalies.check, addresses, spend)

    async def recharge() -> None:
        """Auto-recharges the spend watcher asked for; this process's gateway sees the credit at
        once (the others at their next poll)."""
        if await asyncio.to_thread(container.payments.run_recharges):
            await pipeline.money.refresh()

    async def after_flush() -> None:
        touched, states = pipeline.money.take_touched()
        if touched:
            await asyncio.to_thread(watcher.check, touched, states)

    return Gateway(
        pipeline,
        key_poll_interval_s=s.key_poll_interval_s,
        usage_flush_interval_s=s.usage_flush_interval_s,
        last_used_flush_s=s.last_used_flush_s,
        sweep_interval_s=s.sweep_interval_s,
        after_flush=after_flush,
        data_version=container.money_store.data_version,
        metrics_allowed_ips=s.metrics_allowed_ips,
        background=[
            (s.email_dispatch_interval_s, dispatcher.run_once),
            (s.webhook_dispatch_interval_s, hooks.run_once),
            (s.anomaly_check_interval_s, anomalies),
            (s.tier_check_interval_s, lambda: asyncio.to_thread(container.promoter.check_all)),
            (s.recharge_check_interval_s, recharge),
            (
                s.key_rotation_check_interval_s,
                lambda: asyncio.to_thread(container.rotation.check_all),
            ),
            (3600.0, pipeline.stored.expire),  # stored responses past their retention
            *_keeping(container.gateway_lock, s.sweep_interval_s),
        ],
    )


def _keeping(
    lock: GatewayLock | None, every_s: float
) -> list[tuple[float, Callable[[], Awaitable[object]]]]:
    """The check that this gateway still holds its database's lock (a PostgreSQL restart drops
    it), when it took one."""
    if lock is None:
        return []
    return [(every_s, lambda: asyncio.to_thread(lock.keep))]


def build_app(
    container: Container, *, transport: httpx.AsyncBaseTransport | None = None
) -> tuple[KeyplaneApp, Gateway]:
    """The one ASGI app keyplane serves (Admin API + gateway + dashboard), and the gateway inside.

    The Admin API shares the gateway's key cache and applies money changes to its guard at once."""
    gateway = build_gateway(container, transport=transport)
    meter = gateway.meter

    # Built on their first request: a gateway that only serves /v1 never loads FastAPI, the
    # templates or their dependencies (~25 MB of its memory).
    def admin() -> ASGIApp:
        from keyplane.web.admin import create_admin_app
        from keyplane.web.leak_reports import ReporterKeys

        s = container.settings
        return create_admin_app(
            container, auth=gateway.pipeline.auth, on_money_change=gateway.pipeline.money.refresh,
            leak_reporters=ReporterKeys(s.leak_report_keys, s.leak_report_keys_url),
            on_key_used=lambda key, ip: meter.used_from(key.org_id, key.id, ip),
        )  # fmt: skip

    def dashboard() -> ASGIApp:
        from keyplane.web.dashboard import create_dashboard_app

        return create_dashboard_app(container, settings=container.settings, auth=container.auth)

    proxies = container.settings.trusted_proxies
    web = KeyplaneApp(
        gateway,
        behind_proxies(Lazy(admin), proxies),
        dashboard=behind_proxies(Lazy(dashboard), proxies),
    )
    return web, gateway
