"""Who had the measured core during a run, and how long the stub and keyplane's loop waited for it.

    .venv/bin/python bench/schedwait.py [-c 16] [--seconds 8] [--at REV]

The chat scenario as `run.py` runs it (stub and keyplane pinned to BENCH_SUT_CPUS, wrk on
BENCH_LOAD_CPUS), one wrk run after a warm-up. Prints each thread's share of the core from
/proc/<pid>/task/<tid>/schedstat (time running, time runnable but waiting, slices), and, when
`perf` can record scheduler tracepoints (Debian's `linux-perf`; as root), a 3-second
`perf sched record` of that core with how often nginx (woken by a forwarded request) and keyplane's
loop thread waited more than 0.5 and 1 ms to run: a wait of nginx delays every request forwarded
meanwhile (bench/RESULTS.md, 2026-12-05 05:50 notes). For understanding only, nothing recorded.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from pathlib import Path

from harness import entry, log, pinned
from load import run_wrk
from target import Gateway, stub_and_data

PATH = "/v1/chat/completions"
TRACE_S = 3
Threads = dict[tuple[int, int], tuple[str, int, int, int]]  # (pid, tid) → comm, run, wait, slices


def threads() -> Threads:
    out: Threads = {}
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*"):
        try:
            comm = (task / "comm").read_text().strip()
            run, wait, slices = map(int, (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue  # (gone meanwhile)
        out[(int(task.parent.parent.name), int(task.name))] = (comm, run, wait, slices)
    return out


def waits(trace: Path, loop_pid: int) -> dict[str, list[float]]:
    """Scheduling delays (ms) of nginx's wake-ups and of keyplane's loop thread in ``trace``."""
    done = subprocess.run(
        ["perf", "sched", "timehist", "-i", str(trace)], capture_output=True, text=True, check=False
    )
    out: dict[str, list[float]] = {"nginx": [], "keyplane loop": []}
    loop = re.compile(rf"^keyplane\[{loop_pid}\]$")  # (a worker thread shows as name[tid/pid])
    for line in done.stdout.splitlines()[3:]:
        fields = line.split()
        if len(fields) < 6:  # time, [cpu], task, wait, scheduling delay, run time
            continue
        task, delay = fields[2], fields[4]
        try:
            ms = float(delay)
        except ValueError:
            continue
        if task.startswith("nginx["):
            out["nginx"].append(ms)
        elif loop.match(task):
            out["keyplane loop"].append(ms)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--at", metavar="REV", help="measure src/ as of this commit")
    args = parser.parse_args()
    with stub_and_data(args.at, plain=False) as setup:
        wd, stub, data, sut, load = setup.wd, setup.stub, setup.data, setup.sut, setup.load
        perf = shutil.which("perf") if sut is not None else None
        body = setup.bodies["chat"]
        gateway = Gateway(data, stub.upstream + "/v1", sut)
        gateway.start()
        assert gateway.proc is not None
        try:
            url = gateway.url + PATH
            run_wrk(url, body, data.key, args.connections, 3, load)  # warm-up
            trace = wd / "sched.data"
            recording = None
            if perf is not None and args.seconds > TRACE_S:
                argv = [perf, "sched", "record", "-C", str(sut), "-o", str(trace)]
                recording = subprocess.Popen(  # (perf itself on wrk's core)
                    pinned(load, [*argv, "--", "sleep", str(TRACE_S)]),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            before, started = threads(), time.monotonic()
            result = run_wrk(url, body, data.key, args.connections, args.seconds, load)
            after, wall = threads(), time.monotonic() - started
            traced = recording is not None and recording.wait() == 0 and trace.exists()
            delays = waits(trace, gateway.proc.pid) if traced else {}
        finally:
            gateway.close()
    print(
        f"chat, c={args.connections}, {args.seconds:g} s: {result.rps:,.0f} req/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms (keyplane pid {gateway.proc.pid})"
    )
    print("\nthreads (any core) that ran or waited over 0.2 % of the time (schedstat):")
    rows = []
    for key, (comm, run, wait, slices) in after.items():
        if key in before:
            _, run0, wait0, slices0 = before[key]
            rows.append((run - run0, wait - wait0, slices - slices0, comm, key))
    for run, wait, slices, comm, (pid, tid) in sorted(rows, reverse=True):
        if max(run, wait) < 0.002 * wall * 1e9:
            continue
        print(
            f"  {comm:22} {pid:>7} {tid:>7}  running {run / 1e9 / wall:6.1%}  "
            f"waiting {wait / 1e9 / wall:6.1%}  {slices / wall:7,.0f} slices/s  "
            f"{run / max(slices, 1) / 1e3:7.1f} µs per slice"
        )
    if not delays:
        why = "no perf on PATH" if perf is None else "perf could not record"
        log(f"no scheduler trace ({why}; pinning off, or --seconds ≤ {TRACE_S})")
        return 0
    print(f"\nscheduling delays in a {TRACE_S} s trace of CPU {sut} (perf sched):")
    for who, ms in delays.items():
        over = [sum(1 for d in ms if d > limit) for limit in (0.5, 1.0)]
        longest = max(ms, default=0.0)
        print(
            f"  {who:14} {len(ms):6,} wake-ups/slices: over 0.5 ms {over[0]:4}, over 1 ms "
            f"{over[1]:4}, longest {longest:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    entry(main)
