"""The composition root: builds every service from Settings. Nothing else wires adapters."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy import Engine

from keyplane.accounts.service import AccountService
from keyplane.billing.service import BillingService
from keyplane.clock import Clock, SystemClock
from keyplane.config import Settings
from keyplane.gateway.app import Gateway
from keyplane.gateway.money import MoneyGuard
from keyplane.gateway.pipeline import Pipeline
from keyplane.gateway.upstreams import Upstream, UpstreamRouter
from keyplane.keys.authenticator import KeyAuthenticator
from keyplane.keys.service import KeyService
from keyplane.storage import migrate
from keyplane.storage.billing_repository import SqlMoneyStore
from keyplane.storage.engine import make_engine
from keyplane.storage.repositories import SqlAccountStore, SqlKeyStore, SqlUsageStore
from keyplane.usage.pricing import PriceTable, parse_dollars


@dataclass
class Container:
    settings: Settings
    clock: Clock
    engine: Engine
    accounts: AccountService
    keys: KeyService
    key_store: SqlKeyStore
    usage_store: SqlUsageStore
    money_store: SqlMoneyStore
    billing: BillingService
    prices: PriceTable
    pepper: bytes

    def close(self) -> None:
        self.engine.dispose()


def build(
    settings: Settings, *, clock: Clock | None = None, run_migrations: bool = True
) -> Container:
    clock = clock or SystemClock()
    engine = make_engine(settings.resolved_database_url)
    if run_migrations:
        migrate.upgrade(engine)
    pepper = settings.secret_bytes("pepper")
    key_store = SqlKeyStore(engine)
    money_store = SqlMoneyStore(engine)
    usage_limit = parse_dollars(settings.default_usage_limit_usd, "default_usage_limit_usd")
    return Container(
        settings=settings,
        clock=clock,
        engine=engine,
        accounts=AccountService(SqlAccountStore(engine), clock),
        keys=KeyService(key_store, pepper, clock),
        key_store=key_store,
        usage_store=SqlUsageStore(engine),
        money_store=money_store,
        billing=BillingService(money_store, clock, default_usage_limit=usage_limit),
        prices=PriceTable.load(settings.price_files),
        pepper=pepper,
    )


def build_gateway(
    container: Container, *, transport: httpx.AsyncBaseTransport | None = None
) -> Gateway:
    s = container.settings
    upstreams = [
        Upstream(
            name=u.name or u.base_url,
            base_url=u.base_url,
            api_key=u.api_key.get_secret_value() if u.api_key else None,
            models=frozenset(m for m in u.models if m != "*"),
        )
        for u in s.upstreams
    ]
    client = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(s.upstream_read_timeout_s, connect=s.upstream_connect_timeout_s),
        limits=httpx.Limits(
            max_connections=s.upstream_max_connections,
            max_keepalive_connections=s.upstream_max_connections,
        ),
    )
    pipeline = Pipeline(
        auth=KeyAuthenticator(container.key_store, container.pepper, container.clock),
        router=UpstreamRouter(upstreams, client, retries=s.upstream_retries),
        prices=container.prices,
        money=MoneyGuard(
            container.money_store,
            container.clock,
            default_usage_limit=container.billing.default_usage_limit,
            hold_ttl_s=s.hold_ttl_s,
            min_output_tokens=s.min_output_tokens,
            batch_size=s.usage_batch_size,
        ),
        clock=container.clock,
        max_body_bytes=s.max_body_bytes,
        default_max_output_tokens=s.default_max_output_tokens,
    )
    return Gateway(
        pipeline,
        key_poll_interval_s=s.key_poll_interval_s,
        usage_flush_interval_s=s.usage_flush_interval_s,
        last_used_flush_s=s.last_used_flush_s,
        sweep_interval_s=s.sweep_interval_s,
    )
