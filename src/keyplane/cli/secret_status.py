"""The operator's secrets from the command line: which peppers and encryption keys the stored keys
and sealed values still depend on (``secrets status``, to know when a previous one can go), and a
secret's id (``secrets id``, to tell which one a message or the status names)."""

from __future__ import annotations

import json
from typing import Any

import typer

from keyplane import sealing, upstream_keys
from keyplane.cli.common import Col, JsonOpt, container, fail, out, print_table, setting_errors
from keyplane.cli.sealed import read_secret
from keyplane.keys.format import pepper_id

secrets_app = typer.Typer(
    help="Rotate the pepper and the encryption key: what still depends on each.",
    no_args_is_help=True,
)


def _role(kid: str | None, configured: tuple[str, ...]) -> str:
    if kid is None:
        return "unrecorded"
    if kid not in configured:
        return "not configured"
    return "current" if kid == configured[0] else "previous"


@secrets_app.command("status")
def status_command(as_json: JsonOpt = False) -> None:
    """How many working API keys each pepper hashed, and how many sealed values each encryption
    key opens: a previous one can be removed once nothing depends on it.

    A key hashed with a previous pepper moves to the current one when it is next used; one that is
    never used again stays on the old pepper, and stops working (401) once that pepper is removed
    from KEYPLANE_PEPPER_PREVIOUS. Values sealed with a previous encryption key move to the
    current one with `keyplane reseal`."""
    c = container()
    try:
        with setting_errors():
            peppers = c.peppers.ids
            key_counts = c.key_store.pepper_counts(int(c.clock.now()))
            sealer_ids = sealing.Sealer(c.settings.encryption_keys(), sealing.UPSTREAMS).ids
            sealed = c.sealed_counts()
            upstreams = upstream_keys.sealed_upstream_keys(c.settings)
    finally:
        c.close()
    pepper_rows: list[dict[str, Any]] = [
        {"id": kid, "role": _role(kid, peppers), "working_keys": key_counts.get(kid, 0)}
        for kid in [*peppers, *sorted(k for k in key_counts if k not in peppers and k)]
    ]
    unrecorded = key_counts.get(None, 0)
    values: dict[str | None, int] = {}
    for column in sealed:
        for kid, n in column.by_key.items():
            values[kid] = values.get(kid, 0) + n
    in_config: dict[str | None, list[str]] = {}
    for name, kid in upstreams:
        in_config.setdefault(kid, []).append(name)
    key_rows: list[dict[str, Any]] = [
        {
            "id": kid, "role": _role(kid, sealer_ids), "sealed_values": values.get(kid, 0),
            "upstream_keys": in_config.get(kid, []),
        }
        for kid in sealer_ids
    ]  # fmt: skip
    unopened = values.get(None, 0)
    if as_json:
        payload: dict[str, Any] = {
            "peppers": pepper_rows,
            "keys_with_unrecorded_pepper": unrecorded,
            "encryption_keys": key_rows,
            "sealed_values_unopened": unopened,
            "upstream_keys_unopened": in_config.get(None, []),
        }
        out.print_json(json.dumps(payload))
        return
    out.print("Peppers (KEYPLANE_PEPPER, KEYPLANE_PEPPER_PREVIOUS):")
    print_table(
        (Col("pepper id", 0), Col("role", 1), Col("working keys", 2)),
        [(r["id"], r["role"], f"{r['working_keys']:,}") for r in pepper_rows]
        + ([("-", "unrecorded", f"{unrecorded:,}")] if unrecorded else []),
    )
    for line in _pepper_advice(pepper_rows, unrecorded):
        out.print(line, highlight=False)
    out.print("\nEncryption keys (KEYPLANE_ENCRYPTION_KEY, KEYPLANE_ENCRYPTION_KEY_PREVIOUS):")
    print_table(
        (Col("key id", 0), Col("role", 1), Col("sealed values", 2), Col("upstream keys", 3, True)),
        [
            (r["id"], r["role"], f"{r['sealed_values']:,}", ", ".join(r["upstream_keys"]) or "-")
            for r in key_rows
        ]
        + ([("-", "none opens", f"{unopened:,}", "-")] if unopened else []),
    )
    for line in _key_advice(key_rows, unopened, in_config.get(None, [])):
        out.print(line, highlight=False)


def _pepper_advice(rows: list[dict[str, Any]], unrecorded: int) -> list[str]:
    lines = []
    for r in rows:
        n = r["working_keys"]
        if r["role"] == "previous" and n:
            lines.append(
                f"Warning: pepper {r['id']} still checks {n:,} working keys. Each moves to the "
                "current pepper when it is next used; removing this pepper from "
                "KEYPLANE_PEPPER_PREVIOUS now makes those not used since stop working (401)."
            )
        elif r["role"] == "previous":
            lines.append(
                f"Pepper {r['id']}: no working key depends on it: it can be removed from "
                "KEYPLANE_PEPPER_PREVIOUS."
            )
        elif r["role"] == "not configured":
            lines.append(
                f"{n:,} working keys were hashed with pepper {r['id']}, which is not configured: "
                "they no longer work (put it back in KEYPLANE_PEPPER_PREVIOUS if it was removed "
                "too soon)."
            )
    if unrecorded and len([r for r in rows if r["role"] != "not configured"]) > 1:
        lines.append(
            f"Warning: {unrecorded:,} working keys were stored before keyplane recorded peppers: "
            "each is checked with every configured pepper and recorded when it is next used; "
            "removing a pepper stops those it hashed."
        )
    return lines


def _key_advice(
    rows: list[dict[str, Any]], unopened: int, unopened_upstreams: list[str]
) -> list[str]:
    lines = []
    for r in rows:
        if r["role"] != "previous":
            continue
        if r["sealed_values"] or r["upstream_keys"]:
            what = []
            if r["sealed_values"]:
                what.append(f"{r['sealed_values']:,} sealed values (run `keyplane reseal`)")
            if r["upstream_keys"]:
                names = ", ".join(r["upstream_keys"])
                what.append(f"the upstream keys of {names} (seal them again with `keyplane seal`)")
            lines.append(
                f"Warning: encryption key {r['id']} still opens {' and '.join(what)}: removing it "
                "from KEYPLANE_ENCRYPTION_KEY_PREVIOUS now makes them unreadable."
            )
        else:
            lines.append(
                f"Encryption key {r['id']}: nothing depends on it: it can be removed from "
                "KEYPLANE_ENCRYPTION_KEY_PREVIOUS."
            )
    if unopened:
        lines.append(
            f"{unopened:,} sealed values open with none of the configured encryption keys "
            "(`keyplane reseal` leaves them as they are)."
        )
    for name in unopened_upstreams:
        lines.append(
            f"Upstream '{name}': its sealed key opens with none of the configured encryption keys."
        )
    return lines


@secrets_app.command("id")
def id_command() -> None:
    """Print the ids of a secret (read from standard input, or asked for, hidden): its id as a
    pepper and as an encryption key, as `secrets status` and keyplane's messages name them.

    An id is derived from the secret and cannot be turned back into it."""
    secret = read_secret("Secret")
    if not secret:
        fail("no secret given")
    out.print(f"as a pepper:         {pepper_id(secret.encode())}", highlight=False)
    out.print(f"as an encryption key: {sealing.key_id(secret.encode())}", highlight=False)
