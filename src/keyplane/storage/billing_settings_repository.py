"""An organization's billing settings, project budgets and spend alerts (part of
SqlMoneyStore)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, insert, select, update

from keyplane.billing.address import address_from_json, address_json
from keyplane.billing.ports import BillingSettings, SpendAlert
from keyplane.billing.wallet import BillingMode
from keyplane.storage.billing_tables import org_billing, project_budgets, spend_alerts
from keyplane.storage.ledger_repository import record_event
from keyplane.storage.store import SqlStore


def settings_of(row: Any) -> BillingSettings:
    return BillingSettings(
        org_id=row.org_id,
        mode=BillingMode(row.mode),
        usage_limit=row.usage_limit_micro,
        budget=row.budget_micro,
        auto_recharge=row.auto_recharge,
        recharge_threshold=row.recharge_threshold_micro,
        recharge_target=row.recharge_target_micro,
        tier=row.tier,
        billing_email=row.billing_email,
        billing_address=address_from_json(row.billing_address),
        low_balance_alert=row.low_balance_alert_micro,
    )


class SqlBillingSettings(SqlStore):
    def settings(self, org_id: str) -> BillingSettings | None:
        row = self._read(
            lambda c: c.execute(select(org_billing).where(org_billing.c.org_id == org_id)).first()
        )
        return settings_of(row) if row else None

    def save_settings(self, s: BillingSettings, at: int) -> None:
        values = {
            "mode": s.mode.value, "usage_limit_micro": s.usage_limit, "budget_micro": s.budget,
            "auto_recharge": s.auto_recharge, "recharge_threshold_micro": s.recharge_threshold,
            "recharge_target_micro": s.recharge_target, "updated_at": at, "tier": s.tier,
            "billing_email": s.billing_email, "billing_address": address_json(s.billing_address),
            "low_balance_alert_micro": s.low_balance_alert,
        }  # fmt: skip
        with self._write() as conn:
            if not conn.execute(
                update(org_billing).where(org_billing.c.org_id == s.org_id).values(**values)
            ).rowcount:
                conn.execute(insert(org_billing).values(org_id=s.org_id, **values))
            record_event(conn, s.org_id, "settings", None, at)

    def low_balance_arming(self, org_id: str) -> str | None:
        return self._read(
            lambda c: c.execute(
                select(org_billing.c.low_balance_armed).where(org_billing.c.org_id == org_id)
            ).scalar()
        )

    def arm_low_balance(self, org_id: str, arming: str, *, replace: bool = False) -> bool:
        which = org_billing.c.org_id == org_id
        if not replace:  # (a compare-and-set: one of two processes arming at once does)
            which = and_(which, org_billing.c.low_balance_armed.is_(None))
        with self._write() as conn:
            changed = conn.execute(
                update(org_billing).where(which).values(low_balance_armed=arming)
            ).rowcount
        return bool(changed)

    def disarm_low_balance(self, org_id: str, arming: str) -> bool:
        with self._write() as conn:
            changed = conn.execute(
                update(org_billing)
                .where(org_billing.c.org_id == org_id, org_billing.c.low_balance_armed == arming)
                .values(low_balance_armed=None)
            ).rowcount
        return bool(changed)

    def project_budget(self, project_id: str) -> int | None:
        return self._read(
            lambda c: c.execute(
                select(project_budgets.c.budget_micro).where(
                    project_budgets.c.project_id == project_id
                )
            ).scalar()
        )

    def save_project_budget(
        self, org_id: str, project_id: str, amount: int | None, at: int
    ) -> None:
        with self._write() as conn:
            conn.execute(delete(project_budgets).where(project_budgets.c.project_id == project_id))
            if amount is not None:
                conn.execute(
                    insert(project_budgets).values(
                        project_id=project_id, org_id=org_id, budget_micro=amount, updated_at=at
                    )
                )
            record_event(conn, org_id, "settings", project_id, at)

    def alerts(self, org_id: str) -> Sequence[SpendAlert]:
        rows = self._read(
            lambda c: c.execute(
                select(spend_alerts)
                .where(spend_alerts.c.org_id == org_id)
                .order_by(spend_alerts.c.created_at, spend_alerts.c.id)
            ).all()
        )
        return [
            SpendAlert(
                r.id,
                r.org_id,
                r.project_id,
                r.threshold_micro,
                tuple(json.loads(r.recipients)) if r.recipients else None,
                r.created_at,
            )
            for r in rows
        ]

    def add_alert(self, alert: SpendAlert) -> None:
        with self._write() as conn:
            conn.execute(
                insert(spend_alerts).values(
                    id=alert.id, org_id=alert.org_id, project_id=alert.project_id,
                    threshold_micro=alert.threshold, created_at=alert.created_at,
                    recipients=json.dumps(list(alert.recipients)) if alert.recipients else None,
                )
            )  # fmt: skip

    def delete_alert(self, org_id: str, alert_id: str) -> bool:
        with self._write() as conn:
            return bool(
                conn.execute(
                    delete(spend_alerts).where(
                        and_(spend_alerts.c.id == alert_id, spend_alerts.c.org_id == org_id)
                    )
                ).rowcount
            )
