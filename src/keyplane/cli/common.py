"""What every command shares: consoles, option types, the container, money and time parsing, and
the audit log's record of what a command changed."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from keyplane import bootstrap
from keyplane.audit.models import Actor, ActorType
from keyplane.billing.amounts import parse_amount
from keyplane.config import Settings, load_settings
from keyplane.errors import KeyplaneError, StoreUnavailable
from keyplane.usage.pricing import format_usd


class _Console(Console):
    """Piped or logged (not a terminal), a line is printed whole unless a width is asked for
    (COLUMNS): folded at Rich's default 80 columns, it broke addresses and timestamps in two."""

    @property
    def soft_wrap(self) -> bool:
        return not self.is_terminal and not os.environ.get("COLUMNS")

    @soft_wrap.setter
    def soft_wrap(self, _: bool) -> None:  # (Console.__init__ sets it)
        pass


# No console markup: names and notes typed by others are printed as they are ("[bold]" too); our
# own styling goes through Text (``bold``, ``styled``).
out = _Console(markup=False)
err = _Console(stderr=True, markup=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OrgOpt = Annotated[
    str | None, typer.Option("--org", help="Organization name or id (default: the only one).")
]
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain strings and (text, style) pairs."""
    return Text.assemble(*parts)


def bold(text: str) -> tuple[str, str]:
    return (text, "bold")


DATABASE_RETRY_S = 2.0


@dataclass(frozen=True)
class Col:
    """A table column. ``keep`` ranks it for a narrow terminal (0 is kept first); a column that
    ``wraps`` (a name, a note) counts as at most ``WRAPPED`` characters wide there."""

    header: str
    keep: int
    wraps: bool = False


WRAPPED = 20
UNBOUNDED = 100_000


def print_table(columns: Sequence[Col], rows: Iterable[Sequence[str | Text]]) -> None:
    """Print a table that fits the terminal: the columns ranked lowest are left out until the rest
    fit, in their own order, and a line says which (``--json`` has every field). The columns kept
    are never cut short: an id is what the next command takes."""
    cells = [list(row) for row in rows]
    kept: set[int] = set()
    for i in sorted(range(len(columns)), key=lambda i: columns[i].keep):
        if not kept or _width(columns, cells, kept | {i}) <= out.width:
            kept.add(i)
    shown = sorted(kept)
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 2, 0, 0), pad_edge=False)
    for i in shown:
        table.add_column(columns[i].header, no_wrap=not columns[i].wraps)
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    out.print(table)
    hidden = [c.header for i, c in enumerate(columns) if i not in kept]
    if hidden:
        out.print(
            styled((f"Not shown at this width: {', '.join(hidden)} (--json has them).", "dim"))
        )


def _width(columns: Sequence[Col], cells: list[list[str | Text]], which: set[int]) -> int:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 2, 0, 0), pad_edge=False)
    for i in sorted(which):
        table.add_column(columns[i].header, max_width=WRAPPED if columns[i].wraps else None)
    for row in cells:
        table.add_row(*(row[i] for i in sorted(which)))
    return Measurement.get(out, out.options.update_width(UNBOUNDED), table).maximum


def listed(allowlist: tuple[str, ...] | None) -> str:
    """An allowlist for a person: None allows any, an empty one none."""
    if allowlist is None:
        return "any"
    return ", ".join(allowlist) or "none"


def fail(message: str) -> NoReturn:
    err.print(styled(("error:", "red"), " ", message), highlight=False)
    raise typer.Exit(1)


def _setting(loc: tuple[int | str, ...]) -> str:
    """A setting as it is set: KEYPLANE_SMTP_PORT for ("smtp_port",)."""
    return f"KEYPLANE_{str(loc[0]).upper()}" if loc else "a setting"


@contextlib.contextmanager
def setting_errors() -> Iterator[None]:
    """Settings that cannot be used (a value, the data directory, a generated secret) as
    one-line errors."""
    try:
        yield
    except ValidationError as exc:  # a setting's value, from the environment or a file
        fail("; ".join(f"{_setting(e['loc'])}: {e['msg']}" for e in exc.errors()))
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:  # the data directory, say
        fail(f"cannot use {exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc))


def settings(**overrides: Any) -> Settings:
    """The settings as every command reads them (no database: ``container`` for that)."""
    with setting_errors():
        read = load_settings(**overrides)
    return read


def container(*, wait_for_database_s: float = 0, **overrides: Any) -> bootstrap.Container:
    """The composition root for a command. A database that cannot be reached is a one-line error,
    after ``wait_for_database_s`` of trying again (a server started with its database, say)."""
    deadline = time.monotonic() + wait_for_database_s
    said = False
    while True:
        try:
            with setting_errors():
                return bootstrap.build(load_settings(**overrides))
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                fail(exc.message)
            if not said:
                err.print(
                    f"{exc.message}; trying again for {wait_for_database_s:.0f} s", highlight=False
                )
                said = True
            time.sleep(DATABASE_RETRY_S)


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


def operator() -> Actor:
    """Who the audit log says made a command's changes: the ``keyplane`` command, run by an OS
    user on this machine (no keyplane user signs in to it). Names only, nothing secret."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        user = "unknown"
    return Actor(ActorType.CLI, f"{user}@{socket.gethostname()}")


@contextlib.contextmanager
def recorded(c: bootstrap.Container) -> Iterator[None]:
    """A command's change and its entries in the audit log (``audit``), committed together or not
    at all (``AuditService.atomic``): a domain error inside, a database that failed included,
    ends the command with its one-line message, nothing changed."""
    try:
        with c.audit.atomic():
            yield
    except KeyplaneError as exc:
        fail(exc.message)


def audit(
    c: bootstrap.Container,
    org_id: str,
    event_type: str,
    *,
    target_id: str | None = None,
    project_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Records a command's change in the organization's audit log, by ``operator()``, with the
    event type, target and details the Admin API and the dashboard record for the same change:
    inside ``recorded(c)``, with the change."""
    c.audit.record(
        org_id, operator(), event_type, target_id=target_id, project_id=project_id,
        details=details,
    )  # fmt: skip


def is_duration(text: str) -> bool:
    return _DURATION.match(text.strip()) is not None


def parse_duration(text: str) -> int:
    """``30d``, ``24h``, ``90m``, ``45s`` or plain seconds → seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise typer.BadParameter(f"'{text}' is not a duration like 30d, 24h, 90m or 3600")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_usd(text: str, *, cents: bool = False) -> int:
    """A typed amount as exact micro-dollars (``billing.amounts.parse_amount``), or a usage
    error that says why."""
    try:
        return parse_amount(text, cents=cents)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def usd(micros: int) -> str:
    return format_usd(micros)


def iso(ts: int | None) -> str:
    return (
        "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    )
