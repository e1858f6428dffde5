"""Soak: keyplane's memory under steady load, slice by slice (issue #6: RSS ≤ 120 MB, flat over 10
minutes, no growth beyond 10%).

    .venv/bin/python bench/soak.py                  # 10 minutes of chat, non-streaming, c=16
    .venv/bin/python bench/soak.py --minutes 1      # a short look
    .venv/bin/python bench/soak.py --record         # ... and append the figures to RESULTS.md

The same pieces as run.py: the nginx stub, a fresh keyplane data directory, one `keyplane serve`
(default settings) pinned with the stub to BENCH_SUT_CPUS, wrk on BENCH_LOAD_CPUS. wrk runs in
consecutive slices (``--slice`` seconds, 30 by default) with no pause between them; after each
slice keyplane's VmRSS is read from /proc. Growth is measured from the RSS at the end of the
first minute (caches, pools and allocator arenas filled by then) to the last sample; the first
slice is shown too. At the end, the same accounting check as run.py: one usage record per
request keyplane forwarded, each with the stub's exact usage and cost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (
    BenchError,
    core_seconds,
    cpu_split,
    entry,
    failed,
    git_commit,
    log,
    machine,
    vm_kb,
    workdir,
    write_bodies,
)
from load import WrkResult, run_wrk
from report import record
from run import SCENARIOS, Accounting
from stub import Stub
from target import DataDir, Gateway, expected_cost, export_source, usage_totals

RSS_GOAL_MB = 120
GROWTH_GOAL = 0.10
GOAL_MINUTES = 10
SCENARIO = SCENARIOS["chat"]


@dataclass
class Slice:
    end_s: float  # since the load started
    wrk: WrkResult
    rss_kb: int  # VmRSS right after the slice
    hwm_kb: int  # VmHWM (peak RSS so far)
    cpu_ms_per_request: float
    foreign: float  # other programs' share of the pinned cores during the slice


@dataclass
class Soak:
    slices: list[Slice]
    accounting: Accounting
    cpus: tuple[str | None, str | None]
    load_at_start: str

    @property
    def baseline(self) -> Slice:
        """The sample at the end of the first minute; the first slice when that is the last."""
        earlier = self.slices[:-1] or self.slices
        return next((s for s in earlier if s.end_s >= 60 - 1), earlier[0])

    @property
    def growth(self) -> float:
        return self.slices[-1].rss_kb / self.baseline.rss_kb - 1


def one_slice(
    gateway: Gateway, stub: Stub, url: str, body: Path, key: str, args: argparse.Namespace,
    cpus: tuple[str | None, str | None],
) -> tuple[WrkResult, float, float]:  # fmt: skip
    """One wrk run; returns it, keyplane's CPU ms per request and other programs' load."""
    sut, load = cpus
    t0, sut0, load0 = time.monotonic(), core_seconds(sut), core_seconds(load)
    stub0, gw0 = stub.cpu_seconds(), gateway.cpu_seconds()
    result = run_wrk(url, body, key, args.connections, args.slice, load)
    wall = time.monotonic() - t0
    stub_cpu, gw_cpu = stub.cpu_seconds() - stub0, gateway.cpu_seconds() - gw0
    result.cpu_s = gw_cpu
    foreign = 0.0
    if sut is not None and wall > 0:
        # As run.py: wrk's core counts only when wrk needs it.
        sut_other = core_seconds(sut) - sut0 - stub_cpu - gw_cpu
        load_other = core_seconds(load) - load0 - result.wrk_cpu_s
        wrk_busy = result.wrk_cpu_s / wall > 0.5
        foreign = max(0.0, sut_other, load_other if wrk_busy else 0.0) / wall
    return result, result.cpu_ms_per_request, foreign


def soak(args: argparse.Namespace, wd: Path, src: Path | None) -> Soak:
    cpus = cpu_split()
    load_at_start = machine()["loadavg"]
    body = write_bodies(wd)[SCENARIO.body]
    unit_cost = expected_cost(SCENARIO.model, SCENARIO.usage)
    stub = Stub(wd, cpus[0])
    slices: list[Slice] = []
    try:
        stub.start()
        data = DataDir(wd, src)
        data.init()
        posts_before = stub.forwarded_posts()
        gateway = Gateway(data, stub.upstream + SCENARIO.upstream_prefix, cpus[0])
        gateway.start()
        assert gateway.proc is not None
        pid = gateway.proc.pid
        count = max(1, math.ceil(args.minutes * 60 / args.slice))
        log(f"keyplane on {gateway.url} (pid {pid}): {count} slices of {args.slice:g} s")
        url = gateway.url + SCENARIO.path
        started = time.monotonic()
        try:
            for i in range(count):
                wrk, cpu_ms, foreign = one_slice(gateway, stub, url, body, data.key, args, cpus)
                rss, hwm = vm_kb(pid, "VmRSS"), vm_kb(pid, "VmHWM")
                if rss == 0:
                    raise BenchError("keyplane is gone")
                slices.append(Slice(time.monotonic() - started, wrk, rss, hwm, cpu_ms, foreign))
                log(
                    f"slice {i + 1}/{count}: {wrk.rps:7.0f} req/s, p99 {wrk.p99_ms:7.2f} ms, "
                    f"RSS {rss / 1024:6.1f} MB (peak {hwm / 1024:.1f}), other load {foreign:.0%}"
                )
        finally:
            gateway.close()
        after = usage_totals(data.database, SCENARIO.model, SCENARIO.usage, unit_cost)
        forwarded = stub.forwarded_posts() - posts_before
    finally:
        stub.close()
    runs = [s.wrk for s in slices]
    other: dict[int, int] = {}
    for r in runs:
        for code, n in r.statuses.items():
            if code != 200:
                other[code] = other.get(code, 0) + n
    accounting = Accounting(
        wrk_ok=sum(r.ok for r in runs),
        wrk_other=other,
        wrk_socket_errors=sum(r.socket_errors for r in runs),
        in_flight_bound=sum(r.connections for r in runs),
        forwarded=forwarded,
        usage=after,  # a fresh data directory: every record is from this soak
        unit_cost=unit_cost,
        clean_stop=gateway.clean_stop,
    )
    accounting.check(stream=False)
    return Soak(slices, accounting, cpus, load_at_start)


def report(s: Soak, args: argparse.Namespace, commit: str) -> str:
    m = machine()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sut, load = s.cpus
    pin = f"stub + keyplane on CPU {sut}, wrk on CPU {load}" if sut else "NOT pinned"
    first, last, base = s.slices[0], s.slices[-1], s.baseline
    peak_rss = max(x.rss_kb for x in s.slices) / 1024
    hwm = last.hwm_kb / 1024
    minutes = last.end_s / 60
    lines = [
        f"## {when} · commit {commit} · soak, {minutes:.1f} minutes (bench/soak.py)",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram']} RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, nginx {m.get('nginx', '?')}, wrk {m.get('wrk', '?')}. {pin}. "
        f"Load average at the start: {s.load_at_start}, at the end: {m['loadavg']}. "
        f"{SCENARIO.title}, c={args.connections}, wrk -t1, keep-alive, {len(s.slices)} "
        f"consecutive slices of {args.slice:g} s; keyplane's VmRSS read after each.",
        "",
        "| slice | end s | req/s | p50 ms | p99 ms | CPU ms/req | VmRSS MB | other load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, x in enumerate(s.slices, 1):
        lines.append(
            f"| {i} | {x.end_s:.0f} | {x.wrk.rps:,.0f} | {x.wrk.p50_ms:.2f} | {x.wrk.p99_ms:.2f} "
            f"| {x.cpu_ms_per_request:.3f} | {x.rss_kb / 1024:.1f} | {x.foreign:.0%} |"
        )
    rss_ok = hwm <= RSS_GOAL_MB
    flat_ok = s.growth <= GROWTH_GOAL
    short = (
        f" — but this soak lasted {minutes:.1f} minutes, the goal asks {GOAL_MINUTES}"
        if minutes < GOAL_MINUTES - 0.1
        else ""
    )
    a, u = s.accounting, s.accounting.usage
    verdict = "OK" if not a.problems else "MISMATCH: " + "; ".join(a.problems)
    lines += [
        "",
        f"RSS: {first.rss_kb / 1024:.1f} MB after the first slice, {base.rss_kb / 1024:.1f} MB "
        f"at {base.end_s:.0f} s (the baseline), {last.rss_kb / 1024:.1f} MB at the end, "
        f"{peak_rss:.1f} MB the highest sample, {hwm:.1f} MB peak (VmHWM). Growth from the "
        f"baseline to the end: **{s.growth:+.1%}**.",
        "",
        f"Issue 6 goals: RSS ≤ {RSS_GOAL_MB} MB under load: peak {hwm:.1f} MB "
        f"{'met' if rss_ok else 'NOT met'}; flat (growth ≤ {GROWTH_GOAL:.0%}): "
        f"{s.growth:+.1%} {'met' if flat_ok else 'NOT met'}{short}.",
        "",
        f"Accounting: {u.records:,} usage records, {a.forwarded:,} requests forwarded to the stub, "
        f"{a.wrk_ok:,} 200s counted by wrk (+{u.status_200 - a.wrk_ok} answered after wrk's "
        f"cutoffs), {u.cost_micro_usd:,} µ$ billed = {u.records:,} × {a.unit_cost} µ$ → "
        f"**{verdict}**",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to load keyplane")
    parser.add_argument("--slice", type=float, default=30.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--at", metavar="REV", help="measure src/ as of this commit")
    args = parser.parse_args()
    started = time.monotonic()
    with workdir(args.keep) as wd:
        src, commit = None, git_commit()
        if args.at:
            src, commit = export_source(args.at, wd / "snapshot")
            sys.path.insert(0, str(src))  # so expected_cost() prices with that commit's table
            log(f"measuring commit {commit} (src exported to {src})")
        result = soak(args, wd, src)
    text = report(result, args, commit)
    print(text)
    if args.record:
        record(text)
    log(f"done in {time.monotonic() - started:.0f} s")
    return failed(result.accounting.problems, "ACCOUNTING MISMATCH")


if __name__ == "__main__":
    entry(main)
