"""The ``keyplane`` command: thin commands over the container (BRIEF C10)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import socket
import sys
from typing import Annotated, Any

import typer

from keyplane import bootstrap, gateway_assembly, logs, server, upstream_keys
from keyplane.accounts.models import Organization, OrgRole, Project, User
from keyplane.accounts.org_keys import created_key_data
from keyplane.billing.service import WELCOME_NOTE
from keyplane.billing.wallet import Lot
from keyplane.cli.access import access_app
from keyplane.cli.common import (
    Col,
    JsonOpt,
    OrgOpt,
    audit,
    bold,
    container,
    fail,
    is_duration,
    iso,
    out,
    parse_duration,
    parse_usd,
    print_table,
    recorded,
    scope,
    styled,
    usd,
)
from keyplane.cli.keys import keys_app
from keyplane.cli.limits import ratelimits_app, tier_app
from keyplane.cli.money import alerts_app, billing_app, budget_app, granted, money_app
from keyplane.cli.orgs import orgs_app
from keyplane.cli.scan import scan_command
from keyplane.cli.sealed import reseal_command, seal_command
from keyplane.cli.secret_status import secrets_app
from keyplane.config import Settings, UpstreamSettings
from keyplane.keys.format import KeyKind
from keyplane.keys.models import ApiKey
from keyplane.simulator import SimulatorConfig
from keyplane.simulator import create_app as simulator_app
from keyplane.storage.gateway_lock import AnotherGateway
from keyplane.usage.records import units

SERVER_WAITS_FOR_DATABASE_S = 60.0  # a server started with its database waits for it

app = typer.Typer(
    help="keyplane: API keys, spend and limits in front of OpenAI-compatible APIs.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
app.add_typer(money_app, name="credits")
app.add_typer(budget_app, name="budget")
app.add_typer(alerts_app, name="alerts")
app.add_typer(billing_app, name="billing")
app.add_typer(tier_app, name="tier")
app.add_typer(ratelimits_app, name="ratelimits")
app.add_typer(access_app, name="access")
app.add_typer(orgs_app, name="orgs")
app.add_typer(secrets_app, name="secrets")
app.command("scan")(scan_command)
app.command("seal")(seal_command)
app.command("reseal")(reseal_command)


@app.command()
def init(
    email: Annotated[str, typer.Option(help="The first Owner's email.")],
    org: Annotated[str, typer.Option(help="The organization's name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    welcome_credit: Annotated[
        str, typer.Option(help="Dollars of credit to start with (expires in 90 days); 0: none.")
    ] = "5.00",
    as_json: JsonOpt = False,
) -> None:
    """Create the first Owner, the organization, 'Default project' and an admin key (shown once)."""
    if not password_stdin:
        fail("pass the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\n")
    c = container()
    credit = parse_usd(welcome_credit)
    with recorded(c):
        user, organization, project = c.accounts.initialize(
            email=email, password=password, org_name=org
        )
        key, secret = c.keys.create(
            kind=KeyKind.ADMIN, org_id=organization.id, project_id=None, name="Initial admin key",
            owner_type="user", owner_id=user.id, created_by=user.id,
        )  # fmt: skip
        welcome = c.billing.open_account(
            organization.id, tier=c.settings.initial_tier, welcome_credit=credit
        )
        _audit_first(c, user, organization, project, key, welcome)
    if as_json:
        payload = {
            "user_id": user.id,
            "org_id": organization.id,
            "project_id": project.id,
            "admin_key": secret,
        }
        out.print_json(json.dumps(payload))
        return
    out.print(
        styled(
            "Organization ",
            bold(organization.name),
            f" ({organization.id}) with Owner {user.email}",
        )
    )
    out.print(styled("Project ", bold(project.name), f" ({project.id})"))
    out.print("Admin key (shown once, store it now):")
    out.print(secret, highlight=False, soft_wrap=True)


@app.command("migrate")
def migrate_cmd(
    check: Annotated[
        bool, typer.Option("--check", help="Only check that the tables match the migrations.")
    ] = False,
) -> None:
    """Upgrade the database schema (or check migrations against the models)."""
    from keyplane.storage import migrate

    if check:
        migrate.check_models_match_migrations()
        out.print("Models and migrations agree.")
        return
    c = container()
    c.close()
    out.print(f"Database at {c.settings.resolved_database_url.split('@')[-1]} is up to date.")


@app.command()
def usage(
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    since: Annotated[
        str | None, typer.Option(help="A date (2026-11-01), a time, or a duration back (24h).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="The latest this many records.")] = 1000,
    org: OrgOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show usage records: one per request, with tokens and cost."""
    c, org_id, project_id = scope(org, project)
    start = _parse_since(since, c.clock.now()) if since else None
    records = c.usage_store.query(org_id, project_id=project_id, since=start, limit=limit)
    count, cost = c.usage_store.summary(org_id, project_id=project_id, since=start)
    if as_json:
        rows = [{**r.asdict(), "outcome": r.outcome.value} for r in records]
        out.print_json(json.dumps(rows))
        return
    columns = (
        Col("time", 0), Col("request", 5), Col("model", 1), Col("endpoint", 8), Col("in", 2),
        Col("cached", 7), Col("out", 3), Col("images, audio, speech", 9), Col("status", 6),
        Col("cost $", 4),
    )  # fmt: skip
    cells = [
        (
            iso(r.created_at),
            r.request_id,
            r.model,
            r.endpoint,
            str(r.input_tokens),
            str(r.cached_input_tokens),
            str(r.output_tokens),
            units(r.images, r.audio_seconds, r.characters),
            str(r.status),
            usd(r.cost_micro_usd),
        )
        for r in records
    ]
    print_table(columns, cells)
    shown = "" if len(records) == count else f" (the latest {len(records):,} shown: --limit)"
    out.print(f"{count:,} requests, total ${usd(cost)}{shown}")


def _parse_since(text: str, now: float) -> int:
    if is_duration(text):
        return int(now) - parse_duration(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"'{text}' is neither a date nor a duration") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
    latency_ms: Annotated[float, typer.Option(help="Delay before every answer.")] = 0.0,
    tokens_per_second: Annotated[
        float, typer.Option(help="Streaming speed (0: as fast as possible).")
    ] = 0.0,
    completion_tokens: Annotated[
        int, typer.Option(help="Output tokens per answer (capped by max_tokens).")
    ] = 16,
) -> None:
    """Run the upstream simulator: an OpenAI-compatible server with deterministic token counts."""
    from keyplane import simulator

    sock = _listen(host, port)
    out.print(f"keyplane upstream SIMULATOR (not a real model) on http://{host}:{port}/v1")
    simulator.serve(sock, SimulatorConfig(latency_ms, tokens_per_second, completion_tokens))


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8080).")] = None,
    upstream: Annotated[
        str | None, typer.Option(help="Send every model to this OpenAI-compatible base URL (…/v1).")
    ] = None,
    upstream_key: Annotated[
        str | None,
        typer.Option(
            help="The provider key for --upstream (sealed:… from `keyplane seal`, or clear)."
        ),
    ] = None,
) -> None:
    """Run the gateway."""
    overrides: dict[str, Any] = {"host": host, "port": port}
    if upstream:
        try:
            overrides["upstreams"] = [
                UpstreamSettings(name="cli", base_url=upstream, api_key=upstream_key)
            ]
        except ValueError:
            fail(f"--upstream: '{upstream}' is not a URL such as https://api.openai.com/v1")
    c = container(wait_for_database_s=SERVER_WAITS_FOR_DATABASE_S, **overrides)
    if not c.settings.upstreams:
        fail(
            "no upstream configured: pass --upstream URL, set KEYPLANE_UPSTREAMS, or use `make run` for the simulator"
        )
    _open_upstream_keys(c)
    sock = _listen(c.settings.host, c.settings.port)
    _claim(c)
    server.run(_serve(c, sock))


@app.command()
def dev(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8080).")] = None,
) -> None:
    """What `make run` does: initialize on first start, add the simulator if no upstream is set, serve."""
    c = container(wait_for_database_s=SERVER_WAITS_FOR_DATABASE_S, host=host, port=port)
    _open_upstream_keys(c)
    sock = _listen(c.settings.host, c.settings.port)  # before a first start shows its secrets
    _claim(c)  # (so too: two at once would both initialize)
    if c.accounts.organizations():
        out.print("keyplane is already initialized. Create more keys with:")
        out.print(
            "  .venv/bin/keyplane keys create --project 'Default project' --name my-app\n"
            "  .venv/bin/keyplane keys create-admin --name ops   # for the Admin API",
            highlight=False,
        )
    else:
        _first_start(c)
    sim_sock = None
    if not c.settings.upstreams:
        sim_sock = server.bind("127.0.0.1", 0)
        sim_url = f"http://127.0.0.1:{sim_sock.getsockname()[1]}/v1"
        c.settings = c.settings.model_copy(
            update={"upstreams": [UpstreamSettings(name="simulator", base_url=sim_url)]}
        )
        out.print(
            styled("No upstream configured: using the built-in upstream ", bold("SIMULATOR"),
                   f" at {sim_url} (not a real model).")
        )  # fmt: skip
    server.run(_serve(c, sock, simulator_sock=sim_sock))


def _open_upstream_keys(c: bootstrap.Container) -> None:
    """A sealed upstream key the encryption keys do not open, as a one-line error before serving
    (the gateway opens them again when it is built); and so for what the database keeps sealed
    and keyplane will need to open (two-factor and webhook secrets, emails not sent yet)."""
    try:
        upstream_keys.open_upstreams(c.settings)
        unopened = c.unopened_sealed()
    except upstream_keys.UnopenedUpstreamKey as exc:
        c.close()
        fail(str(exc))
    if unopened:
        c.close()
        what = ", ".join(f"{u.count:,} {u.what}" for u in unopened)
        kids = sorted({kid for u in unopened for kid in u.key_ids})
        which = f" (sealed with encryption key {', '.join(kids)})" if kids else ""
        fail(
            f"the database keeps {what} that none of the configured encryption keys opens{which}: "
            "add the key that sealed them to KEYPLANE_ENCRYPTION_KEY_PREVIOUS (`keyplane secrets "
            "id` prints a key's id)"
        )


def _claim(c: bootstrap.Container) -> None:
    """This process as the database's one gateway, or a one-line error naming the other."""
    try:
        c.claim_database()
    except AnotherGateway as exc:
        c.close()
        fail(str(exc))
    except BaseException:
        c.close()
        raise


def _first_start(c: bootstrap.Container) -> None:
    password = secrets.token_urlsafe(15)
    with c.audit.atomic():  # (all of it and its entries, or nothing: the next start begins again)
        user, org, project = c.accounts.initialize(
            email="owner@keyplane.local", password=password, org_name="My organization"
        )
        key, secret = c.keys.create(
            kind=KeyKind.PROJECT, org_id=org.id, project_id=project.id, name="First key",
            owner_type="user", owner_id=user.id, created_by=user.id,
        )  # fmt: skip
        welcome = c.billing.open_account(
            org.id, tier=c.settings.initial_tier, welcome_credit=5_000_000
        )
        _audit_first(c, user, org, project, key, welcome)
    out.print(
        styled(
            bold("First start: keyplane is initialized."), " These are shown once, store them now."
        )
    )
    out.print(f"  Owner login: {user.email}  password: {password}", highlight=False)
    out.print(f"  Project key ({project.name}): {secret}", highlight=False, soft_wrap=True)


def _audit_first(
    c: bootstrap.Container, owner: User, org: Organization, project: Project, key: ApiKey,
    welcome: Lot | None,
) -> None:  # fmt: skip
    """The audit log's first events, as a sign-up's (the organization, its Owner, its project),
    then the first key and the welcome credit."""
    org_id = org.id
    audit(c, org_id, "organization.created", target_id=org_id, details={"name": org.name})
    audit(c, org_id, "user.added", target_id=owner.id,
          details={"email": owner.email, "role": OrgRole.OWNER.value})  # fmt: skip
    audit(c, org_id, "project.created", target_id=project.id, project_id=project.id,
          details={"name": project.name})  # fmt: skip
    audit(c, org_id, "api_key.created", target_id=key.id, project_id=key.project_id,
          details={"data": created_key_data(key)})  # fmt: skip
    if welcome is not None:
        granted(c, org_id, welcome, WELCOME_NOTE)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error (the port taken, an address not this host's)."""
    try:
        return server.bind(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


async def _serve(
    c: bootstrap.Container, sock: socket.socket, *, simulator_sock: socket.socket | None = None
) -> None:
    s: Settings = c.settings
    logs.configure(s.log_level)
    gateway = server.make_server(gateway_assembly.build_app(c)[0], access_log=s.access_log)
    running = [(gateway, sock)]
    if simulator_sock is not None:
        running.append((server.make_server(simulator_app(SimulatorConfig())), simulator_sock))
    server.stop_on_signals([srv for srv, _ in running])
    host, port = sock.getsockname()[:2]
    out.print(
        styled("keyplane is listening on ", bold(f"http://{host}:{port}/v1"), "  (Ctrl-C to stop)")
    )
    out.print(
        f'  OpenAI(base_url="http://{host}:{port}/v1", api_key="sk-kp-proj-…")', highlight=False
    )
    out.print(
        f"  Dashboard: {s.public_url}/  ·  Admin API docs: {s.public_url}/docs", highlight=False
    )
    if not server.compiled():
        out.print(
            "  (request path not compiled: plain Python, ~1.5× slower; see scripts/compile.py)"
        )
    try:
        await asyncio.gather(*(srv.serve(sockets=[sck]) for srv, sck in running))
    finally:
        c.close()


def main() -> None:
    app()
