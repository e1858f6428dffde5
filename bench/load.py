"""wrk runs: the load generator, its parseable result line, and what each run measured."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import WRK_SCRIPT, BenchError, pinned


@dataclass
class WrkResult:
    connections: int
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[int, int]
    socket_errors: int
    non_2xx: int
    raw: str
    cpu_s: float = 0.0  # CPU time the target process(es) used during the run
    wrk_cpu_s: float = 0.0  # CPU time wrk itself used
    # Share of a pinned core's time used by other programs (the tested core, or wrk's core when
    # wrk is busy): a run disturbed by other work on the machine shows here.
    foreign: float = 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / self.requests if self.requests else 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)


_RESULT_LINE = re.compile(r"^BENCH_RESULT (.*)$", re.M)


def parse_wrk(output: str, connections: int) -> WrkResult:
    m = _RESULT_LINE.search(output)
    if m is None:
        raise BenchError(f"wrk printed no BENCH_RESULT line:\n{output[-2000:]}")
    fields = dict(pair.split("=", 1) for pair in m.group(1).split())
    statuses = {}
    if fields["statuses"] != "-":
        statuses = {
            int(k): int(v) for k, v in (p.split(":") for p in fields["statuses"].split(","))
        }
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return WrkResult(
        connections=connections,
        requests=int(fields["requests"]),
        duration_s=int(fields["duration_us"]) / 1e6,
        p50_ms=int(fields["p50_us"]) / 1000,
        p90_ms=int(fields["p90_us"]) / 1000,
        p99_ms=int(fields["p99_us"]) / 1000,
        max_ms=int(fields["max_us"]) / 1000,
        statuses=statuses,
        socket_errors=sum(
            int(fields[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout")
        ),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        raw=output,
    )


def run_wrk(
    url: str,
    body: Path,
    key: str,
    connections: int,
    duration_s: float,
    cpus: str | None,
    raw_log: Path | None = None,
) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed (run bench/setup.sh)")
    seconds = max(1, round(duration_s))
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    argv += ["-s", str(WRK_SCRIPT), url]
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_KEY": key}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        pinned(cpus, argv), env=env, capture_output=True, text=True, timeout=seconds + 60,
        check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    if raw_log is not None:
        with raw_log.open("a") as f:
            f.write(f"$ wrk -c{connections} -d{seconds}s {url}\n{output}\n")
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{output[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_wrk(output, connections)
    result.wrk_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result
