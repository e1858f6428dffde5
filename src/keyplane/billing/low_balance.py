"""The low-balance alert (BRIEF C5, C6): "Email me when my credit balance falls below $X", as payment
platforms offer it. Without it an organization with auto-recharge off hears nothing until every
request is refused with ``insufficient_quota``. Off by default; an Owner sets it in Billing or
through the Admin API's billing settings; the spend watcher checks it after each settlement batch.

**The balance compared is the settled one**: what the live credit lots still hold
(``OrgMoney.balance``, as auto-recharge compares its threshold), not less the holds of requests in
flight. A hold is a request's worst case (its whole ``max_tokens``), usually many times what it
costs, released within seconds: counting holds would email about a burst of concurrent requests
whose balance is nowhere near low, and a balance dipping under and back over the threshold with
each burst would make "once per crossing" a matter of timing.

**Exactly once per crossing** comes from storage. The alert is *armed* with an id
(``org_billing.low_balance_armed``) when its threshold is set, and again whenever the balance is
seen back at or above it: by ``BillingService`` as a purchase or a grant is stored, and by this
check. A check finding the balance under the threshold while armed asks for the email and the
webhook event under the dedupe key ``low_balance:<arming>`` and then disarms it, a compare-and-set
whose one winner records the audit entry in the same transaction. A process dying in between
leaves the alert armed with the same id: the next check asks for the same email, and the outbox
keeps one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keyplane.audit.models import Actor, ActorType
from keyplane.audit.service import AuditService
from keyplane.billing.ports import MoneyStore
from keyplane.billing.service import ARMING_PREFIX
from keyplane.billing.wallet import OrgMoney
from keyplane.ids import new_id
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish
from keyplane.usage.pricing import format_cents, format_usd

SYSTEM = Actor(ActorType.SYSTEM, "low-balance alert")
EVENT = "billing.low_balance"  # the webhook event and the audit log's event type


@dataclass(frozen=True, slots=True)
class Standing:
    """An organization's balance against its alert, as one check sees it."""

    threshold: int
    balance: int  # settled: the live lots' remaining credit
    auto_recharge: bool
    lots: int  # how many lots the gateway's books hold (-1: read from the database)


class LowBalanceAlerts:
    def __init__(
        self,
        store: MoneyStore,
        outbox: Outbox,
        *,
        billing_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        public_url: str,
        publish: Publish,
        audit: AuditService | None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._billing_emails = billing_emails
        self._org_name = org_name
        self._public_url = public_url
        self._publish = publish
        self._audit = audit
        # What this process last read of each alert: (threshold, lots, arming). While neither the
        # threshold nor the lots changed, an alert armed above the threshold, or disarmed below
        # it, has nothing to do: no database read at every settlement batch. Credit added (the
        # only thing that arms it elsewhere) is a new lot, which the gateway's books get too.
        self._seen: dict[str, tuple[int, int, str | None]] = {}

    def standing(self, org_id: str, money: OrgMoney | None, now: float) -> Standing | None:
        """The organization's balance against its alert, from the gateway's own books when it has
        them; None when the alert is off."""
        if money is not None:
            if money.low_balance_alert is None:
                self._seen.pop(org_id, None)
                return None
            return Standing(
                money.low_balance_alert, money.balance(now), money.auto_recharge, len(money.lots)
            )
        settings = self._store.settings(org_id)
        if settings is None or settings.low_balance_alert is None:
            return None
        balance = sum(lot.remaining for lot, _ in self._store.lots(org_id) if lot.counts(now))
        return Standing(settings.low_balance_alert, balance, settings.auto_recharge, -1)

    def check(self, org_id: str, money: OrgMoney | None, now: float) -> int:
        """Emails the billing recipients if the balance fell under the alert's threshold since it
        was armed (and sends the webhook event, and audits it); returns how many emails it queued.

        Blocking (database I/O). Raises StoreUnavailable."""
        standing = self.standing(org_id, money, now)
        if standing is None:
            return 0
        below = standing.balance < standing.threshold
        seen = self._seen.get(org_id)
        if (
            seen is not None
            and standing.lots >= 0
            and seen[:2] == (standing.threshold, standing.lots)
            and (seen[2] is None) == below
        ):
            return 0
        arming = self._store.low_balance_arming(org_id)
        queued = 0
        if not below and arming is None:  # back at or above the threshold: the next fall counts
            fresh = new_id(ARMING_PREFIX)
            arming = fresh if self._store.arm_low_balance(org_id, fresh) else None
        elif below and arming is not None:
            queued = self._alert(org_id, standing, arming, now)
            arming = None
        self._seen[org_id] = (standing.threshold, standing.lots, arming)
        return queued

    def _alert(self, org_id: str, standing: Standing, arming: str, now: float) -> int:
        dedupe = f"low_balance:{arming}"
        data = {"balance_micro_usd": standing.balance, "threshold_micro_usd": standing.threshold}
        self._publish(org_id, EVENT, data, dedupe)
        queued = 0
        recipients = list(self._billing_emails(org_id))
        if recipients:
            name = self._org_name(org_id)
            balance, threshold = (
                "$" + format_cents(standing.balance),
                "$" + format_usd(standing.threshold),
            )
            subject = f"[keyplane] The credit balance of {name} is below {threshold}"
            text, page = self._bodies(
                org_id, name, balance, threshold, standing.auto_recharge, subject
            )
            queued = int(self._outbox.enqueue(dedupe, recipients, subject, text, page, now=now))
        if self._audit is None:
            self._store.disarm_low_balance(org_id, arming)
            return queued
        with self._audit.atomic():
            if self._store.disarm_low_balance(org_id, arming):
                self._audit.record(org_id, SYSTEM, EVENT, target_id=org_id, details={"data": data})
        return queued

    def _bodies(
        self, org_id: str, name: str, balance: str, threshold: str, auto_recharge: bool,
        subject: str,
    ) -> tuple[str, str]:  # fmt: skip
        """The email as plain text and as HTML, saying the same (its links open ``org_id`` in the
        dashboard, whichever organization its reader was in)."""
        base = self._public_url.rstrip("/")
        purchase = f"{base}/billing/purchase?org={org_id}"
        alert = f"{base}/billing?org={org_id}#low-balance-alert"
        then = (
            "Auto recharge is on: it buys credit when the balance falls below its own threshold."
            if auto_recharge
            else "When it runs out, requests are refused (429 insufficient_quota) until credit "
            "is added. Auto recharge, in Billing, can buy credit for you when it runs low."
        )
        why = (
            f"You asked to be emailed when it falls below {threshold}. This email is sent once "
            f"each time it does: the next one after credit brings it back to {threshold} or more."
        )
        change = "To change the amount or turn this alert off"
        text = (
            f"The credit balance of {name} is {balance}, below {threshold}.\n\n{then}\n\n"
            f"Add to your credit balance: {purchase}\n\n{why}\n"
            f"{change}: {alert}\n"
        )
        page = render_html(
            "low_balance.html", subject=subject, org=name, balance=balance, threshold=threshold,
            then=then, why=why, change=change, purchase_url=purchase, alert_url=alert,
        )  # fmt: skip
        return text, page
