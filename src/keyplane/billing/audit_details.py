"""What the audit log says of a billing change, in the Admin API's units and names: the Admin API,
the dashboard and the ``keyplane`` command record the same details for the same change."""

from __future__ import annotations

from typing import Any

from keyplane.audit.service import changed
from keyplane.billing.address import address_shown
from keyplane.billing.ports import BillingSettings
from keyplane.usage.pricing import MICRO_PER_CENT


def cents(micro: int | None) -> int | None:
    """Whole cents, rounded down (an amount set with the CLI may carry sub-cent parts)."""
    return None if micro is None else micro // MICRO_PER_CENT


def budget_change(before: int | None, after: int | None) -> dict[str, Any]:
    """A spend-limit change, in cents (null: no limit), as ``spend_limit.updated`` shows it."""
    return changed({"threshold_amount": cents(before)}, {"threshold_amount": cents(after)})


def settings_shown(settings: BillingSettings, usage_limit: int) -> dict[str, Any]:
    """Billing settings as the Admin API shows them (``usage_limit``: the month's effective
    one), for ``billing_settings.updated``'s before and after."""
    return {
        "mode": settings.mode.value,
        "usage_limit_micro_usd": usage_limit,
        "auto_recharge": {
            "enabled": settings.auto_recharge,
            "threshold_micro_usd": settings.recharge_threshold,
            "target_micro_usd": settings.recharge_target,
        },
        "low_balance_alert_micro_usd": settings.low_balance_alert,
    }


def preferences_shown(settings: BillingSettings) -> dict[str, Any]:
    """The billing email and address as the Admin API shows them (its ``billing_email`` and
    ``billing_address``), for ``billing_settings.updated``'s before and after."""
    return {
        "billing_email": settings.billing_email,
        "billing_address": address_shown(settings.billing_address),
    }
