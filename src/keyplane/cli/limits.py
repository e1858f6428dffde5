"""Usage tier and rate-limit commands."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from keyplane.cli.common import (
    Col,
    JsonOpt,
    OrgOpt,
    audit,
    bold,
    container,
    fail,
    iso,
    out,
    print_table,
    recorded,
    styled,
    usd,
)
from keyplane.errors import KeyplaneError
from keyplane.limits.ratelimit import MAX_LIMIT, MAX_TOKEN_LIMIT, ModelLimits

tier_app = typer.Typer(
    help="The organization's usage tier and progress to the next.", no_args_is_help=True
)
ratelimits_app = typer.Typer(
    help="Per-model rate limits of a project (can only be lowered).", no_args_is_help=True
)

Rpm = Annotated[
    int | None, typer.Option("--rpm", min=1, max=MAX_LIMIT, help="Requests per minute.")
]
Tpm = Annotated[
    int | None, typer.Option("--tpm", min=1, max=MAX_TOKEN_LIMIT, help="Tokens per minute.")
]
Rpd = Annotated[int | None, typer.Option("--rpd", min=1, max=MAX_LIMIT, help="Requests per day.")]


@tier_app.command("show")
def tier_show(org: OrgOpt = None, as_json: JsonOpt = False) -> None:
    """Current tier, its monthly usage limit, and what the next tier needs."""
    c = container()
    try:
        org_id = c.accounts.find_organization(org).id
    except KeyplaneError as exc:
        fail(exc.message)
    c.promoter.check(org_id)
    p = c.promoter.progress(org_id)
    payload = {
        "tier": p.current.id, "name": p.current.name,
        "monthly_usage_limit_micro_usd": p.current.monthly_usage_limit_micro_usd,
        "next": None if p.next is None else {
            "tier": p.next.id, "name": p.next.name,
            "paid_micro_usd": p.paid.paid_micro_usd if p.paid else None,
            "paid_reversed_micro_usd": p.paid.reversed_micro_usd if p.paid else None,
            "paid_needed_micro_usd": p.next.paid_micro_usd,
            "days_passed": p.days.passed if p.days else None, "days_needed": p.next.days,
            "days_met_at": p.days.met_at if p.days else None,
        },
    }  # fmt: skip
    if as_json:
        out.print_json(json.dumps(payload))
        return
    limit = usd(p.current.monthly_usage_limit_micro_usd)
    out.print(styled("Usage tier: ", bold(p.current.name), f" (monthly usage limit ${limit})"))
    own = c.billing.settings(org_id).usage_limit
    if own is not None:
        out.print(
            f"This organization's usage limit is set to ${usd(own)} instead "
            "(keyplane billing set --usage-limit tier goes back to the tier's)."
        )
    if p.next is None or p.paid is None or p.days is None:
        out.print("This is the highest tier.")
        return
    out.print(f"Once the following criteria are met, you'll automatically move to {p.next.name}:")
    mark = {True: ("✓", "green"), False: ("[ ]", "")}
    paid, so_far = usd(p.next.paid_micro_usd), usd(p.paid.paid_micro_usd)
    if p.paid.reversed_micro_usd > 0:  # (refunded or disputed: not counted)
        so_far += f", refunds and disputes of ${usd(p.paid.reversed_micro_usd)} not counted"
    out.print(styled("  ", mark[p.paid.met], f" At least ${paid} paid (so far ${so_far})"))
    when = f", on {iso(int(p.days.met_at))}" if p.days.met_at and not p.days.met else ""
    days = f" At least {p.next.days} days since the first successful payment{when}"
    out.print(styled("  ", mark[p.days.met], days))


def _limits_row(limits: ModelLimits) -> list[str]:
    return [
        str(v) if v is not None else "-"
        for v in (
            limits.rpm,
            limits.tpm,
            limits.rpd,
            limits.images_per_min,
            limits.audio_mb_per_min,
        )
    ]


@ratelimits_app.command("show")
def ratelimits_show(
    project: Annotated[str, typer.Option(help="Project name or id.")],
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The project's effective limits per model."""
    c = container()
    try:
        organization = c.accounts.find_organization(org)
        proj = c.accounts.find_project(organization.id, project)
    except KeyplaneError as exc:
        fail(exc.message)
    rows = c.rate_limit_service.project_limits(organization.id, proj.id)
    if as_json:
        out.print_json(
            json.dumps([{"id": r.id, "model": r.model, **_as_dict(r.limits)} for r in rows])
        )
        return
    columns = (
        Col("id", 0), Col("model", 1), Col("RPM", 2), Col("TPM", 3), Col("RPD", 4),
        Col("images/min", 5), Col("audio MB/min", 6),
    )  # fmt: skip
    print_table(columns, [(r.id, r.model, *_limits_row(r.limits)) for r in rows])


@ratelimits_app.command("set")
def ratelimits_set(
    project: Annotated[str, typer.Option(help="Project name or id.")],
    model: Annotated[str, typer.Option(help="The model (e.g. gpt-4o-mini).")],
    rpm: Rpm = None,
    tpm: Tpm = None,
    rpd: Rpd = None,
    org: OrgOpt = None,
) -> None:
    """Lower a project's limits for one model."""
    c = container()
    with recorded(c):
        organization = c.accounts.find_organization(org)
        proj = c.accounts.find_project(organization.id, project)
        limits = ModelLimits(rpm=rpm, tpm=tpm, rpd=rpd)
        row = c.rate_limit_service.set_project_limit(
            organization.id, proj.id, "rl-" + model, limits
        )
        asked = {k: v for k, v in _as_dict(limits).items() if v is not None}  # as the Admin API's
        audit(c, organization.id, "rate_limit.updated", target_id=row.id, project_id=proj.id,
              details={"after": asked})  # fmt: skip
    out.print(
        f"{proj.name} / {row.model}: RPM {row.limits.rpm}, TPM {row.limits.tpm}, RPD {row.limits.rpd or '-'}"
    )


def _as_dict(limits: ModelLimits) -> dict[str, int | None]:
    return {
        "max_requests_per_1_minute": limits.rpm,
        "max_tokens_per_1_minute": limits.tpm,
        "max_requests_per_1_day": limits.rpd,
        "max_images_per_1_minute": limits.images_per_min,
        "max_audio_megabytes_per_1_minute": limits.audio_mb_per_min,
    }
