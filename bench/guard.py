"""Regression guard for CI: keyplane's throughput relative to the bare stub, measured in one run.

    make bench-guard        # about 15 s (about 25 s when it has to re-check)

Runs the chat (non-streaming) scenario at c=16: three 1-second runs against the stub directly and
three through keyplane, interleaved, and compares the best of each side (other work on the machine
only ever lowers throughput, so the fastest run is the least disturbed). It fails when
keyplane/direct falls below half of the ratio recorded by the last `make bench` in
bench/RESULTS.md (the `<!-- guard: chat_c16_ratio=… -->` line), confirmed by a second attempt so a
burst of other work cannot fail it alone. A ratio, not req/s, so a slower CI machine does not flap
it; half, so only a real regression (say, a database round trip added to every request) trips it.
It also fails on any non-200 answer: a gateway that answers 401 or 500 fast must not pass as fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness import (
    RESULTS,
    cpu_split,
    entry,
    last_guard_ratio,
    workdir,
    write_bodies,
)
from load import WrkResult, run_wrk
from stub import Stub
from target import DataDir, Gateway, export_source

CONNECTIONS = 16
PATH = "/v1/chat/completions"


def attempt(
    stub: Stub, gateway: Gateway, data: DataDir, body: Path, runs: int, seconds: float,
    load: str | None,
) -> tuple[float, list[WrkResult], list[WrkResult]]:  # fmt: skip
    direct: list[WrkResult] = []
    through: list[WrkResult] = []
    for i in range(runs):
        for side in ("direct", "keyplane") if i % 2 == 0 else ("keyplane", "direct"):
            if side == "direct":
                direct.append(run_wrk(stub.direct + PATH, body, "", CONNECTIONS, seconds, load))
            else:
                through.append(run_wrk(gateway.url + PATH, body, data.key, CONNECTIONS, seconds, load))  # fmt: skip
    best_direct = max(r.rps for r in direct)
    ratio = max(r.rps for r in through) / best_direct if best_direct else 0.0
    return ratio, direct, through


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per side")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--at", metavar="REV", help="measure src/ as of this commit")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the ratio is recorded")
    args = parser.parse_args()
    started = time.monotonic()
    recorded = last_guard_ratio(args.results)
    sut, load = cpu_split()
    failures: list[str] = []
    with workdir(keep=False) as wd:
        body = write_bodies(wd)["chat"]
        src = export_source(args.at, wd / "snapshot")[0] if args.at else None
        stub = Stub(wd, sut)
        try:
            stub.start()
            data = DataDir(wd, src)
            data.init()
            gateway = Gateway(data, stub.upstream + "/v1", sut)
            gateway.start()
            try:
                run_wrk(gateway.url + PATH, body, data.key, CONNECTIONS, 1, load)  # warm-up
                for n in (1, 2):
                    ratio, direct, through = attempt(
                        stub, gateway, data, body, args.runs, args.seconds, load
                    )
                    print(
                        f"bench-guard: attempt {n}: direct best {max(r.rps for r in direct):,.0f} "
                        f"req/s, keyplane best {max(r.rps for r in through):,.0f} req/s, "
                        f"ratio {ratio:.4f}; last recorded "
                        f"{recorded if recorded is not None else 'none'}"
                    )
                    errors: dict[int, int] = {}
                    for r in through:
                        for code, k in r.statuses.items():
                            if code != 200:
                                errors[code] = errors.get(code, 0) + k
                    sockets = sum(r.socket_errors for r in through)
                    if errors or sockets:
                        failures = [f"keyplane answered {errors} and had {sockets} socket errors"]
                        break
                    if recorded is None or ratio >= recorded / 2:
                        failures = []
                        break
                    failures = [
                        f"throughput ratio {ratio:.4f} is below half of the last recorded "
                        f"{recorded:.4f}"
                    ]
            finally:
                gateway.close()
        finally:
            stub.close()
    elapsed = time.monotonic() - started
    if recorded is None:
        print("bench-guard: no ratio recorded in bench/RESULTS.md yet (run `make bench`)")
    for f in failures:
        print(f"bench-guard: FAIL: {f}")
    if not failures:
        threshold = f" (threshold {recorded / 2:.4f})" if recorded is not None else ""
        print(f"bench-guard: OK{threshold}")
    print(f"bench-guard: took {elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    entry(main)
