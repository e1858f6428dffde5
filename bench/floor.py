"""How much of keyplane's cost is its checks and how much is a proxy in Python at all: the stub
direct, a bare proxy on keyplane's own server and client (bench/bare_proxy.py: no key, limits,
money or metering) and keyplane, measured in turn in one run, as run.py measures them (wrk on
the load core, the rest on the measured core).

    .venv/bin/python bench/floor.py [--connections 16] [--scenario chat] [--repeats 3]
                                    [--duration 4] [--plain]

Prints a table (medians over the repeats, with the spread) and each target's added latency over
direct. Not recorded in RESULTS.md by itself: quote it in a notes section.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

from harness import entry, log
from load import WrkResult, run_wrk
from run import SCENARIOS
from target import BareProxy, Gateway, stub_and_data


def _median(runs: list[WrkResult], value: Callable[[WrkResult], float]) -> str:
    values = [value(r) for r in runs]
    return f"{statistics.median(values):,.3f} ({min(values):,.3f}–{max(values):,.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--scenario", default="chat", choices=sorted(SCENARIOS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--plain", action="store_true", help="plain Python, not compiled")
    args = parser.parse_args()
    scenario, c = SCENARIOS[args.scenario], args.connections
    with stub_and_data(None, args.plain) as s:
        upstream = s.stub.upstream + scenario.upstream_prefix
        gateway = Gateway(s.data, upstream, s.sut)
        bare = BareProxy(s.data, upstream, s.sut)
        try:
            gateway.start()
            bare.start()
            targets = {
                "direct to the stub": (s.stub.direct + scenario.direct_path, s.stub.cpu_seconds),
                "bare proxy (no checks)": (bare.url + scenario.path, bare.cpu_seconds),
                "keyplane": (gateway.url + scenario.path, gateway.cpu_seconds),
            }
            body = s.bodies[scenario.body]
            runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
            for rep in range(args.repeats + 1):  # the first round warms up, not counted
                names = list(targets) if rep % 2 == 0 else list(reversed(targets))
                for name in names:
                    url, cpu = targets[name]
                    before = cpu()
                    result = run_wrk(url, body, s.data.key, c, args.duration if rep else 2, s.load)
                    result.cpu_s = cpu() - before
                    if rep:
                        runs[name].append(result)
                        log(f"{name:24} #{rep}: {result.rps:9,.0f} req/s p50 {result.p50_ms:.3f} "
                            f"p99 {result.p99_ms:.3f} ms, CPU {result.cpu_ms_per_request:.3f} ms/req")  # fmt: skip
        finally:
            bare.close()
            gateway.close()
    direct = runs["direct to the stub"]
    base50 = statistics.median(r.p50_ms for r in direct)
    base99 = statistics.median(r.p99_ms for r in direct)
    print(
        f"\n{scenario.title}, c={c}, {args.repeats} × {args.duration:g} s per target, interleaved\n"
    )
    print("| target | req/s | p50 ms | p99 ms | added p50 / p99 ms | CPU ms/req |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        rps = statistics.median(r.rps for r in rs)
        p50 = statistics.median(r.p50_ms for r in rs)
        p99 = statistics.median(r.p99_ms for r in rs)
        added = "—" if rs is direct else f"+{p50 - base50:.3f} / +{p99 - base99:.3f}"
        cpu = statistics.median(r.cpu_ms_per_request for r in rs)
        print(f"| {name} | {rps:,.0f} | {_median(rs, lambda r: r.p50_ms)} | "
              f"{_median(rs, lambda r: r.p99_ms)} | {added} | {cpu:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    entry(main)
