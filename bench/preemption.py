"""How much of keyplane's cost on the bench's shared core is the upstream stub preempting it.

    .venv/bin/python bench/preemption.py [--pairs 3] [--seconds 3] [-c 16]

On one core, each request keyplane forwards wakes the stub (nginx), and Linux lets the task it
woke run at once: keyplane is switched out mid-pass once per request, and nginx answers one
request per wake-up. An upstream on another machine wakes nothing on keyplane's core. This runs
the chat scenario as `run.py` does, alternating runs with nginx's worker under the normal policy
(SCHED_OTHER, the method of record) and under SCHED_BATCH (a task that never preempts on wake-up:
nginx then runs when keyplane waits, answering everything queued at once). Prints req/s, CPU per
request and keyplane's context switches per request for both. For understanding only: the
figures of record (run.py, guard.py) keep the normal policy. Needs to run as root (or with
CAP_SYS_NICE) to change nginx's policy.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from harness import BenchError, entry
from load import WrkResult, run_wrk
from target import Gateway, stub_and_data

PATH = "/v1/chat/completions"
POLICIES = {"normal (SCHED_OTHER)": os.SCHED_OTHER, "batch (SCHED_BATCH)": os.SCHED_BATCH}


def _switches(pid: int) -> int:
    """Context switches of ``pid`` so far, voluntary and not."""
    status = Path(f"/proc/{pid}/status").read_text()
    return sum(int(line.split(":")[1]) for line in status.splitlines() if "ctxt_switches" in line)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (nginx's workers of its master), as the kernel lists them."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("-c", "--connections", type=int, default=16)
    args = parser.parse_args()
    results: dict[str, list[tuple[WrkResult, float]]] = {name: [] for name in POLICIES}
    with stub_and_data(None, plain=False) as setup:
        stub, data, sut, load = setup.stub, setup.data, setup.sut, setup.load
        body = setup.bodies["chat"]
        assert stub.proc is not None
        workers = _children(stub.proc.pid)
        if not workers:
            raise BenchError("found no nginx worker process")
        gateway = Gateway(data, stub.upstream + "/v1", sut)
        gateway.start()
        try:
            assert gateway.proc is not None
            url = gateway.url + PATH
            run_wrk(url, body, data.key, args.connections, 2, load)  # warm-up
            for i in range(args.pairs):
                for name, policy in list(POLICIES.items())[:: 1 if i % 2 == 0 else -1]:
                    for pid in workers:
                        os.sched_setscheduler(pid, policy, os.sched_param(0))
                    before = _switches(gateway.proc.pid)
                    cpu = gateway.cpu_seconds()
                    r = run_wrk(url, body, data.key, args.connections, args.seconds, load)
                    switches = (_switches(gateway.proc.pid) - before) / max(r.requests, 1)
                    r.cpu_s = gateway.cpu_seconds() - cpu
                    results[name].append((r, switches))
        finally:
            gateway.close()
    print(f"chat, c={args.connections}, {args.pairs} runs of {args.seconds:g} s per policy:")
    for name, runs in results.items():
        rps = statistics.median(r.rps for r, _ in runs)
        cpu = statistics.median(r.cpu_ms_per_request for r, _ in runs)
        switches = statistics.median(s for _, s in runs)
        print(
            f"  nginx {name}: keyplane {rps:,.0f} req/s, {cpu:.3f} ms CPU/request, "
            f"{switches:.2f} context switches/request"
        )
    return 0


if __name__ == "__main__":
    entry(main)
