"""Where the event loop's time goes in pieces: how long each uninterrupted piece of a request's
handling and of each background task (settlement flush, feed polls, journal housekeeping, …) holds
the loop, and each request's whole time inside keyplane, against what wrk sees.

    .venv/bin/python bench/stalls.py [-c 1] [--seconds 15] [--scenario chat] [--at REV] [--compiled]

A request waits for whatever piece holds the loop when it arrives, so the longest pieces bound what
keyplane's own scheduling adds to a tail; when wrk's p99 is well above the whole-request p99 inside
keyplane, the tail is outside its handling (the kernel, waking processes on a busy core). Runs the
real `keyplane serve` with bench/stalls_hook on its PYTHONPATH (a sitecustomize that times every
step of those coroutines and every cyclic garbage collection, and samples each millisecond how
long an event waits for the loop; SIGUSR2 dumps the figures). The timing costs ~1 µs per piece.
Plain Python by default (compiled classes cannot be patched); `--compiled` runs the compiled
request path with only the sampled waits and the collections.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from harness import BenchError, entry, log
from load import run_wrk
from run import SCENARIOS
from target import Gateway, stub_and_data

HOOK = Path(__file__).resolve().parent / "stalls_hook"


def _row(name: str, values: list[float]) -> str:
    v = sorted(values)
    n = len(v)

    def at(q: float) -> str:
        return f"{v[min(n - 1, int(n * q))] * 1000:.3f}"

    over = sum(1 for x in v if x > 0.0005)
    return (
        f"| {name} | {n:,} | {at(0.5)} | {at(0.99)} | {at(0.999)} | {v[-1] * 1000:.3f} | {over:,} |"
    )


def _dump(gateway: Gateway, out: Path) -> dict[str, Any]:
    """The figures so far: the hook writes them when signalled (whole, then renamed into place)."""
    assert gateway.proc is not None
    out.unlink(missing_ok=True)
    gateway.proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not out.exists():
        if time.monotonic() > deadline:
            raise BenchError("keyplane wrote no figures (is bench/stalls_hook loaded?)")
        time.sleep(0.05)  # (written from the gateway's signal handler)
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--connections", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--scenario", default="chat", choices=list(SCENARIOS))
    parser.add_argument("--at", metavar="REV", help="measure src/ as of this commit")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the compiled request path: sampled waits and collections only, no pieces",
    )
    args = parser.parse_args()
    scenario = SCENARIOS[args.scenario]
    # (compiled classes cannot be patched: by default plain, to time each piece)
    with stub_and_data(args.at, plain=not args.compiled) as setup:
        data, out = setup.data, setup.wd / "stalls.json"
        paths = [str(HOOK), *([data.env["PYTHONPATH"]] if "PYTHONPATH" in data.env else [])]
        data.env["PYTHONPATH"] = os.pathsep.join(paths)
        data.env["KEYPLANE_BENCH_STALLS"] = str(out)
        gateway = Gateway(data, setup.stub.upstream + scenario.upstream_prefix, setup.sut)
        gateway.start()
        try:
            url, body = gateway.url + scenario.path, setup.bodies[scenario.body]
            run_wrk(url, body, data.key, args.connections, 2, setup.load)  # warm-up
            warm = _dump(gateway, out)  # (the warm-up's figures, left out below)
            wrk = run_wrk(url, body, data.key, args.connections, args.seconds, setup.load)
            figures = _dump(gateway, out)
        finally:
            gateway.close()
    # Only what the measured run added (the lists only grow).
    pieces = {k: v[len(warm["pieces"].get(k, [])) :] for k, v in figures["pieces"].items()}
    whole = figures["whole"][len(warm["whole"]) :]
    log(f"{args.scenario}, c={args.connections}, {args.seconds} s")
    print(f"wrk: {wrk.rps:,.0f} req/s, p50 {wrk.p50_ms:.3f} ms, p99 {wrk.p99_ms:.3f} ms\n")
    print("| on the loop | pieces | p50 ms | p99 ms | p99.9 ms | max ms | over 0.5 ms |")
    print("|---|---|---|---|---|---|---|")
    if whole:
        print(_row("a request, whole (app called → returned)", whole))
    for name, values in sorted(pieces.items(), key=lambda kv: -len(kv[1])):
        if values:
            print(_row(f"`{name}`, a piece", values))
    return 0


if __name__ == "__main__":
    entry(main)
