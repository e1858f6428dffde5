"""keyplane under test: a data directory with a key, a `keyplane serve` process, its usage records."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fixtures
import harness
from harness import (
    HOST,
    REPO,
    BenchError,
    cpu_split,
    free_port,
    log,
    pinned,
    stop,
    vm_kb,
    wait_http,
    workdir,
    write_bodies,
)
from harness import cpu_seconds as process_cpu_seconds
from stub import Stub


def keyplane_bin() -> Path:
    candidate = Path(sys.executable).parent / "keyplane"
    return candidate if candidate.exists() else REPO / ".venv" / "bin" / "keyplane"


def export_source(rev: str, into: Path) -> tuple[Path, str]:
    """Writes ``src/`` as of commit ``rev`` into ``into``; returns its path and the short commit.

    Lets the benchmark measure a commit while others keep editing the work tree (read-only git)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if commit.returncode != 0:
        raise BenchError(f"unknown commit {rev!r}: {commit.stderr.strip()}")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "src"], capture_output=True,
        check=False,
    )  # fmt: skip
    if archive.returncode != 0:
        raise BenchError(f"git archive {rev} failed: {archive.stderr.decode().strip()}")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        # The "data" filter (refuse links and paths out of ``into``) exists from 3.11.4 on; Debian
        # 12's 3.11.2 lacks it, and the archive is our own commit's src/ anyway.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into, **safe)
    # The commit's own compile script (its list of compiled modules goes with its sources).
    script = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:scripts/compile.py"], capture_output=True,
        check=False,
    )  # fmt: skip
    if script.returncode == 0:
        (into / "scripts").mkdir(exist_ok=True)
        (into / "scripts" / "compile.py").write_bytes(script.stdout)
    return into / "src", commit.stdout.strip()


# Every check stays on (the rate limiter counts every request, holds reserve money), but nothing
# may refuse a request only because a benchmark sends many: a usage tier far above what one core
# can serve, and a credit far above what a run spends. Older commits ignore both settings.
BENCH_TIER = """
[[tier]]
id = "bench"
name = "Benchmark (limits far above one core's capacity, still checked)"
paid = "100000000"
days = 36500
monthly_usage_limit = "100000000"

[tier.limits]
"*" = { rpm = 1_000_000_000, tpm = 1_000_000_000_000, rpd = 1_000_000_000_000 }
"""
BENCH_CREDIT_USD = "1000000"


def compiled(src: Path | None = None) -> Path | None:
    """``src`` (the work tree's src/ when None) with keyplane's request path compiled by
    scripts/compile.py, the way `make run` runs it: into build/compiled for the work tree, beside an
    exported tree for another commit, by that commit's own script (its list of modules; a commit
    from before it runs plain). None when it could not be compiled (keyplane then runs as plain
    Python, and the Machine line says so)."""
    out = REPO / "build" / "compiled" if src is None else src.parent / "compiled"
    src = src or REPO / "src"
    script = src.parent / "scripts" / "compile.py"  # (an export's own: ``export_source``)
    done = subprocess.run(
        [sys.executable, str(script), "--src", str(src), "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not (out / "src").is_dir():
        log(f"keyplane runs as plain Python: {(done.stdout + done.stderr).strip()[-500:]}")
        harness.KEYPLANE_BUILD[:] = ["plain Python (not compiled)"]
        return None
    harness.KEYPLANE_BUILD[:] = ["its request path compiled with mypyc (scripts/compile.py)"]
    return out / "src"


class DataDir:
    """An initialized keyplane data directory with one project key.

    ``src``: run keyplane from this source tree (an exported commit) instead of the work tree.
    Either way compiled first (``compiled``), unless ``plain``."""

    def __init__(self, workdir: Path, src: Path | None = None, *, plain: bool = False) -> None:
        self.path = workdir / "keyplane-data"
        self.key = ""
        tiers = workdir / "bench-tier.toml"
        tiers.write_text(BENCH_TIER)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
        self.env.update(
            KEYPLANE_DATA_DIR=str(self.path), KEYPLANE_LOG_LEVEL="warning",
            KEYPLANE_TIER_FILES=f'["{tiers}"]', KEYPLANE_INITIAL_TIER="bench",
        )  # fmt: skip
        if not plain:
            src = compiled(src) or src
        else:
            harness.KEYPLANE_BUILD[:] = ["plain Python (not compiled)"]
        if src is not None:
            # Ahead of the venv's editable install, which points at the work tree.
            self.env["PYTHONPATH"] = str(src)

    def _cli(self, *args: str, stdin: str | None = None) -> Any:
        done = subprocess.run(
            [str(keyplane_bin()), *args], input=stdin, env=self.env, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"keyplane {args[0]} failed: {done.stderr.strip() or done.stdout}")
        return json.loads(done.stdout)

    def init(self) -> None:
        usage = subprocess.run(
            [str(keyplane_bin()), "init", "--help"], env=self.env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        credit = (
            ["--welcome-credit", BENCH_CREDIT_USD] if "--welcome-credit" in usage.stdout else []
        )
        self._cli(
            "init", "--email", "bench@keyplane.local", "--org", "Bench", "--password-stdin", "--json",
            *credit, stdin=secrets.token_urlsafe(18) + "\n",
        )  # fmt: skip
        created = self._cli(
            "keys", "create", "--project", "Default project", "--name", "bench", "--json"
        )
        self.key = created["value"]

    @property
    def database(self) -> Path:
        return self.path / "keyplane.db"


class Gateway:
    """One ``keyplane serve`` process in front of one upstream base URL."""

    def __init__(self, data: DataDir, upstream_base: str, cpus: str | None) -> None:
        self.data = data
        self.upstream_base = upstream_base
        self.cpus = cpus
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.clean_stop = True

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, wrapper: Sequence[str] = (), ready_s: float = 60) -> None:
        """Starts ``keyplane serve`` (under ``wrapper``, e.g. valgrind, if given) and waits up to
        ``ready_s`` for it to answer."""
        argv = [*wrapper, *self._command(), "--upstream", self.upstream_base]
        self.proc = subprocess.Popen(
            pinned(self.cpus, argv), env=self.data.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(f"{self.url}/healthz", ready_s, self.proc)

    def _command(self) -> list[str]:
        return [str(keyplane_bin()), "serve", "--port", str(self.port)]

    def peak_rss_kb(self) -> int:
        return vm_kb(self.proc.pid, "VmHWM") if self.proc else 0

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def close(self, timeout_s: float = 30) -> None:
        # SIGTERM lets keyplane shut down gracefully, which flushes the usage buffer. (Not SIGINT:
        # a shell starting us in the background makes children ignore it.)
        if self.proc is not None:
            self.clean_stop = stop(self.proc, signal.SIGTERM, timeout_s, "keyplane")


class BareProxy(Gateway):
    """bench/bare_proxy.py: keyplane's server and upstream client forwarding to ``upstream_base``
    with no check at all, run as keyplane is (same build and environment as ``data``'s)."""

    def _command(self) -> list[str]:
        script = Path(__file__).resolve().parent / "bare_proxy.py"
        return [sys.executable, str(script), "--port", str(self.port)]


# --- usage records -------------------------------------------------------------------------------


@dataclass
class UsageTotals:
    records: int = 0
    status_200: int = 0
    estimated: int = 0
    cost_micro_usd: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    # Records whose tokens and cost are exactly what the stub reported (see expected_cost).
    exact: int = 0

    def minus(self, before: UsageTotals) -> UsageTotals:
        outcomes = {
            k: v - before.outcomes.get(k, 0)
            for k, v in self.outcomes.items()
            if v - before.outcomes.get(k, 0)
        }
        return UsageTotals(
            self.records - before.records, self.status_200 - before.status_200,
            self.estimated - before.estimated, self.cost_micro_usd - before.cost_micro_usd,
            self.input_tokens - before.input_tokens, self.output_tokens - before.output_tokens,
            outcomes, self.exact - before.exact,
        )  # fmt: skip


def expected_cost(model: str, usage: fixtures.Usage) -> int:
    """The cost keyplane's own price table gives one request with the stub's usage."""
    from keyplane.usage.pricing import PriceTable

    price = PriceTable.load().price(model, time.time())
    if price is None:
        raise BenchError(f"keyplane has no price for {model}")
    return price.token_cost(usage.input_tokens, usage.cached_input_tokens, usage.output_tokens)


def usage_totals(database: Path, model: str, usage: fixtures.Usage, cost: int) -> UsageTotals:
    """Reads the usage records straight from SQLite (much faster than the CLI's JSON at 100k rows)."""
    if not database.exists():
        return UsageTotals()
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as db:
        row = db.execute(
            "SELECT count(*), coalesce(sum(status = 200), 0), coalesce(sum(tokens_estimated), 0),"
            " coalesce(sum(cost_micro_usd), 0), coalesce(sum(input_tokens), 0),"
            " coalesce(sum(output_tokens), 0),"
            " coalesce(sum(model = ? AND input_tokens = ? AND cached_input_tokens = ?"
            "   AND output_tokens = ? AND cost_micro_usd = ? AND NOT tokens_estimated), 0)"
            " FROM usage_records",
            (model, usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, cost),
        ).fetchone()
        outcomes = dict(
            db.execute("SELECT outcome, count(*) FROM usage_records GROUP BY outcome").fetchall()
        )
    return UsageTotals(
        records=row[0], status_200=row[1], estimated=row[2], cost_micro_usd=row[3],
        input_tokens=row[4], output_tokens=row[5], outcomes=outcomes, exact=row[6],
    )  # fmt: skip


@dataclass
class Setup:
    """What a measurement beside the stub starts from: its work directory and request bodies, the
    stub running, keyplane's data directory initialized, and the cores to pin to."""

    wd: Path
    bodies: dict[str, Path]
    stub: Stub
    data: DataDir
    sut: str | None  # cores for the processes under test
    load: str | None  # cores for wrk


@contextlib.contextmanager
def stub_and_data(at: str | None, plain: bool) -> Iterator[Setup]:
    """A work directory with the stub started and a data directory for keyplane as of ``at``
    (the work tree when None); removed, and the stub stopped, on the way out."""
    sut, load = cpu_split()
    with workdir(keep=False) as wd:
        bodies = write_bodies(wd)
        src = export_source(at, wd / "snapshot")[0] if at else None
        stub = Stub(wd, sut)
        try:
            stub.start()
            data = DataDir(wd, src, plain=plain)
            data.init()
            yield Setup(wd, bodies, stub, data, sut, load)
        finally:
            stub.close()
