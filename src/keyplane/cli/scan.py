"""``keyplane scan PATH…``: keys left in files and in git history, and ``--revoke`` for keyplane's
own (BRIEF C8). A keyplane key counts as leaked only if it is one of this installation's with its
real secret (checked against the stored hash), so a forged string cannot get a key revoked.

What it could not read is said on stderr: a path that does not exist stops it (exit 2), files it
skips (too large, binary, not a regular file) and a history git would not give are listed, so
"No keys found." means what it says for everything else."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from keyplane import bootstrap
from keyplane.cli.common import Col, JsonOpt, container, err, operator, out, print_table
from keyplane.config import load_settings
from keyplane.keys.scan import Found, find

MAX_FILE_BYTES = 5 * 1024 * 1024  # larger files are not read (data, not source)
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}


def _files(path: Path, skipped: list[str]) -> Iterator[Path]:
    """The regular files under ``path`` (symbolic links, FIFOs and devices are not read)."""
    if not path.is_dir():
        yield path
        return
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(names):
            file = Path(root, name)
            try:
                mode = file.lstat().st_mode
            except OSError:
                skipped.append(f"{file}: cannot be read")
                continue
            if stat.S_ISREG(mode):
                yield file
            elif not stat.S_ISLNK(mode):  # (a link's target is read where it lives)
                skipped.append(f"{file}: not a regular file")


def _read(path: Path, skipped: list[str]) -> str | None:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            skipped.append(f"{path}: not a regular file")
            return None
        if info.st_size > MAX_FILE_BYTES:
            skipped.append(f"{path}: larger than {MAX_FILE_BYTES // 1024 // 1024} MB")
            return None
        data = path.read_bytes()
    except OSError as exc:
        skipped.append(f"{path}: {exc.strerror or exc}")
        return None
    for bom, codec in ((b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            return data.decode(codec, "replace")
    if b"\0" in data[:8192]:
        skipped.append(f"{path}: binary")
        return None
    return data.decode("utf-8", "replace")


def _history(path: Path, skipped: list[str]) -> Iterator[tuple[str, Found]]:
    """Keys added by any commit (every branch) to what ``path`` names in its git repository."""
    where, spec = (path, ".") if path.is_dir() else (path.parent, path.name)
    inside = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "--is-inside-work-tree"],
        capture_output=True, check=False,
    )  # fmt: skip
    if inside.returncode != 0:
        if b"dubious ownership" in inside.stderr:
            skipped.append(f"{path}: git history not read (git: dubious ownership)")
        return  # not a repository: files only
    try:
        log = subprocess.run(
            ["git", "-C", str(where), "log", "-p", "--all", "--no-color", "--unified=0",
             "--no-ext-diff", "--no-textconv", "--format=commit %H", "--", spec],
            capture_output=True, check=True, timeout=600,
        ).stdout.decode("utf-8", "replace")  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        skipped.append(f"{path}: git history not read ({type(exc).__name__})")
        return
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
    --revoke) and upstream providers'. Exits 1 when any key is found, 2 when a path does not
    exist; what could not be read is listed on stderr."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        err.print(f"error: no such file or directory: {', '.join(missing)}", highlight=False)
        raise typer.Exit(2)
    hits: list[tuple[str, Found]] = []
    seen: set[tuple[str, str]] = set()
    skipped: list[str] = []
    for path in paths:
        found: list[tuple[str, Found]] = []
        for file in _files(path, skipped):
            text = _read(file, skipped)
            if text is not None and "sk-" in text:
                found.extend((f"{file}:{f.line}", f) for f in find(text))
        if history:
            found.extend(_history(path, skipped))
        for where, hit in found:
            if (where, hit.text) not in seen:
                seen.add((where, hit.text))
                hits.append((where, hit))
    rows = _report(hits, revoke)
    for line in skipped:
        err.print(f"not scanned: {line}", highlight=False)
    if as_json:
        out.print_json(json.dumps(rows))
    elif rows:
        columns = (Col("status", 0, wraps=True), Col("key", 1), Col("kind", 3),
                   Col("where", 2, wraps=True))  # fmt: skip
        print_table(columns, [(r["status"], r["key"], r["kind"], r["where"]) for r in rows])
        out.print(f"{len(rows)} key(s) found.")
    else:
        out.print("No keys found." + (" (Some files were not scanned: see above.)" * bool(skipped)))
    if rows:
        raise typer.Exit(1)


def _report(hits: list[tuple[str, Found]], revoke: bool) -> list[dict[str, str]]:
    """A row for each place a key was found, with what the key is here."""
    c: bootstrap.Container | None = None
    if any(hit.key is not None for _, hit in hits):
        settings = load_settings()
        if settings.database_url or settings.data_dir.exists():
            c = container()  # (never creates a data directory where there is no keyplane)
    statuses: dict[str, str] = {}
    rows = []
    for where, hit in hits:
        status = "provider key: rotate it with the provider"
        if hit.key is not None:
            if c is None:
                status = "not checked: no keyplane here (KEYPLANE_DATA_DIR)"
            else:
                status = statuses.get(hit.text) or _status(c, hit, where, revoke)
                statuses[hit.text] = status
        rows.append({"where": where, "kind": hit.kind, "key": hit.redacted, "status": status})
    return rows


def _status(c: bootstrap.Container, hit: Found, where: str, revoke: bool) -> str:
    """What the found keyplane key is here; revoked now (audited, the Owners emailed) when live and ``revoke``."""
    stored = c.leaks.key_of(hit.text)
    if stored is None:
        return "not a key of this keyplane"
    now = c.clock.now()
    if not stored.is_usable(now):
        return f"{stored.status(now)} already"
    if not revoke:
        return f"LIVE ({stored.id}): revoke it, or run with --revoke"
    if not c.leaks.revoke(stored, where, operator(), "keyplane scan"):
        return "revoked already"
    return f"revoked now ({stored.id})"
