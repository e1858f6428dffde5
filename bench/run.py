"""keyplane's benchmark: keyplane against the bare upstream stub, side by side, in the same run.

    make bench                     # the full run (~8 minutes), appended to bench/RESULTS.md
    .venv/bin/python bench/run.py --quick --no-record    # a ~2-minute look, nothing recorded

See bench/README.md for the method and what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fixtures
from harness import (
    core_seconds,
    cpu_split,
    entry,
    failed,
    git_commit,
    log,
    machine,
    workdir,
    write_bodies,
)
from load import WrkResult, run_wrk
from report import record, report
from stub import Stub
from target import DataDir, Gateway, UsageTotals, expected_cost, export_source, usage_totals


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str  # on keyplane
    upstream_prefix: str  # keyplane's upstream base URL is the stub + this
    body: str  # key of write_bodies()
    model: str
    usage: fixtures.Usage
    stream: bool = False

    @property
    def direct_path(self) -> str:
        return self.upstream_prefix + self.path.removeprefix("/v1")


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "chat", "chat, non-streaming", "/v1/chat/completions", "/v1", "chat",
            fixtures.CHAT_MODEL, fixtures.CHAT_USAGE,
        ),
        Scenario(
            "stream", "chat, streaming", "/v1/chat/completions", "/stream/v1", "stream",
            fixtures.CHAT_MODEL, fixtures.CHAT_USAGE, stream=True,
        ),
        Scenario(
            "embeddings", "embeddings, 17 KB body", "/v1/embeddings", "/v1", "embeddings",
            fixtures.EMBEDDING_MODEL, fixtures.EMBEDDINGS_USAGE,
        ),
    )
}  # fmt: skip


# Settlements are written every 0.2 s; a run may end with up to a few flushes' worth unwritten.
MAX_BEHIND_S = 1.0


@dataclass
class Accounting:
    wrk_ok: int
    wrk_other: dict[int, int]
    wrk_socket_errors: int
    in_flight_bound: int  # requests wrk may have abandoned when its time was up
    forwarded: int  # POSTs keyplane sent to the stub
    usage: UsageTotals
    unit_cost: int
    clean_stop: bool
    behind_s: float = 0.0  # see measure(): settlements unwritten after a run, in seconds of traffic
    problems: list[str] = field(default_factory=list)

    def check(self, stream: bool) -> None:
        u = self.usage
        if u.records != self.forwarded:
            self.problems.append(
                f"{u.records} usage records but keyplane forwarded {self.forwarded} requests"
            )
        if not self.wrk_ok <= u.status_200 <= self.wrk_ok + self.in_flight_bound:
            self.problems.append(
                f"{u.status_200} usage records with status 200 but wrk counted {self.wrk_ok} "
                f"200 responses (at most {self.in_flight_bound} may be in flight at wrk's cutoff)"
            )
        if self.wrk_other or self.wrk_socket_errors:
            self.problems.append(
                f"errors seen by wrk: statuses {self.wrk_other or '{}'}, "
                f"{self.wrk_socket_errors} socket errors"
            )
        inexact = u.records - u.exact
        # A stream the client abandoned at wrk's cutoff may be billed on keyplane's own estimate.
        allowed = self.in_flight_bound if stream else 0
        if inexact > allowed:
            self.problems.append(
                f"{inexact} records do not carry the stub's exact usage and cost "
                f"({u.estimated} estimated; outcomes {u.outcomes})"
            )
        if u.exact == u.records and u.cost_micro_usd != u.records * self.unit_cost:
            self.problems.append(
                f"ledger: {u.cost_micro_usd} µ$ recorded, {u.records * self.unit_cost} µ$ expected"
            )
        if not self.clean_stop:
            self.problems.append("keyplane had to be killed: queued usage may have been lost")
        if self.behind_s > MAX_BEHIND_S:
            self.problems.append(
                f"settlements fell behind: after a run, {self.behind_s:.1f} s of traffic was "
                "answered but not yet written (the throughput measured is not sustainable)"
            )


@dataclass
class ScenarioResult:
    scenario: Scenario
    runs: dict[tuple[int, str], list[WrkResult]]
    keyplane_rss_kb: int
    stub_rss_kb: int
    accounting: Accounting


def measure(
    scenario: Scenario,
    stub: Stub,
    data: DataDir,
    bodies: dict[str, Path],
    args: argparse.Namespace,
    cpus: tuple[str | None, str | None],
    raw_log: Path,
) -> ScenarioResult:
    sut_cpus, load_cpus = cpus
    unit_cost = expected_cost(scenario.model, scenario.usage)
    before = usage_totals(data.database, scenario.model, scenario.usage, unit_cost)
    posts_before = stub.forwarded_posts()
    gateway = Gateway(data, stub.upstream + scenario.upstream_prefix, sut_cpus)
    log(f"{scenario.name}: keyplane on {gateway.url}, upstream {gateway.upstream_base}")
    gateway.start()
    body = bodies[scenario.body]
    direct_url = stub.direct + scenario.direct_path
    keyplane_url = gateway.url + scenario.path
    through_keyplane: list[WrkResult] = []
    runs: dict[tuple[int, str], list[WrkResult]] = {}
    behind_s = 0.0  # the most seconds of traffic whose settlements were unwritten after a run
    try:

        def measured(url: str, key: str, c: int, seconds: float, direct: bool) -> WrkResult:
            t0, sut0, load0 = time.monotonic(), core_seconds(sut_cpus), core_seconds(load_cpus)
            stub0, gw0 = stub.cpu_seconds(), gateway.cpu_seconds()
            result = run_wrk(url, body, key, c, seconds, load_cpus, raw_log)
            wall = time.monotonic() - t0
            stub_cpu, gw_cpu = stub.cpu_seconds() - stub0, gateway.cpu_seconds() - gw0
            # Only the target's own CPU: on keyplane rows the stub's share is left out.
            result.cpu_s = stub_cpu if direct else gw_cpu
            if sut_cpus is not None and wall > 0:
                sut_other = core_seconds(sut_cpus) - sut0 - stub_cpu - gw_cpu
                load_other = core_seconds(load_cpus) - load0 - result.wrk_cpu_s
                # wrk's core only matters when wrk needs it (the direct runs); an idle wrk core
                # taken by other programs does not slow a keyplane run down.
                wrk_busy = result.wrk_cpu_s / wall > 0.5
                result.foreign = max(0.0, sut_other, load_other if wrk_busy else 0.0) / wall
            return result

        def direct(c: int, seconds: float) -> WrkResult:
            return measured(direct_url, "", c, seconds, direct=True)

        def keyplane(c: int, seconds: float) -> WrkResult:
            nonlocal behind_s
            result = measured(keyplane_url, data.key, c, seconds, direct=False)
            through_keyplane.append(result)
            # Settlements answered but not yet written when the run ended: a gateway that defers
            # its writes looks faster in a short run than it can sustain.
            now = usage_totals(data.database, scenario.model, scenario.usage, unit_cost)
            served = sum(r.ok for r in through_keyplane)
            unwritten = served - (now.records - before.records)
            if result.rps:
                behind_s = max(behind_s, unwritten / result.rps)
            return result

        # Warm-up (not reported, but counted by the accounting check): fills the key cache,
        # the model list, the upstream connection pool and the CPU caches.
        direct(16, args.warmup)
        keyplane(16, args.warmup)
        for c in args.connections:
            for rep in range(args.repeats):
                # Alternate the order so a drift in the machine's speed hits both sides alike.
                order = ("direct", "keyplane") if rep % 2 == 0 else ("keyplane", "direct")
                for target in order:
                    run = (direct if target == "direct" else keyplane)(c, args.duration)
                    runs.setdefault((c, target), []).append(run)
                    log(
                        f"{scenario.name} c={c} {target:8} #{rep + 1}: {run.rps:9.0f} req/s "
                        f"p50 {run.p50_ms:7.3f} ms p99 {run.p99_ms:7.3f} ms "
                        f"CPU {run.cpu_ms_per_request:.3f} ms/req, other load {run.foreign:.0%}"
                    )
        rss = gateway.peak_rss_kb()
        stub_rss = stub.rss_kb()
    finally:
        gateway.close()
    after = usage_totals(data.database, scenario.model, scenario.usage, unit_cost)
    other: dict[int, int] = {}
    for r in through_keyplane:
        for code, n in r.statuses.items():
            if code != 200:
                other[code] = other.get(code, 0) + n
    accounting = Accounting(
        wrk_ok=sum(r.ok for r in through_keyplane),
        wrk_other=other,
        wrk_socket_errors=sum(r.socket_errors for r in through_keyplane),
        in_flight_bound=sum(r.connections for r in through_keyplane),
        forwarded=stub.forwarded_posts() - posts_before,
        usage=after.minus(before),
        unit_cost=unit_cost,
        clean_stop=gateway.clean_stop,
        behind_s=behind_s,
    )
    accounting.check(scenario.stream)
    return ScenarioResult(scenario, runs, rss, stub_rss, accounting)


def mode(args: argparse.Namespace) -> str:
    if args.quick:
        return "quick"
    full = (
        args.duration >= 8
        and args.repeats >= 3
        and set(args.connections) >= {1, 16, 64}
        and set(args.scenarios) >= set(SCENARIOS)
    )
    return "full" if full else "partial"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env = os.environ.get
    parser.add_argument("--duration", type=float, default=float(env("BENCH_DURATION", "8")))
    parser.add_argument("--repeats", type=int, default=int(env("BENCH_REPEATS", "3")))
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--connections", type=lambda s: [int(c) for c in s.split(",")],
        default=[int(c) for c in env("BENCH_CONNECTIONS", "1,16,64").split(",")],
    )  # fmt: skip
    parser.add_argument(
        "--scenarios", type=lambda s: s.split(","),
        default=env("BENCH_SCENARIOS", ",".join(SCENARIOS)).split(","),
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="3 s per run (CI-short mode)")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--at", metavar="REV", default=os.environ.get("BENCH_AT") or None,
        help="measure src/ as of this commit (exported with git archive) instead of the work tree",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    cells = len(args.scenarios) * len(args.connections) * args.repeats * 2
    estimate = cells * max(1, round(args.duration)) + len(args.scenarios) * (2 * args.warmup + 8)
    log(f"{cells} wrk runs; about {estimate / 60:.1f} minutes")

    started = time.monotonic()
    # Other work on the machine skews every figure; the load average shows whether there was any.
    load_at_start = machine()["loadavg"]
    cpus = cpu_split()
    results: list[ScenarioResult] = []
    with workdir(args.keep) as wd:
        raw_log = wd / "wrk-output.log"
        bodies = write_bodies(wd)
        src, commit = None, git_commit()
        if args.at:
            src, commit = export_source(args.at, wd / "snapshot")
            sys.path.insert(0, str(src))  # so expected_cost() prices with that commit's table
            log(f"measuring commit {commit} (src exported to {src})")
        stub = Stub(wd, cpus[0])
        try:
            stub.start()
            data = DataDir(wd, src)
            data.init()
            for name in args.scenarios:
                results.append(measure(SCENARIOS[name], stub, data, bodies, args, cpus, raw_log))
        finally:
            stub.close()
        text, ratios = report(results, args, cpus, commit, load_at_start, mode(args))
        if args.json:
            raw = [
                {
                    "scenario": r.scenario.name,
                    "keyplane_rss_kb": r.keyplane_rss_kb,
                    "accounting": asdict(r.accounting),
                    "runs": {
                        f"{t}_c{c}": [{**asdict(w), "raw": None} for w in runs]
                        for (c, t), runs in r.runs.items()
                    },
                }
                for r in results
            ]
            args.json.write_text(json.dumps({"ratios": ratios, "results": raw}, indent=1))
    print(text)
    if not args.no_record:
        record(text)
    log(f"done in {time.monotonic() - started:.0f} s")
    return failed([p for r in results for p in r.accounting.problems], "ACCOUNTING MISMATCH")


if __name__ == "__main__":
    entry(main)
