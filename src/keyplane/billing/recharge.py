"""Auto-recharge (BRIEF C5): ``AutoRecharge`` works the recharge jobs the spend watcher enqueues
when an organization's balance falls below its threshold, buying credit back up to the target with
the default payment method, and tells the organization when a charge is declined (an email, a
webhook event) and when the declines turn auto-recharge off (audited too). The charge itself, its
credit, its line of the billing history and its receipt email are ``PaymentService``'s, which owns
this and runs it: a paid charge's receipt is asked for before its job is finished.

A job is leased while it is worked, so two processes never work one and a crashed one's is taken
over; its charge's idempotency key is the job's id and attempt, so a job taken over charges once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyplane.audit.models import Actor, ActorType
from keyplane.audit.service import AuditService
from keyplane.billing.declines import decline_message
from keyplane.billing.payment_ports import (
    Payment,
    PaymentMethod,
    PaymentStore,
    PurchaseBounds,
    RechargeJob,
)
from keyplane.billing.service import BillingService
from keyplane.clock import Clock
from keyplane.notify.email_html import render_html
from keyplane.notify.ports import Outbox
from keyplane.notify.webhooks import Publish
from keyplane.usage.pricing import format_usd

RECHARGE_RETRY_S = 3600  # a declined auto-recharge is tried again this much later
RECHARGE_LEASE_S = 600  # a recharge claimed by a process that died is taken over after this
SYSTEM = Actor(ActorType.SYSTEM, "auto-recharge")

# ``PaymentService._charge``: (org_id, method, amount, kind, idempotency key, actor) → its line
# of the billing history, the credit stored when it succeeded.
Charge = Callable[[str, PaymentMethod, int, str, str, Actor], Payment]


class AutoRecharge:
    def __init__(
        self,
        store: PaymentStore,
        billing: BillingService,
        clock: Clock,
        charge: Charge,
        *,
        audit: AuditService,
        outbox: Outbox,
        billing_emails: Callable[[str], Sequence[str]],
        org_name: Callable[[str], str],
        public_url: str,
        publish: Publish,
        bounds: PurchaseBounds,
        max_attempts: int,
    ) -> None:
        self._store = store
        self._billing = billing
        self._clock = clock
        self._charge = charge
        self._audit = audit
        self._outbox = outbox
        self._billing_emails = billing_emails
        self._org_name = org_name
        self._public_url = public_url.rstrip("/")
        self._publish = publish
        self._bounds = bounds
        self.max_attempts = max_attempts

    def run(self) -> int:
        """Works the due recharge jobs (the spend watcher enqueues one when the balance falls
        below the threshold): buys back up to the target with the default method. A decline is
        tried again an hour later; after ``max_attempts`` declines auto-recharge is turned off.
        The billing email (else the Owners) is emailed about each decline and the turning off.
        Returns how many jobs it finished. Blocking; raises StoreUnavailable."""
        now = int(self._clock.now())
        done = 0
        for job in self._store.claim_recharges(now, RECHARGE_LEASE_S):
            done += self._recharge(job, now)
        return done

    def _recharge(self, job: RechargeJob, now: int) -> int:
        settings = self._billing.settings(job.org_id)
        balance = self._billing.balance(job.org_id).available
        threshold = settings.recharge_threshold
        if not settings.auto_recharge or threshold is None or balance >= threshold:
            self._store.finish_recharge(job.id, "skipped", now)  # turned off, or topped up
            return 1
        amount = -(-(job.target - balance) // 10_000) * 10_000  # up to the target, whole cents
        amount = min(max(amount, self._bounds.minimum), self._bounds.maximum)
        methods = self._store.methods(job.org_id)
        if not methods:
            return self._declined(job, now, "no_payment_method", amount)
        payment = self._charge(
            job.org_id, methods[0], amount, "recharge", f"{job.id}:{job.attempts}", SYSTEM
        )
        if payment.status != "succeeded":
            return self._declined(job, now, payment.failure or "", amount)
        self._store.finish_recharge(job.id, "succeeded", now)
        if self._billing.balance(job.org_id).available < threshold:
            # Capped by the purchase maximum and still under: the next one a minute later, whether
            # or not requests come to notice (they may all be refused meanwhile).
            self._billing.request_recharge(job.org_id, job.target, due_at=now + 60)
        return 1

    def _declined(self, job: RechargeJob, now: int, code: str, amount: int) -> int:
        attempts = job.attempts + 1
        last = attempts >= self.max_attempts
        reason = (
            "there is no payment method to charge"
            if code == "no_payment_method"
            else _uncapitalized(decline_message(code).rstrip("."))
        )
        if last:
            with self._audit.atomic():
                self._billing.update_settings(job.org_id, auto_recharge=False)
                self._store.finish_recharge(job.id, "failed", now)
                self._audit.record(
                    job.org_id, SYSTEM, "billing.auto_recharge_disabled", target_id=job.org_id,
                    details={"reason": f"{attempts} failed attempts: {reason}"},
                )  # fmt: skip
        else:
            self._store.retry_recharge(job.id, now + RECHARGE_RETRY_S)
        self._publish(
            job.org_id,
            "billing.auto_recharge_disabled" if last else "billing.auto_recharge_failed",
            {"amount_micro_usd": amount, "failure_code": code, "attempts": attempts,
             "next_attempt_at": None if last else now + RECHARGE_RETRY_S},
            f"recharge:{job.id}:{attempts}",
        )  # fmt: skip
        recipients = list(self._billing_emails(job.org_id))
        if recipients:
            name = self._org_name(job.org_id)
            subject = (
                f"[keyplane] Auto-recharge for {name} is turned off: the payment failed"
                if last
                else f"[keyplane] Auto-recharge for {name} failed: {reason}"
            )
            then = (
                f"After {attempts} failed attempts, auto-recharge is now turned off. Requests "
                "stop when the credit balance runs out. Update the payment method and buy "
                "credits, or turn auto-recharge on again, in Billing."
                if last
                else "keyplane tries again in an hour. Update the payment method in Billing "
                "to avoid running out of credits."
            )
            # The links open the organization's Billing pages, whichever one its reader was in.
            methods_url = f"{self._public_url}/billing/payment-methods?org={job.org_id}"
            recharge_url = f"{self._public_url}/billing?org={job.org_id}#auto-recharge"
            fix = (
                "Add a payment method"
                if code == "no_payment_method"
                else "Update the payment method"
            )
            body = (
                f"Auto-recharge tried to buy ${format_usd(amount)} of credits for {name} and failed: "
                f"{reason}.\n\n{then}\n\n{fix}: {methods_url}\n"
                + (f"Turn auto-recharge on again: {recharge_url}\n" if last else "")
            )
            page = render_html(
                "recharge_failed.html", subject=subject, org=name, amount=f"${format_usd(amount)}",
                failure=reason, then=then, turned_off=last, fix=fix, methods_url=methods_url,
                recharge_url=recharge_url,
            )  # fmt: skip
            self._outbox.enqueue(
                f"recharge:{job.id}:{attempts}", recipients, subject, body, page, now=now
            )
        return int(last)


def _uncapitalized(sentence: str) -> str:
    """A sentence to follow a colon: its first letter only lowered ("3-D Secure" stays)."""
    return sentence[:1].lower() + sentence[1:]
