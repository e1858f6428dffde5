"""Automatic usage-tier promotion (BRIEF C6): as soon as an organization meets the next tier's
criteria (amount paid and days since its first successful payment) it moves up — checked when a
payment settles and by a periodic job — and its Owners get one email. It never moves down.

The amount paid is net of refunds and disputes (open or lost): credit bought and then refunded
would otherwise buy a tier. As tiers never move down, a refund after a promotion keeps the tier;
what it lowers is the amount counted toward the next one."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyplane.audit.models import Actor, ActorType
from keyplane.audit.service import AuditService
from keyplane.billing.ports import MoneyStore
from keyplane.billing.service import BillingService
from keyplane.clock import Clock
from keyplane.limits.tiers import Tier, TierProgress, TierTable
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish, publish_nowhere

SYSTEM = Actor(ActorType.SYSTEM, "keyplane")


class TierPromoter:
    def __init__(
        self,
        store: MoneyStore,
        billing: BillingService,
        outbox: Outbox,
        clock: Clock,
        *,
        billing_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        public_url: str,
        audit: AuditService | None = None,
        publish: Publish = publish_nowhere,
    ) -> None:
        self._audit = audit
        self._publish = publish
        self._store = store
        self._billing = billing
        self._outbox = outbox
        self._clock = clock
        self._billing_emails = billing_emails
        self._org_name = org_name
        self._public_url = public_url.rstrip("/")

    @property
    def tiers(self) -> TierTable:
        return self._billing.tiers

    def current(self, org_id: str) -> Tier:
        tier_id = self._billing.settings(org_id).tier
        try:
            return self.tiers.get(tier_id) if tier_id else self.tiers.lowest
        except KeyError:
            return self.tiers.lowest

    def progress(self, org_id: str) -> TierProgress:
        paid = self._store.payments(org_id)
        return self.tiers.progress(
            self.current(org_id), paid.net, paid.first_at, self._clock.now(),
            reversed_micro_usd=paid.reversed,
        )  # fmt: skip

    def check(self, org_id: str) -> Tier | None:
        """Promotes the organization if it qualifies for a higher tier; returns the new tier.

        Blocking (database I/O). Raises StoreUnavailable."""
        current = self.current(org_id)
        paid = self._store.payments(org_id)
        now = self._clock.now()
        qualified = self.tiers.tier_for(paid.net, paid.first_at, now, current=current)
        if qualified.rank <= current.rank:
            return None
        if self._audit is None:
            self._billing.update_settings(org_id, tier=qualified.id)
        else:
            with self._audit.atomic():
                self._billing.update_settings(org_id, tier=qualified.id)
                self._audit.record(
                    org_id, SYSTEM, "organization.tier_promoted", target_id=org_id,
                    details={"before": {"tier": current.id}, "after": {"tier": qualified.id}},
                )  # fmt: skip
        self._publish(
            org_id, "organization.tier_promoted",
            {"tier": qualified.id, "previous_tier": current.id,
             "monthly_usage_limit_micro_usd": qualified.monthly_usage_limit_micro_usd},
            f"tier:{org_id}:{qualified.id}",
        )  # fmt: skip
        recipients = list(self._billing_emails(org_id))
        if recipients:
            limit = qualified.monthly_usage_limit_micro_usd // 1_000_000
            name = self._org_name(org_id)
            subject = f"[keyplane] {name} moved up to {qualified.name}"
            limits_url = f"{self._public_url}/limits?org={org_id}"  # (whichever org it was in)
            self._outbox.enqueue(
                f"tier:{org_id}:{qualified.id}",
                recipients,
                subject,
                f"Your organization {name} now is in {qualified.name}: higher rate "
                f"limits and a monthly usage limit of ${limit:,}.\n\n"
                f"See your limits: {limits_url}\n",
                render_html(
                    "tier_promoted.html", subject=subject, org=name, tier=qualified.name,
                    limit=f"${limit:,}", limits_url=limits_url,
                ),
                now=now,
            )  # fmt: skip
        return qualified

    def check_all(self) -> int:
        """The periodic job: checks every organization that has paid; returns how many moved up."""
        return sum(
            self.check(org_id) is not None for org_id in self._store.organizations_with_payments()
        )
