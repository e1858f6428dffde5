"""What every command shares: consoles, option types, the container, money and time parsing."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from keyplane import bootstrap
from keyplane.config import load_settings
from keyplane.errors import KeyplaneError
from keyplane.usage.pricing import MICRO, format_usd

out = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OrgOpt = Annotated[
    str | None, typer.Option("--org", help="Organization name or id (default: the only one).")
]
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def container(**overrides: Any) -> bootstrap.Container:
    try:
        return bootstrap.build(load_settings(**overrides))
    except ValueError as exc:
        fail(str(exc))


def scope(org: str | None, project: str | None) -> tuple[bootstrap.Container, str, str | None]:
    """The container, the organization's id and (when named) the project's id; fails clearly
    when either is unknown."""
    c = container()
    try:
        organization = c.accounts.find_organization(org)
        project_id = c.accounts.find_project(organization.id, project).id if project else None
    except KeyplaneError as exc:
        fail(exc.message)
    return c, organization.id, project_id


def is_duration(text: str) -> bool:
    return _DURATION.match(text.strip()) is not None


def parse_duration(text: str) -> int:
    """``30d``, ``24h``, ``90m``, ``45s`` or plain seconds → seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise typer.BadParameter(f"'{text}' is not a duration like 30d, 24h, 90m or 3600")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_usd(text: str) -> int:
    """``10``, ``10.5`` or ``$10.50`` → exact micro-dollars (never through a float)."""
    try:
        amount = Decimal(text.strip().lstrip("$").replace(",", ""))
    except InvalidOperation:
        raise typer.BadParameter(f"'{text}' is not an amount in dollars like 10.00") from None
    micros = amount * MICRO
    if not micros.is_finite() or micros != micros.to_integral_value():
        raise typer.BadParameter(f"'{text}' is finer than a micro-dollar")
    return int(micros)


def usd(micros: int) -> str:
    return format_usd(micros)


def iso(ts: int | None) -> str:
    return (
        "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    )
