"""API key commands: create, list, update (limits, permissions, allowlists), rotate, revoke."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.text import Text

from keyplane import bootstrap
from keyplane.accounts.org_keys import UNCHANGED, Unchanged, created_key_data, key_data
from keyplane.cli.common import (
    Col,
    JsonOpt,
    OrgOpt,
    audit,
    bold,
    container,
    fail,
    iso,
    listed,
    operator,
    out,
    parse_duration,
    print_table,
    recorded,
    scope,
    styled,
)
from keyplane.cli.limits import Rpd, Rpm, Tpm
from keyplane.errors import KeyplaneError
from keyplane.keys import permissions
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.keys.service import MAX_EXPIRES_IN_S
from keyplane.limits.ratelimit import API_NAMES, ModelLimits

keys_app = typer.Typer(
    help="Create, list, update, rotate and revoke API keys.", no_args_is_help=True
)

Scopes = Annotated[
    list[str] | None,
    typer.Option(
        "--scope", help="Restricted permission, e.g. chat.write or models.read (repeatable)."
    ),
]
ReadOnly = Annotated[
    bool, typer.Option("--read-only", help="Read-only permissions (api.all.read).")
]
Models = Annotated[
    list[str] | None, typer.Option("--allow-model", help="Only these models (repeatable).")
]
Ips = Annotated[
    list[str] | None, typer.Option("--allow-ip", help="Only these IPs/CIDRs (repeatable).")
]


def key_json(key: ApiKey, now: float, rotation_days: int) -> dict[str, Any]:
    return {
        "id": key.id, "name": key.name, "redacted_value": key.redacted_value, "project_id": key.project_id,
        "kind": key.kind.value, "status": key.status(now), "created_at": key.created_at,
        "expires_at": key.expires_at, "last_used_at": key.last_used_at, "last_used_ip": key.last_used_ip,
        "permissions": permissions.describe(key.scopes), "scopes": list(key.scopes or ()),
        "allowed_models": key.allowed_models, "allowed_ips": key.allowed_cidrs,
        "rotated_from": key.rotated_from, "needs_rotation": key.needs_rotation(now, rotation_days * 86400),
    }  # fmt: skip


def _expires_in(text: str | None) -> int | None:
    """--expires-in as seconds: from a second to 365 days, as OpenAI allows."""
    if text is None:
        return None
    seconds = parse_duration(text)
    if not 0 < seconds <= MAX_EXPIRES_IN_S:
        fail(f"--expires-in: '{text}' is not from 1s to 365d")
    return seconds


def _allowlist(given: list[str] | None, anything: bool) -> list[str] | Unchanged | None:
    """An update's allowlist: None lifts it, UNCHANGED keeps it."""
    if anything:
        return None
    return UNCHANGED if given is None else given


def _scopes(scope: list[str] | None, read_only: bool) -> list[str] | None:
    if read_only and scope:
        fail("choose --read-only or --scope, not both")
    return [permissions.ALL_READ] if read_only else scope


KeyName = Annotated[str, typer.Option(help="A name to recognize the key by.")]
KeyLifetime = Annotated[
    str | None, typer.Option(help="Lifetime such as 30d or 12h (default: never).")
]


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="Project name or id.")],
    name: KeyName,
    expires_in: KeyLifetime = None,
    scope: Scopes = None,
    read_only: ReadOnly = False,
    allow_model: Models = None,
    allow_ip: Ips = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project key and print its secret once (permissions All unless restricted)."""
    c = container()
    with recorded(c):
        organization = c.accounts.find_organization(org)
        proj = c.accounts.find_project(organization.id, project)
        owner = c.accounts.owners(organization.id)[0]
        key, secret = c.keys.create(
            kind=KeyKind.PROJECT, org_id=organization.id, project_id=proj.id, name=name,
            owner_type="user", owner_id=owner.id, created_by=owner.id,
            expires_in_s=_expires_in(expires_in),
            scopes=_scopes(scope, read_only), allowed_models=allow_model, allowed_cidrs=allow_ip,
        )  # fmt: skip
        audit(c, organization.id, "api_key.created", target_id=key.id, project_id=proj.id,
              details={"data": created_key_data(key)})  # fmt: skip
    _created(
        c,
        key,
        secret,
        as_json,
        styled("Created key ", bold(key.name), f" ({key.id}) in project {proj.name}."),
    )


@keys_app.command("create-admin")
def keys_create_admin(
    name: KeyName,
    expires_in: KeyLifetime = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an admin key for the Admin API (/v1/organization), owned by the organization's first
    Owner, and print its secret once."""
    c = container()
    with recorded(c):
        organization = c.accounts.find_organization(org)
        owner = c.accounts.owners(organization.id)[0]
        key, secret = c.keys.create(
            kind=KeyKind.ADMIN, org_id=organization.id, project_id=None, name=name,
            owner_type="user", owner_id=owner.id, created_by=owner.id,
            expires_in_s=_expires_in(expires_in),
        )  # fmt: skip
        audit(
            c,
            organization.id,
            "api_key.created",
            target_id=key.id,
            details={"data": created_key_data(key)},
        )
    said = styled("Created admin key ", bold(key.name), f" ({key.id}), acting as {owner.email}.")
    _created(c, key, secret, as_json, said)


def _created(c: bootstrap.Container, key: ApiKey, secret: str, as_json: bool, said: Text) -> None:
    """Prints a new key and its secret (once), as JSON or for a person."""
    if as_json:
        out.print_json(
            json.dumps(
                {**key_json(key, c.clock.now(), c.settings.key_rotation_days), "value": secret}
            )
        )
        return
    out.print(said)
    out.print("Secret (shown once, store it now):")
    out.print(secret, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(
    project: Annotated[str | None, typer.Option(help="Only this project's keys.")] = None,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List keys (redacted); keys older than the rotation policy are flagged."""
    c, org_id, project_id = scope(org, project)
    now, days = c.clock.now(), c.settings.key_rotation_days
    keys = c.keys.list(org_id, project_id)
    if as_json:
        rows = []
        for k in keys:
            limits = c.rate_limit_service.key_limits(k.id) or ModelLimits()
            rate_limits = {"rpm": limits.rpm, "tpm": limits.tpm, "rpd": limits.rpd}
            rows.append({**key_json(k, now, days), "rate_limits": rate_limits})
        out.print_json(json.dumps(rows))
        return
    columns = (
        Col("id", 0), Col("name", 1, wraps=True), Col("key", 3), Col("project", 5),
        Col("permissions", 6, wraps=True), Col("status", 2), Col("created", 8),
        Col("expires", 7), Col("last used", 4),
    )  # fmt: skip
    cells: list[tuple[str | Text, ...]] = []
    for k in keys:
        rotate = k.needs_rotation(now, days * 86400)
        status = styled(k.status(now), (" (rotate)" if rotate else "", "yellow"))
        cells.append((
            k.id, k.name, k.redacted_value, k.project_id or "(admin)", permissions.describe(k.scopes),
            status, iso(k.created_at), iso(k.expires_at), iso(k.last_used_at),
        ))  # fmt: skip
    print_table(columns, cells)
    if any(k.needs_rotation(now, days * 86400) for k in keys):
        out.print(
            f"Keys older than {days} days should be rotated: keyplane keys rotate KEY_ID --grace 24h"
        )


@keys_app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    name: Annotated[str | None, typer.Option("--name", help="A new name.")] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    rpd: Rpd = None,
    clear_limits: Annotated[
        bool, typer.Option("--clear-limits", help="Remove the key's own limits.")
    ] = False,
    scope: Scopes = None,
    read_only: ReadOnly = False,
    all_permissions: Annotated[
        bool, typer.Option("--all-permissions", help="Permissions All.")
    ] = False,
    allow_model: Models = None,
    any_model: Annotated[
        bool, typer.Option("--any-model", help="Remove the key's model list.")
    ] = False,
    allow_ip: Ips = None,
    any_ip: Annotated[
        bool, typer.Option("--any-ip", help="Remove the key's IP allowlist.")
    ] = False,
    org: OrgOpt = None,
) -> None:
    """Change a project key's name, rate limits (lower only), permissions, allowed models or IP
    allowlist."""
    for chosen, meaning in (
        ((clear_limits, rpm or tpm or rpd), "--clear-limits or --rpm/--tpm/--rpd"),
        ((all_permissions, read_only, bool(scope)), "--all-permissions, --read-only or --scope"),
        ((any_model, bool(allow_model)), "--any-model or --allow-model"),
        ((any_ip, bool(allow_ip)), "--any-ip or --allow-ip"),
    ):
        if sum(map(bool, chosen)) > 1:
            fail(f"choose {meaning}, not both")
    limits = (
        dict.fromkeys(API_NAMES)  # every limit of the key's own lifted
        if clear_limits
        else {n: v for n, v in (("rpm", rpm), ("tpm", tpm), ("rpd", rpd)) if v is not None}
    )
    new_scopes = () if all_permissions else _scopes(scope, read_only)
    models, ips = _allowlist(allow_model, any_model), _allowlist(allow_ip, any_ip)
    c = container()
    try:
        organization = c.accounts.find_organization(org)
        key = c.keys.get(organization.id, key_id)
        if key.revoked_at is not None:
            fail(f"{key.id} is revoked: create a new key")
        if key.project_id is None:
            fail(f"{key.id} is an admin key: only project keys can be updated")
        asked = (limits, name, new_scopes, models, ips) != ({}, None, None, UNCHANGED, UNCHANGED)
        if not asked:
            fail("say what to change (see --help)")
        # The service computes what changed and records it, as for the Admin API and the dashboard.
        key = c.orgs.update_project_key(
            operator(), organization.id, key.project_id, key.id,
            scopes=UNCHANGED if new_scopes is None else new_scopes,
            allowed_models=models, allowed_ips=ips, limits=limits,
            name=UNCHANGED if name is None else name,
        )  # fmt: skip
    except KeyplaneError as exc:
        fail(exc.message)
    out.print(
        f"Updated {key.id} ({key.name}): permissions {permissions.describe(key.scopes)}, "
        f"models {listed(key.allowed_models)}, IPs {listed(key.allowed_cidrs)}."
    )


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    grace: Annotated[
        str, typer.Option(help="How long the old secret keeps working (0 to 7d).")
    ] = "0",
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue a new secret; the old one stops working after the grace period, everywhere."""
    grace_s = parse_duration(grace)
    c = container()
    with recorded(c):
        organization = c.accounts.find_organization(org)
        new, secret = c.keys.rotate(organization.id, key_id, grace_s=grace_s, created_by=None)
        old_limits = c.rate_limit_service.key_limits(key_id)
        if old_limits is not None:
            c.rate_limit_service.set_key_limits(organization.id, new.id, old_limits)
        rotated = {**key_data(new), "rotated_from": key_id, "grace_period_seconds": grace_s}
        audit(c, organization.id, "api_key.rotated", target_id=new.id, project_id=new.project_id,
              details={"data": rotated})  # fmt: skip
    if as_json:
        out.print_json(
            json.dumps(
                {**key_json(new, c.clock.now(), c.settings.key_rotation_days), "value": secret}
            )
        )
        return
    old = (
        "The old secret stopped working."
        if grace_s == 0
        else f"The old secret works until {iso(int(c.clock.now()) + grace_s)} ({grace} more)."
    )
    out.print(f"Rotated {key_id} → {new.id}. {old} New secret (shown once):")
    out.print(secret, highlight=False, soft_wrap=True)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")], org: OrgOpt = None
) -> None:
    """Revoke a key: every gateway refuses it within a second."""
    c = container()
    with recorded(c):
        org_id = c.accounts.find_organization(org).id
        before = c.keys.get(org_id, key_id)
        key = c.keys.revoke(org_id, key_id)
        if before.revoked_at is None:  # (revoking it again changes nothing)
            audit(c, org_id, "api_key.deleted", target_id=key.id, project_id=key.project_id,
                  details={"data": key_data(before)})  # fmt: skip
    if before.revoked_at is not None:
        when = iso(before.revoked_at)
        out.print(f"{key.id} ({key.name}, {key.redacted_value}) was revoked already, at {when}.")
        return
    out.print(f"Revoked {key.id} ({key.name}, {key.redacted_value}).")
