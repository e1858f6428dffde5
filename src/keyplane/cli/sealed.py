"""Sealing at rest from the command line: ``seal`` (a provider key for the configuration) and
``reseal`` (everything sealed, again with the current encryption key, after rotating it)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import typer

from keyplane import sealing, upstream_keys
from keyplane.cli.common import (
    Col,
    JsonOpt,
    container,
    err,
    fail,
    out,
    print_table,
    setting_errors,
    settings,
)

SEAL_AGAIN = "seal it again with `keyplane seal` and replace it in your configuration"


def _at_terminal() -> bool:
    return sys.stdin.isatty()


def read_secret(what: str = "Provider key to seal") -> str:
    """A secret: typed twice, hidden, at a terminal; else standard input's one line."""
    if _at_terminal():
        typed: str = typer.prompt(what, hide_input=True, confirmation_prompt=True, err=True)
        return typed.strip()
    text = sys.stdin.read().strip()
    if "\n" in text:
        fail("standard input holds more than one line: pipe in the one key")
    return text


def seal_command() -> None:
    """Seal a provider key for an upstream's api_key in the configuration (prints sealed:…).

    Reads the key from standard input (or asks for it, hidden, at a terminal) and seals it with
    KEYPLANE_ENCRYPTION_KEY (in development, the key generated into the data directory): put the
    line printed as the upstream's api_key in KEYPLANE_UPSTREAMS or the TOML file."""
    secret = read_secret()
    if not secret:
        fail("nothing to seal: the provider key is empty")
    with setting_errors():
        keys = settings().encryption_keys()
    out.print(sealing.seal(keys, sealing.UPSTREAMS, secret), highlight=False, soft_wrap=True)
    if _at_terminal():
        err.print("Use this line as the upstream's api_key.", highlight=False)


def reseal_command(as_json: JsonOpt = False) -> None:
    """Seal every secret kept at rest again with KEYPLANE_ENCRYPTION_KEY.

    To rotate the encryption key: set the new one as KEYPLANE_ENCRYPTION_KEY and the old one in
    KEYPLANE_ENCRYPTION_KEY_PREVIOUS (a JSON list), restart keyplane, run this, then remove the
    old one. Upstream keys sealed in the configuration cannot be rewritten from here: those the
    new key does not open are listed, to seal again with `keyplane seal`. Exits with 1 when some
    value could be opened by none of the keys."""
    c = container()
    try:
        done = c.reseal()
        with setting_errors():
            stale = upstream_keys.stale_upstream_keys(c.settings)
    finally:
        c.close()
    previous_only = [k.upstream for k in stale if k.opens_with == "previous"]
    unopened = [k.upstream for k in stale if k.opens_with == "none"]
    if as_json:
        rows: list[dict[str, Any]] = [
            {**dataclasses.asdict(r), "previous_key_only": 0, "action": None} for r in done
        ]
        rows += [
            {
                "what": f"upstream key: {k.upstream} (configuration)",
                "resealed": 0,
                "unreadable": int(k.opens_with == "none"),
                "previous_key_only": int(k.opens_with == "previous"),
                "action": SEAL_AGAIN,
            }
            for k in stale
        ]
        out.print_json(json.dumps(rows))
    else:
        print_table(
            (Col("sealed", 0), Col("resealed", 1), Col("unreadable", 2)),
            [(r.what, f"{r.resealed:,}", f"{r.unreadable:,}") for r in done],
        )
        for name in previous_only:
            out.print(
                f"Upstream '{name}': its key in the configuration opens only with a previous "
                f"encryption key: {SEAL_AGAIN}.",
                highlight=False,
            )
        for name in unopened:
            out.print(
                f"Upstream '{name}': its key in the configuration opens with none of the "
                f"encryption keys: {SEAL_AGAIN}.",
                highlight=False,
            )
    # The exit code keeps its documented meaning (1: a value none of the keys opens, a sealed
    # upstream key among them); an upstream key a previous key still opens is not one: reported,
    # and the previous keys are not said to be removable.
    unreadable = sum(r.unreadable for r in done) + len(unopened)
    if unreadable:
        fail(
            f"{unreadable:,} sealed values were sealed with a key that is neither "
            "KEYPLANE_ENCRYPTION_KEY nor in KEYPLANE_ENCRYPTION_KEY_PREVIOUS: left as they are."
        )
    if as_json:
        return
    if previous_only:
        out.print(
            "The database is sealed with the current key; keep the previous keys until the "
            "upstream keys above are sealed again in the configuration."
        )
    else:
        out.print("Everything is sealed with the current key: the previous keys can be removed.")
