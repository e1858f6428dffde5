"""The composition root: builds every service from Settings. Nothing else wires adapters but
gateway_assembly.py, which builds the gateway and the ASGI app over this container."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
from keyplane.audit.service import AuditService
from keyplane.billing.payment_ports import PurchaseBounds
from keyplane.billing.payments import PaymentService
from keyplane.billing.promotion import TierPromoter
from keyplane.billing.sandbox import SandboxProvider
from keyplane.billing.service import BillingService
from keyplane.clock import Clock, SystemClock
from keyplane.config import Settings
from keyplane.keys.access import AccessPolicyService
from keyplane.keys.anomalies import AnomalyWatcher
from keyplane.keys.format import Peppers
from keyplane.keys.leaks import LeakResponder
from keyplane.keys.rotation import RotationReminder
from keyplane.keys.service import KeyService
from keyplane.limits.service import RateLimitService
from keyplane.limits.tiers import TierTable
from keyplane.notify.smtp import SmtpMailer
from keyplane.notify.webhooks import Webhooks
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
from keyplane.storage.sealed import Resealed, SealedCount, SqlResealer, Unopened
from keyplane.storage.usage_repository import SqlUsageStore
from keyplane.storage.webhook_repository import SqlWebhookStore
from keyplane.usage.pricing import PriceTable

if TYPE_CHECKING:
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
    peppers: Peppers  # the current pepper, then the previous ones (keys/format.py)
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

    def sealed_counts(self) -> list[SealedCount]:
        """Every value sealed at rest, counted by the configured encryption key that opens it."""
        return SqlResealer(self.engine).count(self.settings.encryption_keys())

    def unopened_sealed(self) -> list[Unopened]:
        """What keyplane will need to open and no configured encryption key opens."""
        return SqlResealer(self.engine).unopened(self.settings.encryption_keys())


def build(
    settings: Settings, *, clock: Clock | None = None, run_migrations: bool = True
) -> Container:
    clock = clock or SystemClock()
    engine = make_engine(settings.resolved_database_url)
    current, *previous = settings.peppers()
    peppers = Peppers(current, previous)
    if run_migrations:
        # (Keys stored before peppers were recorded are marked with the one pepper there is.)
        only = peppers.current_id if len(peppers.ids) == 1 else None
        migrate.ensure_current(engine, pepper_id=only)
    key_store = SqlKeyStore(engine)
    money_store = SqlMoneyStore(engine)
    tiers = TierTable.load(settings.tier_files)
    accounts = AccountService(SqlAccountStore(engine), clock)
    billing = BillingService(money_store, clock, tiers=tiers)
    # Email bodies carry single-use links (verification, reset, invitations): sealed at rest.
    sealing_keys = settings.encryption_keys()
    outbox = SqlOutbox(engine, sealer=sealing.Sealer(sealing_keys, sealing.OUTBOX))
    rate_store = SqlRateLimitStore(engine)
    access_store = SqlAccessPolicyStore(engine)
    auth_store = SqlAuthStore(engine)
    audit = AuditService(SqlAuditLog(engine), clock)
    verification = OrgVerificationService(
        SqlVerificationStore(engine), clock.now, required=settings.require_org_verification
    )
    keys = KeyService(key_store, peppers, clock)
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
    webhook_store = SqlWebhookStore(engine, sealer=sealing.Sealer(sealing_keys, sealing.WEBHOOKS))
    webhooks = Webhooks(
        webhook_store, clock, allow_private=settings.webhook_allow_private_addresses
    )

    def billing_emails(org_id: str) -> list[str]:  # (Container.billing_emails)
        return billing.billing_emails(org_id, accounts.owner_emails)

    promoter = TierPromoter(
        money_store, billing, outbox, clock, billing_emails=billing_emails,
        org_name=accounts.org_name, public_url=settings.public_url, audit=audit,
        publish=webhooks.publish,
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
            public_url=settings.public_url,
            max_age_days=settings.key_rotation_days,
        ),
        leaks=LeakResponder(
            key_store,
            peppers,
            audit,
            outbox,
            clock,
            owner_emails=accounts.owner_emails,
            org_name=accounts.org_name,
            project_name=accounts.project_name,
            public_url=settings.public_url,
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
            public_url=settings.public_url,
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
        peppers=peppers,
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
