"""The composition root: builds every service from Settings. Nothing else wires adapters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cryptography.fernet import InvalidToken
from sqlalchemy import Engine

from keyplane import sealing
from keyplane.accounts.auth_services import AuthServices
from keyplane.accounts.orgs import OrgService
from keyplane.accounts.service import AccountService
from keyplane.accounts.sessions import LoginService
from keyplane.accounts.signup import SignupService
from keyplane.accounts.throttle import ThrottlePolicy
from keyplane.accounts.totp import SecondFactorService
from keyplane.accounts.verification import OrgVerificationService
from keyplane.app import KeyplaneApp, Lazy, behind_proxies
from keyplane.audit.service import AuditService
from keyplane.billing.payment_ports import PurchaseBounds
from keyplane.billing.payments import PaymentService
from keyplane.billing.promotion import TierPromoter
from keyplane.billing.sandbox import SandboxProvider
from keyplane.billing.service import BillingService
from keyplane.billing.watcher import SpendWatcher
from keyplane.clock import Clock, SystemClock
from keyplane.config import Settings, UpstreamSettings
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
from keyplane.gateway.upstreams import Upstream, UpstreamRouter
from keyplane.keys.access import AccessPolicyService
from keyplane.keys.anomalies import AnomalyWatcher
from keyplane.keys.authenticator import KeyAuthenticator
from keyplane.keys.leaks import LeakResponder
from keyplane.keys.rotation import RotationReminder
from keyplane.keys.service import KeyService
from keyplane.limits.ratelimit import InMemoryRateLimiter
from keyplane.limits.service import RateLimitService
from keyplane.limits.tiers import TierTable
from keyplane.notify.dispatcher import EmailDispatcher
from keyplane.notify.smtp import SmtpMailer
from keyplane.notify.webhooks import WebhookDispatcher, Webhooks
from keyplane.storage import migrate
from keyplane.storage.account_repository import SqlAccountStore
from keyplane.storage.activity_repository import SqlActivityStore
from keyplane.storage.audit_repository import SqlAuditLog
from keyplane.storage.auth_repository import SqlAuthStore
from keyplane.storage.billing_repository import SqlMoneyStore
from keyplane.storage.engine import make_engine
from keyplane.storage.gateway_lock import GatewayLock
from keyplane.storage.key_repository import SqlKeyStore
from keyplane.storage.limits_repository import SqlAccessPolicyStore, SqlRateLimitStore
from keyplane.storage.notify_repository import SqlOutbox
from keyplane.storage.org_repository import SqlOrgStore, SqlVerificationStore
from keyplane.storage.payment_repository import SqlPaymentStore
from keyplane.storage.response_repository import SqlResponseStore
from keyplane.storage.sealed import Resealed, SqlResealer
from keyplane.storage.usage_repository import SqlUsageStore
from keyplane.storage.webhook_repository import SqlWebhookStore
from keyplane.usage.pricing import PriceTable
from keyplane.webhook_http import HttpPoster

if TYPE_CHECKING:
    import httpx

    from keyplane.stripe_payments import StripeProvider


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
    promoter: TierPromoter
    rotation: RotationReminder
    leaks: LeakResponder
    payments: PaymentService
    stripe: StripeProvider | None  # the payment provider, when it is Stripe (its webhook)
    webhooks: Webhooks
    anomalies: AnomalyWatcher
    webhook_store: SqlWebhookStore
    response_store: SqlResponseStore  # whose each response the upstream stores is
    rate_limits: SqlRateLimitStore
    rate_limit_service: RateLimitService
    access_policies: SqlAccessPolicyStore
    access: AccessPolicyService
    auth: AuthServices
    audit: AuditService
    orgs: OrgService
    verification: OrgVerificationService
    outbox: SqlOutbox
    mailer: SmtpMailer
    prices: PriceTable
    pepper: bytes
    gateway_lock: GatewayLock | None = None  # taken by ``claim_database`` (a serving process)

    def billing_emails(self, org_id: str) -> list[str]:
        """Where the organization's billing emails go: its billing email, else its Owners."""
        return self.billing.billing_emails(org_id, self.accounts.owner_emails)

    def claim_database(self) -> None:
        """Makes this process the one gateway on its database, or raises AnotherGateway
        (storage/gateway_lock.py: holds and rate limits live in the gateway's memory)."""
        lock = GatewayLock(self.engine)
        lock.acquire()
        self.gateway_lock = lock

    def close(self) -> None:
        if self.gateway_lock is not None:
            self.gateway_lock.release()
        if self.stripe is not None:
            self.stripe.close()
        self.money_store.close()
        self.engine.dispose()

    def reseal(self) -> list[Resealed]:
        """Seals everything sealed at rest again with the current encryption key (the last step
        of rotating it: ``KEYPLANE_ENCRYPTION_KEY_PREVIOUS`` can go afterwards)."""
        return SqlResealer(self.engine).reseal(self.settings.encryption_keys())


def build(
    settings: Settings, *, clock: Clock | None = None, run_migrations: bool = True
) -> Container:
    clock = clock or SystemClock()
    engine = make_engine(settings.resolved_database_url)
    if run_migrations:
        migrate.ensure_current(engine)
    pepper = settings.secret_bytes("pepper")
    key_store = SqlKeyStore(engine)
    money_store = SqlMoneyStore(engine)
    tiers = TierTable.load(settings.tier_files)
    accounts = AccountService(SqlAccountStore(engine), clock)
    billing = BillingService(money_store, clock, tiers=tiers)
    # Email bodies carry single-use links (verification, reset, invitations): sealed at rest.
    sealing_keys = settings.encryption_keys()
    outbox = SqlOutbox(engine, sealer=sealing.sealer(sealing_keys, sealing.OUTBOX))
    rate_store = SqlRateLimitStore(engine)
    access_store = SqlAccessPolicyStore(engine)
    auth_store = SqlAuthStore(engine)
    audit = AuditService(SqlAuditLog(engine), clock)
    verification = OrgVerificationService(
        SqlVerificationStore(engine), clock.now, required=settings.require_org_verification
    )
    keys = KeyService(key_store, pepper, clock)
    throttle = ThrottlePolicy(
        per_account=settings.login_max_failures_per_account,
        per_address=settings.login_max_failures_per_address,
        window_s=settings.login_failure_window_s,
        resets_per_address=settings.password_reset_max_per_address,
        signups_per_address=settings.signup_max_per_address,
        signup_window_s=settings.signup_window_s,
    )
    signup = SignupService(
        auth_store, outbox, clock, public_url=settings.public_url, throttle=throttle, audit=audit
    )
    second_factor = SecondFactorService(
        auth_store, clock, encryption_keys=sealing_keys, throttle=throttle
    )
    webhook_store = SqlWebhookStore(engine, sealer=sealing.sealer(sealing_keys, sealing.WEBHOOKS))
    webhooks = Webhooks(
        webhook_store, clock, allow_private=settings.webhook_allow_private_addresses
    )

    def billing_emails(org_id: str) -> list[str]:  # (Container.billing_emails)
        return billing.billing_emails(org_id, accounts.owner_emails)

    promoter = TierPromoter(
        money_store, billing, outbox, clock, billing_emails=billing_emails,
        org_name=accounts.org_name, audit=audit, publish=webhooks.publish,
    )  # fmt: skip
    low, high = settings.purchase_bounds()
    stripe = _stripe(settings)
    payments = PaymentService(
        SqlPaymentStore(engine), billing, stripe or SandboxProvider(), clock, audit=audit,
        outbox=outbox,
        billing_emails=billing_emails, org_name=accounts.org_name, promote=promoter.check,
        public_url=settings.public_url, bounds=PurchaseBounds(low, high), max_recharge_attempts=settings.recharge_max_attempts,
        publish=webhooks.publish,
    )  # fmt: skip
    prices = PriceTable.load(settings.price_files)
    rate_limits = RateLimitService(rate_store, clock, tier_of=promoter.current, priced=prices.knows)
    return Container(
        settings=settings,
        clock=clock,
        engine=engine,
        accounts=accounts,
        keys=keys,
        key_store=key_store,
        usage_store=SqlUsageStore(engine),
        money_store=money_store,
        billing=billing,
        promoter=promoter,
        rotation=RotationReminder(
            key_store,
            outbox,
            clock,
            org_ids=lambda: [o.id for o in accounts.organizations()],
            owner_emails=accounts.owner_emails,
            org_name=accounts.org_name,
            project_name=accounts.project_name,
            max_age_days=settings.key_rotation_days,
        ),
        leaks=LeakResponder(
            key_store,
            pepper,
            audit,
            outbox,
            clock,
            owner_emails=accounts.owner_emails,
            org_name=accounts.org_name,
            project_name=accounts.project_name,
            publish=webhooks.publish,
        ),
        payments=payments,
        stripe=stripe,
        webhooks=webhooks,
        webhook_store=webhook_store,
        response_store=SqlResponseStore(engine),
        anomalies=AnomalyWatcher(
            SqlActivityStore(engine),
            key_store,
            audit,
            outbox,
            clock,
            owner_emails=accounts.owner_emails,
            org_name=accounts.org_name,
            publish=webhooks.publish,
        ),
        rate_limits=rate_store,
        rate_limit_service=rate_limits,
        access_policies=access_store,
        access=AccessPolicyService(access_store, clock.now),
        auth=AuthServices(
            signup=signup,
            login=LoginService(
                auth_store, clock, second_factor=second_factor, throttle=throttle, audit=audit
            ),
            second_factor=second_factor,
        ),
        audit=audit,
        orgs=OrgService(
            SqlOrgStore(engine),
            accounts,
            keys,
            outbox,
            audit,
            clock,
            public_url=settings.public_url,
            require_can_create_keys=signup.require_can_create_keys,
            key_limits=rate_limits,
            require_org_verified=verification.require_verified,
        ),
        verification=verification,
        outbox=outbox,
        mailer=SmtpMailer.from_settings(settings),
        prices=prices,
        pepper=pepper,
    )


def _stripe(settings: Settings) -> StripeProvider | None:
    """The Stripe provider when configured (its SDK is imported then only: the sandbox, the
    default, never loads it)."""
    if settings.payment_provider != "stripe":
        return None
    from keyplane.stripe_payments import StripeProvider

    assert settings.stripe_secret_key is not None  # (Settings refuses stripe without one)
    webhook = settings.stripe_webhook_secret
    return StripeProvider(
        settings.stripe_secret_key.get_secret_value(),
        webhook_secret=webhook.get_secret_value() if webhook else None,
        api_base=settings.stripe_api_base,
    )


class UnopenedUpstreamKey(ValueError):
    """An upstream's sealed api_key that none of the encryption keys opens. (The message names
    the upstream, never the sealed value nor the secret.)"""

    def __init__(self, upstream: str) -> None:
        super().__init__(
            f"upstream '{upstream}': the encryption key does not open its sealed api_key (nor does "
            "any in KEYPLANE_ENCRYPTION_KEY_PREVIOUS): run `keyplane seal` again with the current "
            "key and replace it in the configuration"
        )


def open_upstreams(settings: Settings) -> list[Upstream]:
    """The configured upstreams with their provider keys in clear (a ``sealed:…`` one opened
    with the encryption key or a previous one). Raises UnopenedUpstreamKey."""
    keys = _keys_if_sealed(settings)
    result = []
    for u in settings.upstreams:
        name = u.name or u.base_url
        try:
            api_key, _ = _provider_key(u, keys)
        except InvalidToken:
            raise UnopenedUpstreamKey(name) from None
        models = frozenset(m for m in u.models if m != "*")
        result.append(Upstream(name=name, base_url=u.base_url, api_key=api_key, models=models))
    return result


@dataclass(frozen=True, slots=True)
class StaleUpstreamKey:
    """A sealed upstream key in the configuration that the current encryption key does not open:
    ``reseal`` cannot rewrite the configuration, the operator seals it again by hand."""

    upstream: str  # its name, or its base URL
    opens_with: Literal["previous", "none"]  # a previous encryption key only, or none of them


def stale_upstream_keys(settings: Settings) -> list[StaleUpstreamKey]:
    keys = _keys_if_sealed(settings)
    stale = []
    for u in settings.upstreams:
        try:
            _, opened_by = _provider_key(u, keys)
        except InvalidToken:
            stale.append(StaleUpstreamKey(u.name or u.base_url, "none"))
            continue
        if opened_by:  # (0: the current key; None: given in clear)
            stale.append(StaleUpstreamKey(u.name or u.base_url, "previous"))
    return stale


def _provider_key(u: UpstreamSettings, keys: list[bytes]) -> tuple[str | None, int | None]:
    """(An upstream's provider key in clear, which of ``keys`` opened it: None when the
    configuration gives it in clear.) Raises InvalidToken."""
    value = u.api_key.get_secret_value() if u.api_key else None
    if value is None or not sealing.is_sealed(value):
        return value, None
    return sealing.unseal(keys, sealing.UPSTREAMS, value)


def _keys_if_sealed(settings: Settings) -> list[bytes]:
    """The encryption keys, when an upstream key is sealed (in development, the first call writes
    one into the data directory: not for a configuration that seals nothing)."""
    sealed = (u.api_key.get_secret_value() for u in settings.upstreams if u.api_key)
    return settings.encryption_keys() if any(map(sealing.is_sealed, sealed)) else []


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
            container.key_store, container.pepper, container.clock, max_entries=s.key_cache_size
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
