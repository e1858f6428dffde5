"""``keyplane scan PATH…``: keys left in files and in git history, and ``--revoke`` for keyplane's
own (BRIEF C8). A keyplane key counts as leaked only if it is one of this installation's with its
real secret (checked against the stored hash), so a forged string cannot get a key revoked."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from keyplane import bootstrap
from keyplane.cli.common import Col, JsonOpt, container, out, print_table
from keyplane.keys.format import key_id, secret_matches
from keyplane.keys.scan import Found, find

MAX_FILE_BYTES = 5 * 1024 * 1024  # larger files are not read (data, not source)
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(names):
            yield Path(root, name)


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", "replace")


def _history(path: Path) -> Iterator[tuple[str, Found]]:
    """Keys added by any commit of the git repository ``path`` is in (every branch)."""
    where = path if path.is_dir() else path.parent
    try:
        log = subprocess.run(
            ["git", "-C", str(where), "log", "-p", "--all", "--no-color", "--unified=0",
             "--no-ext-diff", "--format=commit %H"],
            capture_output=True, check=True, timeout=600,
        ).stdout.decode("utf-8", "replace")  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return  # not a repository (or no git): files only
    commit, file = "", ""
    for line in log.splitlines():
        if line.startswith("commit "):
            commit = line[7:19]
        elif line.startswith("+++ "):
            file = line[6:] if line.startswith("+++ b/") else line[4:]
        elif line.startswith("+") and "sk-" in line:
            for hit in find(line[1:]):
                yield f"git {commit}:{file}", hit


def scan_command(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories.")],
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Revoke every live keyplane key found.")
    ] = False,
    history: Annotated[
        bool, typer.Option("--history/--no-history", help="Also scan git history.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Find API keys in files and git history: keyplane's (live ones can be revoked at once with
    --revoke) and upstream providers'. Exits 1 when any key is found."""
    hits: list[tuple[str, Found]] = []
    for path in paths:
        for file in _files(path):
            text = _read(file)
            if text is not None and "sk-" in text:
                hits.extend((f"{file}:{f.line}", f) for f in find(text))
        if history:
            hits.extend(_history(path))
    c = container()
    pepper, now = c.pepper, c.clock.now()
    statuses: dict[str, str] = {}
    rows = []
    for where, hit in hits:
        status = "provider key: rotate it with the provider"
        if hit.key is not None:
            status = statuses.get(hit.text) or _status(c, hit, pepper, now, revoke)
            statuses[hit.text] = status
        rows.append({"where": where, "kind": hit.kind, "key": hit.redacted, "status": status})
    if as_json:
        out.print_json(json.dumps(rows))
    elif rows:
        columns = (Col("where", 0, wraps=True), Col("kind", 2), Col("key", 1), Col("status", 3))
        print_table(columns, [(r["where"], r["kind"], r["key"], r["status"]) for r in rows])
        out.print(f"{len(rows)} key(s) found.")
    else:
        out.print("No keys found.")
    if rows:
        raise typer.Exit(1)


def _status(c: bootstrap.Container, hit: Found, pepper: bytes, now: float, revoke: bool) -> str:
    """What the found keyplane key is here; revoked now when live and ``revoke``."""
    assert hit.key is not None
    stored = c.key_store.get(key_id(hit.key.public_id))
    if stored is None or not secret_matches(pepper, hit.key.secret, stored.secret_hash):
        return "not a key of this keyplane"
    if not stored.is_usable(now):
        return f"{stored.status(now)} already"
    if not revoke:
        return f"LIVE ({stored.id}): revoke it, or run with --revoke"
    c.keys.revoke(stored.org_id, stored.id)
    return f"revoked now ({stored.id})"
