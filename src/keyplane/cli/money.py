"""Money commands: credits, budgets, notification thresholds, billing settings."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keyplane import bootstrap
from keyplane.audit.service import changed
from keyplane.billing.audit_details import budget_change, cents, settings_shown
from keyplane.billing.ports import SpendAlert
from keyplane.billing.wallet import BillingMode, Lot
from keyplane.cli.common import (
    Col,
    JsonOpt,
    OrgOpt,
    audit,
    fail,
    iso,
    out,
    parse_duration,
    parse_usd,
    print_table,
    recorded,
    scope,
    usd,
)
from keyplane.errors import KeyplaneError

money_app = typer.Typer(help="Prepaid credit: grant, show, revoke.", no_args_is_help=True)
budget_app = typer.Typer(
    help="Monthly budgets (hard: requests over them get 429).", no_args_is_help=True
)
alerts_app = typer.Typer(
    help="Notification thresholds (an email to the Owners once a month).", no_args_is_help=True
)
billing_app = typer.Typer(help="Billing mode, usage limit, auto-recharge.", no_args_is_help=True)

ProjectOpt = Annotated[
    str | None, typer.Option("--project", help="A project (default: the organization).")
]


@money_app.command("grant")
def credits_grant(
    amount: Annotated[str, typer.Option(help="Dollars, e.g. 10.00.")],
    expires_in: Annotated[str, typer.Option(help="Lifetime such as 365d or 90d.")] = "365d",
    note: Annotated[str, typer.Option(help="Why (shown in billing history).")] = "",
    idempotency_key: Annotated[
        str | None, typer.Option(help="Replays return the first grant.")
    ] = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant credit to an organization (a lot with its own expiry)."""
    c, org_id, _ = scope(org, None)
    with recorded(c):  # (the Idempotency-Key's claim, the lot and its entry)
        lot = c.billing.grant(
            org_id, parse_usd(amount), expires_in_s=parse_duration(expires_in), note=note,
            idempotency_key=idempotency_key, on_created=lambda lot: granted(c, org_id, lot, note),
        )  # fmt: skip
    if as_json:
        out.print_json(
            json.dumps({"id": lot.id, "amount_micro_usd": lot.amount, "expires_at": lot.expires_at})
        )
        return
    out.print(f"Granted ${usd(lot.amount)} ({lot.id}), expires {iso(lot.expires_at)}.")


def granted(c: bootstrap.Container, org_id: str, lot: Lot, note: str) -> None:
    """Audits a new grant (once: not when an idempotency key replays it), as the Admin API does."""
    data = {"amount_micro_usd": lot.amount, "expires_at": lot.expires_at, "note": note}
    audit(c, org_id, "credit_grant.created", target_id=lot.id, details={"data": data})


def _purchased(c: bootstrap.Container, org_id: str, lot: Lot) -> None:
    """Audits a purchase paid outside keyplane as the Admin API audits one it charged: no
    payment method, and the lot (there is no charge) as its target."""
    data = {"amount_micro_usd": lot.amount, "status": "succeeded", "failure_code": None,
            "payment_method": None}  # fmt: skip
    audit(c, org_id, "credit_purchase.created", target_id=lot.id, details={"data": data})


@money_app.command("purchase")
def credits_purchase(
    amount: Annotated[str, typer.Option(help="Dollars paid, e.g. 50.00.")],
    idempotency_key: Annotated[
        str | None, typer.Option(help="Replays return the first purchase.")
    ] = None,
    org: OrgOpt = None,
) -> None:
    """Record a payment received outside keyplane (an invoice paid by transfer): non-refundable
    credit expiring in a year, counted toward usage-tier promotion."""
    c, org_id, _ = scope(org, None)
    with recorded(c):
        lot = c.billing.record_purchase(
            org_id, parse_usd(amount), idempotency_key=idempotency_key,
            on_created=lambda lot: _purchased(c, org_id, lot),
        )  # fmt: skip
    try:
        promoted = c.promoter.check(org_id)
    except KeyplaneError as exc:
        fail(exc.message)
    out.print(
        f"Recorded a purchase of ${usd(lot.amount)} ({lot.id}), expires {iso(lot.expires_at)}."
    )
    if promoted is not None:
        out.print(f"The organization moved up to {promoted.name}.")


@money_app.command("revoke")
def credits_revoke(
    lot_id: Annotated[str, typer.Argument(help="The grant's id (cg_…).")], org: OrgOpt = None
) -> None:
    """Revoke a grant: what is left of it stops counting (purchases cannot be revoked)."""
    c, org_id, _ = scope(org, None)
    with recorded(c):
        returned = c.billing.revoke_grant(org_id, lot_id)
        taken = {"remaining_micro_usd": returned}
        audit(c, org_id, "credit_grant.revoked", target_id=lot_id, details={"data": taken})
    out.print(f"Revoked {lot_id}; ${usd(returned)} unspent was removed from the balance.")


@money_app.command("show")
def credits_show(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Balance, holds, spend and every lot with what remains in it."""
    c, org_id, _ = scope(org, None)
    balance = c.billing.balance(org_id)
    lots = [
        {
            "id": lot.id, "kind": lot.kind, "amount_micro_usd": lot.amount, "remaining_micro_usd": lot.remaining,
            "created_at": lot.created_at, "expires_at": lot.expires_at, "revoked": lot.revoked, "note": note,
        }
        for lot, note in balance.lots
    ]  # fmt: skip
    if as_json:
        payload = {
            "available_micro_usd": balance.available,
            "held_micro_usd": balance.held,
            "spent_micro_usd": balance.spent,
            "lots": lots,
        }
        out.print_json(json.dumps(payload))
        return
    out.print(
        f"Available ${usd(balance.available)}   held ${usd(balance.held)}   spent ${usd(balance.spent)}"
    )
    columns = (
        Col("lot", 0), Col("kind", 3), Col("amount $", 4), Col("remaining $", 1), Col("expires", 2),
        Col("note", 5, wraps=True),
    )  # fmt: skip
    rows = [
        (
            str(lot["id"]) + (" (revoked)" if lot["revoked"] else ""),
            str(lot["kind"]),
            usd(int(str(lot["amount_micro_usd"]))),
            usd(int(str(lot["remaining_micro_usd"]))),
            iso(lot["expires_at"]),  # type: ignore[arg-type]
            str(lot["note"]),
        )
        for lot in lots
    ]
    print_table(columns, rows)


@budget_app.command("set")
def budget_set(
    amount: Annotated[str, typer.Option(help="Dollars per calendar month (UTC).")],
    project: ProjectOpt = None,
    org: OrgOpt = None,
) -> None:
    """Set the monthly budget of the organization or one project."""
    c, org_id, project_id = scope(org, project)
    budget = parse_usd(amount, cents=True)
    _set_budget(c, org_id, project_id, budget)
    out.print(f"Monthly budget of {project or 'the organization'}: ${usd(budget)}.")


@budget_app.command("clear")
def budget_clear(project: ProjectOpt = None, org: OrgOpt = None) -> None:
    """Remove the monthly budget."""
    c, org_id, project_id = scope(org, project)
    _set_budget(c, org_id, project_id, None)
    out.print(f"No monthly budget for {project or 'the organization'}.")


def _set_budget(
    c: bootstrap.Container, org_id: str, project_id: str | None, budget: int | None
) -> None:
    """Sets the organization's or a project's budget and audits it as the Admin API does."""
    with recorded(c):
        if project_id:
            before = c.billing.project_budget(project_id)
            c.billing.set_project_budget(org_id, project_id, budget)
        else:
            before = c.billing.settings(org_id).budget
            c.billing.update_settings(org_id, budget=budget)
        audit(c, org_id, "spend_limit.updated", target_id=project_id, project_id=project_id,
              details=budget_change(before, budget))  # fmt: skip


@alerts_app.command("add")
def alerts_add(
    amount: Annotated[
        str, typer.Option(help="Dollars of spend in a month that triggers the email.")
    ],
    to: Annotated[
        list[str] | None, typer.Option("--to", help="Recipients (default: the Owners).")
    ] = None,
    project: ProjectOpt = None,
    org: OrgOpt = None,
) -> None:
    """Add a notification threshold."""
    c, org_id, project_id = scope(org, project)
    threshold = parse_usd(amount, cents=True)
    with recorded(c):
        alert = c.billing.add_alert(org_id, threshold, project_id=project_id, recipients=to)
        recipients = list(alert.recipients or c.billing_emails(org_id))
        data = {"threshold_amount": cents(alert.threshold),
                "notification_channel": {"type": "email", "recipients": recipients}}  # fmt: skip
        audit(c, org_id, "spend_alert.created", target_id=alert.id, project_id=project_id,
              details={"data": data})  # fmt: skip
    out.print(f"Added {alert.id}: email when monthly spend reaches ${usd(alert.threshold)}.")


@alerts_app.command("list")
def alerts_list(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """List notification thresholds."""
    c, org_id, _ = scope(org, None)
    alerts = c.billing.alerts(org_id)
    if as_json:
        rows = [
            {
                "id": a.id,
                "project_id": a.project_id,
                "threshold_micro_usd": a.threshold,
                "recipients": a.recipients,
            }
            for a in alerts
        ]
        out.print_json(json.dumps(rows))
        return
    columns = (
        Col("id", 0),
        Col("scope", 2),
        Col("threshold $", 1),
        Col("recipients", 3, wraps=True),
    )
    cells = [
        (
            a.id,
            c.accounts.project_name(org_id, a.project_id) if a.project_id else "organization",
            usd(a.threshold),
            ", ".join(a.recipients or ["Owners"]),
        )
        for a in alerts
    ]
    print_table(columns, cells)


@alerts_app.command("remove")
def alerts_remove(alert_id: str, org: OrgOpt = None) -> None:
    """Remove a notification threshold."""
    c, org_id, _ = scope(org, None)
    found: SpendAlert | None = next((a for a in c.billing.alerts(org_id) if a.id == alert_id), None)
    with recorded(c):
        c.billing.delete_alert(org_id, alert_id)
        if found is not None:
            data = {"threshold_amount": cents(found.threshold)}
            audit(c, org_id, "spend_alert.deleted", target_id=alert_id,
                  project_id=found.project_id, details={"data": data})  # fmt: skip
    out.print(f"Removed {alert_id}.")


@billing_app.command("show")
def billing_show(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Billing mode, usage limit, budget, auto-recharge and the low-balance alert."""
    c, org_id, _ = scope(org, None)
    s = c.billing.settings(org_id)
    limit = c.billing.effective_usage_limit(s)
    payload = {
        "mode": s.mode.value, "usage_limit_micro_usd": limit,
        "usage_limit_from": "tier" if s.usage_limit is None else "set", "budget_micro_usd": s.budget,
        "auto_recharge": s.auto_recharge, "recharge_threshold_micro_usd": s.recharge_threshold,
        "recharge_target_micro_usd": s.recharge_target,
        "low_balance_alert_micro_usd": s.low_balance_alert,
    }  # fmt: skip
    if as_json:
        out.print_json(json.dumps(payload))
        return
    for name, value in payload.items():
        shown = usd(value) if isinstance(value, int) and not isinstance(value, bool) else value
        out.print(f"{name.replace('_micro_usd', '')}: {shown}")


@billing_app.command("set")
def billing_set(
    mode: Annotated[
        BillingMode | None, typer.Option(help="prepaid (needs credit) or postpaid.")
    ] = None,
    usage_limit: Annotated[
        str | None,
        typer.Option(help="Dollars per month, instead of the tier's; 'tier' goes back to it."),
    ] = None,
    auto_recharge: Annotated[
        bool | None, typer.Option("--auto-recharge/--no-auto-recharge")
    ] = None,
    recharge_threshold: Annotated[
        str | None, typer.Option(help="Recharge when credit falls below ($5-$95).")
    ] = None,
    recharge_target: Annotated[
        str | None, typer.Option(help="Bring credit back up to ($10-$100).")
    ] = None,
    low_balance_alert: Annotated[
        str | None,
        typer.Option(help="Email when credit falls below ($1-$100,000); 'off' turns it off."),
    ] = None,
    org: OrgOpt = None,
) -> None:
    """Change billing settings."""
    c, org_id, _ = scope(org, None)
    changes: dict[str, object] = {}
    if mode is not None:
        changes["mode"] = mode
    if usage_limit is not None:
        changes["usage_limit"] = None if usage_limit == "tier" else parse_usd(usage_limit)
    if auto_recharge is not None:
        changes["auto_recharge"] = auto_recharge
    if recharge_threshold is not None:
        changes["recharge_threshold"] = parse_usd(recharge_threshold)
    if recharge_target is not None:
        changes["recharge_target"] = parse_usd(recharge_target)
    if low_balance_alert is not None:
        changes["low_balance_alert"] = (
            None if low_balance_alert == "off" else parse_usd(low_balance_alert)
        )
    with recorded(c):
        before = c.billing.settings(org_id)
        after = c.billing.update_settings(org_id, **changes)
        shown = [settings_shown(s, c.billing.effective_usage_limit(s)) for s in (before, after)]
        audit(c, org_id, "billing_settings.updated", details=changed(*shown))
    out.print("Billing settings saved.")
