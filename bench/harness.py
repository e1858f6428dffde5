"""Shared helpers of the benchmark: processes, pinning, /proc figures, the machine, the work directory.

The pieces themselves: stub.py (the nginx upstream), target.py (keyplane under test), load.py (wrk).
Everything listens on 127.0.0.1 only. The processes under test (nginx and keyplane) are pinned to
one core and wrk to another, so the gateway's cost shows up as throughput lost on its own core
rather than being hidden by spare cores.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import fixtures

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WRK_SCRIPT = BENCH_DIR / "wrk.lua"
RESULTS = BENCH_DIR / "RESULTS.md"
HOST = "127.0.0.1"


class BenchError(RuntimeError):
    """The benchmark could not run (a tool is missing, a process did not start)."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def entry(main: Callable[[], int]) -> NoReturn:
    """Runs a script's ``main``: its return code, or 2 with the reason on a BenchError. SIGTERM
    ends it as Ctrl-C does, through its ``finally`` blocks: killed by Python's default handler
    instead, a script left its keyplane and nginx running (one stayed pinned to the measured core
    for 40 minutes, 2026-12-05)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"FAILED: {exc}")
        sys.exit(2)


def failed(problems: Sequence[str], heading: str = "") -> int:
    """Prints ``problems`` to stderr; returns the exit code (1 if there were any)."""
    if not problems:
        return 0
    if heading:
        print(f"\n!!! {heading} !!!", file=sys.stderr)
    for p in problems:
        print(f"!!! {p}", file=sys.stderr)
    return 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_split() -> tuple[str | None, str | None]:
    """Returns (cores for the processes under test, cores for wrk), or (None, None) to not pin."""
    sut = os.environ.get("BENCH_SUT_CPUS", "0")
    load = os.environ.get("BENCH_LOAD_CPUS", "1")
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        log("WARNING: fewer than 2 cores or no taskset: not pinning; figures are not comparable")
        return None, None
    return sut, load


def pinned(cpus: str | None, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else list(argv)


def vm_kb(pid: int, field_name: str) -> int:
    """A /proc/PID/status memory figure (VmHWM = peak RSS, VmRSS = current) in kB, 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_seconds(cpus: str | None) -> float:
    """Busy CPU time of the cores in ``cpus`` ("0" or "0,2") so far, from /proc/stat."""
    if cpus is None:
        return 0.0
    wanted = {f"cpu{c.strip()}" for c in cpus.split(",")}
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name in wanted:
            # user, nice, system: what processes ran. Interrupt and softirq time is left out: on
            # loopback most of it is the kernel carrying the benchmark's own packets.
            t = [int(x) for x in ticks[:3]]
            busy += t[0] + t[1] + t[2]
    return busy / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{url} did not answer within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[bytes], sig: int, timeout_s: float, what: str) -> bool:
    """Stops ``proc`` with ``sig``; returns False (and kills it) when it did not exit in time."""
    if proc.poll() is not None:
        return True
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        log(f"WARNING: {what} did not stop within {timeout_s:.0f} s; killing it")
        proc.kill()
        proc.wait()
        return False


# --- statistics and the machine --------------------------------------------------------------------


@dataclass
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


# How the keyplane under test runs (target.compiled sets it), for the Machine line.
KEYPLANE_BUILD: list[str] = []


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": model.group(1).strip() if model else "unknown",
        "ram": f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "unknown",
        "kernel": os.uname().release,
        # (the interpreter's build matters: scripts/pick-python.sh)
        "python": f"{sys.version.split()[0]} ({os.path.realpath(sys._base_executable)})"
        + "".join(f"; keyplane: {b}" for b in KEYPLANE_BUILD),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    for tool, args in (("nginx", ["-v"]), ("wrk", ["-v"])):
        path = shutil.which(tool)
        if path:
            out = subprocess.run([path, *args], capture_output=True, text=True, check=False)
            text = (out.stdout + out.stderr).strip().splitlines()
            version = re.search(r"\d+\.\d+[\w.+~-]*", text[0]) if text else None
            info[tool] = version.group(0) if version else "?"
    return info


def git_commit() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    # (Not counting the results file itself: a run recorded just before does not make the next
    # one's code "dirty".)
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/RESULTS.md")
    return commit + ("+dirty" if changed else "")


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="keyplane-bench-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept the work directory {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def write_bodies(directory: Path) -> dict[str, Path]:
    bodies = {
        "chat": fixtures.CHAT_REQUEST,
        "stream": fixtures.CHAT_STREAM_REQUEST,
        "embeddings": fixtures.EMBEDDINGS_REQUEST,
    }
    out = {}
    for name, body in bodies.items():
        out[name] = directory / f"{name}.json"
        out[name].write_bytes(body)
    return out


GUARD_LINE = re.compile(r"<!-- guard: chat_c16_ratio=([0-9.]+)(?: commit=([0-9a-f]+))? -->")


def last_guard(results: Path = RESULTS) -> tuple[float, str | None] | None:
    """The last recorded guard ratio and the commit it was measured at (None if not recorded)."""
    if not results.exists():
        return None
    found = GUARD_LINE.findall(results.read_text())
    if not found:
        return None
    ratio, commit = found[-1]
    return float(ratio), commit or None
