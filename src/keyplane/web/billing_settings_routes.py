"""Admin API for the billing settings (a keyplane extension): billing mode, this month's usage
limit, the auto-recharge rule, the billing email and address.

Threaded and applied to the gateway as every money route is (``keyplane.web.money``).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from keyplane.audit.service import changed
from keyplane.billing.address import parse_address
from keyplane.billing.ports import BillingSettings as SettingsRecord
from keyplane.billing.wallet import BillingMode
from keyplane.web.auth import Admin, AdminServices, Ctx
from keyplane.web.authz import Audit, admin_router
from keyplane.web.errors import params_named
from keyplane.web.money import applied
from keyplane.web.schemas import (
    AutoRecharge,
    BillingAddress,
    BillingSettings,
    BillingSettingsUpdate,
)

router = admin_router()

_SETTING_PARAMS = {
    "usage_limit": "usage_limit_micro_usd",
    "recharge_threshold": "auto_recharge.threshold_micro_usd",
    "recharge_target": "auto_recharge.target_micro_usd",
    "low_balance_alert": "low_balance_alert_micro_usd",
}


def _settings(s: AdminServices, record: SettingsRecord) -> BillingSettings:
    """The settings as the API answers them (``billing_settings.updated`` records the same
    fields: ``audit_details.settings_shown``)."""
    return BillingSettings(
        mode=record.mode.value,
        usage_limit_micro_usd=s.billing.effective_usage_limit(record),
        auto_recharge=AutoRecharge(
            enabled=record.auto_recharge,
            threshold_micro_usd=record.recharge_threshold,
            target_micro_usd=record.recharge_target,
        ),
        billing_email=record.billing_email,
        billing_address=None
        if record.billing_address is None
        else BillingAddress(**asdict(record.billing_address)),
        low_balance_alert_micro_usd=record.low_balance_alert,
    )


def _changes(body: BillingSettingsUpdate) -> dict[str, Any]:
    """The service's field names for what the body sets (absent fields stay as they are)."""
    changes: dict[str, Any] = {}
    if body.mode is not None:
        changes["mode"] = BillingMode(body.mode)
    if "usage_limit_micro_usd" in body.model_fields_set:
        changes["usage_limit"] = body.usage_limit_micro_usd
    recharge = body.auto_recharge
    if recharge is not None:
        if recharge.enabled is not None:
            changes["auto_recharge"] = recharge.enabled
        if "threshold_micro_usd" in recharge.model_fields_set:
            changes["recharge_threshold"] = recharge.threshold_micro_usd
        if "target_micro_usd" in recharge.model_fields_set:
            changes["recharge_target"] = recharge.target_micro_usd
    if "billing_email" in body.model_fields_set:
        changes["billing_email"] = body.billing_email
    if "billing_address" in body.model_fields_set:
        typed = body.billing_address
        changes["billing_address"] = None if typed is None else parse_address(typed.model_dump())
    if "low_balance_alert_micro_usd" in body.model_fields_set:
        changes["low_balance_alert"] = body.low_balance_alert_micro_usd
    return changes


@router.get("/billing_settings", tags=["billing"], name="billing_settings.retrieve")
async def get_billing_settings(ctx: Ctx, caller: Admin) -> BillingSettings:
    """Billing mode, this month's usage limit, the auto-recharge rule, the billing preferences and
    the low-balance alert."""
    s = ctx.services
    return _settings(s, await asyncio.to_thread(s.billing.settings, caller.org_id))


@router.post("/billing_settings", tags=["billing"], name="billing_settings.update")
async def update_billing_settings(
    ctx: Ctx, caller: Admin, audit: Audit, body: BillingSettingsUpdate
) -> BillingSettings:
    """Changes what the body names. Auto-recharge needs a threshold of $5-$95 and a target of
    $10-$100 above it; ``usage_limit_micro_usd: null`` restores the tier's; ``billing_email`` and
    ``billing_address`` (the whole address: country, line1 and city required) ``null`` remove
    them. ``low_balance_alert_micro_usd`` ($1 to $100,000, whole cents; ``null``: off) emails the
    billing email, else the Owners, once each time the credit balance falls below it."""
    s = ctx.services

    def write() -> SettingsRecord:
        before = _settings(s, s.billing.settings(caller.org_id)).model_dump()
        with audit.atomic():
            with params_named(_SETTING_PARAMS):
                record = s.billing.update_settings(caller.org_id, **_changes(body))
            details = changed(before, _settings(s, record).model_dump())
            if details["after"]:  # (a body that changes nothing records nothing)
                audit("billing_settings.updated", details=details)
        return record

    record = await asyncio.to_thread(write)
    await applied(ctx)
    return _settings(s, record)
