"""SQL implementation of the MoneyStore port: SqlMoneyStore, one class over its parts (one
module each: holds and settlement, lots and the ledger, settings, at-most-once writes), and
``load``, which reads all of them into the gateway's view of an organization."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, select

from keyplane.billing.ports import BillingSettings
from keyplane.billing.wallet import BillingMode, OrgMoney
from keyplane.storage.billing_settings_repository import SqlBillingSettings, settings_of
from keyplane.storage.billing_tables import credit_lots, holds, org_billing, project_budgets
from keyplane.storage.hold_repository import SqlHolds, hold_of
from keyplane.storage.idempotency_repository import SqlIdempotency
from keyplane.storage.ledger_repository import SqlLedger, lot_of, lot_rows, month_spend_rows


class SqlMoneyStore(SqlHolds, SqlLedger, SqlBillingSettings, SqlIdempotency):
    def load(
        self, org_id: str, period: str, usage_limit_for: Callable[[str | None], int]
    ) -> OrgMoney:
        def read(c: Connection) -> OrgMoney:
            row = c.execute(select(org_billing).where(org_billing.c.org_id == org_id)).first()
            s = (
                settings_of(row)
                if row
                else BillingSettings(org_id, BillingMode.PREPAID, None, None)
            )
            money = OrgMoney(
                org_id=org_id,
                mode=s.mode,
                usage_limit=usage_limit_for(s.tier) if s.usage_limit is None else s.usage_limit,
                budget=s.budget,
                auto_recharge=s.auto_recharge,
                recharge_threshold=s.recharge_threshold,
                recharge_target=s.recharge_target,
                low_balance_alert=s.low_balance_alert,
                tier=s.tier,
            )
            for pid, amount in c.execute(
                select(project_budgets.c.project_id, project_budgets.c.budget_micro).where(
                    project_budgets.c.org_id == org_id
                )
            ):
                money.project_budgets[pid] = amount
            for lot in c.execute(lot_rows(org_id).where(credit_lots.c.revoked_at.is_(None))):
                money.add_lot(lot_of(lot))
            for h in c.execute(
                select(holds).where(holds.c.org_id == org_id, holds.c.status == "open")
            ):
                money.restore_hold(hold_of(h))
            for pid, amount in month_spend_rows(c, org_id, period):
                money.spent[period] = money.spent.get(period, 0) + amount
                money.project_spent[(pid, period)] = amount
            return money

        return self._read(read)
