"""Instructions per request of keyplane's own work (the in-process pipeline of bench/pipeline.py),
counted by valgrind's callgrind: repeatable to ~0.1 % where timings on a shared VM drift by tens of
percent, so a change's effect can be seen in one pair of runs.

    .venv/bin/python bench/instructions.py [--requests 1000] [--flush-only] [--stream] [--at REV]
                                            [--plain] [--keep FILE]
    .venv/bin/python bench/instructions.py --serve chat|stream|embeddings [--seconds 20] [--at REV]
                                            [--plain] [--keep FILE] [--bare]

Counts only the measured part: the gateway is built, warmed up (500 requests) and then the counting
is switched on (callgrind_control) for ``--requests`` requests and their settlement flush
(``--flush-only``: the requests are served uncounted and only the flush is counted). Prints
instructions per request (~10 s per 1,000 requests); ``--stream`` asks for a stream (bench/pipeline.py
``--stream``); ``--keep FILE`` keeps callgrind's output for
``callgrind_annotate --inclusive=yes FILE``. Needs valgrind (Debian package). Measures keyplane as
`make run` runs it, its request path compiled (scripts/compile.py), unless ``--plain``.

``--serve SCENARIO`` counts the whole path instead: ``keyplane serve`` under callgrind behind the
bench's nginx stub (stub.py), loaded by wrk at 16 connections as in run.py (pinned the same way).
Counting is switched on after a 5-s warm-up for ``--seconds`` of load; the figure is the
instructions over the requests the stub saw meanwhile, so it includes the HTTP server and client,
uvloop, the parsers and the settlement flushes (under valgrind, ~300 requests a second). ~1 min.
``--bare`` counts bench/bare_proxy.py the same way: the same server, client and loop with no check,
so the difference is what keyplane's checks, money and metering cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from harness import BenchError, entry, log
from target import BareProxy, Gateway, compiled, export_source, stub_and_data


def _wait_flag(flag: Path, value: str) -> None:
    while not (flag.exists() and flag.read_text().strip() == value):
        time.sleep(0.05)  # (the parent writes it once callgrind switched)


async def _child(requests: int, flush_only: bool, flag: Path, stream: bool) -> None:
    from pipeline import run, serve, setup

    from keyplane import server

    with tempfile.TemporaryDirectory() as tmp:
        gateway, secret, _ = setup(Path(tmp))
        await gateway.pipeline.auth.refresh()
        await gateway.pipeline.money.refresh()
        await run(gateway, secret, 500, stream)
        server.tune_gc()
        if flush_only:
            await serve(gateway, secret, requests, stream)
        print("READY", flush=True)
        _wait_flag(flag, "on")
        if flush_only:
            await gateway.flush()
        else:
            await run(gateway, secret, requests, stream)
        print("DONE", flush=True)
        _wait_flag(flag, "off")
        gateway.pipeline.money.close()


def _parent(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise BenchError("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = dict(os.environ)
        src: Path | None = None
        if args.at:
            src, commit = export_source(args.at, work / "src-at")
            log(f"measuring {commit}")
        if not args.plain:  # what `make run` runs: the request path compiled (scripts/compile.py)
            src = compiled(src) or src
            log(f"keyplane: {harness.KEYPLANE_BUILD[0]}")
        if src is not None:
            env["PYTHONPATH"] = str(src)
        out, flag = work / "callgrind.out", work / "flag"
        argv = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--child", "--flag", str(flag),
            "--requests", str(args.requests), *(["--flush-only"] if args.flush_only else []),
            *(["--stream"] if args.stream else []),
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() in ("READY", "DONE"):
                switch = "on" if line.strip() == "READY" else "off"
                subprocess.run(
                    ["callgrind_control", "-i", switch, str(proc.pid)],
                    check=True, capture_output=True,
                )  # fmt: skip
                flag.write_text(switch)
        if proc.wait() != 0:
            raise BenchError(f"the measured process failed (exit code {proc.returncode})")
        found = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        if found is None:
            raise BenchError("callgrind wrote no totals")
        if args.keep:
            shutil.copy(out, args.keep)  # for callgrind_annotate or kcachegrind
    what = "per settlement (flush only)" if args.flush_only else "per request (flush included)"
    print(f"{int(found.group(1)) / args.requests:,.0f} instructions {what}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Instructions per request of ``keyplane serve``, everything on its side of the sockets."""
    from load import run_wrk
    from run import SCENARIOS

    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise BenchError("valgrind is not installed (apt-get install valgrind)")
    scenario = SCENARIOS[args.serve]
    with stub_and_data(args.at, plain=args.plain) as setup:
        data, stub, sut, out = setup.data, setup.stub, setup.sut, setup.wd / "callgrind.out"
        upstream = stub.upstream + scenario.upstream_prefix
        gateway = BareProxy(data, upstream, sut) if args.bare else Gateway(data, upstream, sut)
        valgrind = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            f"--log-file={setup.wd / 'valgrind.log'}",
        ]  # fmt: skip
        try:
            gateway.start(wrapper=valgrind, ready_s=300)
            assert gateway.proc is not None
            pid = str(gateway.proc.pid)
            url, body = gateway.url + scenario.path, setup.bodies[scenario.body]
            run_wrk(url, body, data.key, 16, 5, setup.load)  # warm-up, not counted
            before = stub.forwarded_posts()
            control = ["callgrind_control", "-i"]
            subprocess.run([*control, "on", pid], check=True, capture_output=True)
            run_wrk(url, body, data.key, 16, args.seconds, setup.load)
            subprocess.run([*control, "off", pid], check=True, capture_output=True)
            requests = stub.forwarded_posts() - before
        finally:
            gateway.close(timeout_s=300)  # (callgrind writes its output as keyplane exits)
        found = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        if found is None or requests <= 0:
            raise BenchError("callgrind wrote no totals, or no request reached the stub")
        if args.keep:
            shutil.copy(out, args.keep)
    what = "the bare proxy (bench/bare_proxy.py)" if args.bare else "keyplane serve"
    print(f"{int(found.group(1)) / requests:,.0f} instructions per request, {scenario.title}, "
          f"{what} at c=16 ({requests:,} requests counted)")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--flush-only", action="store_true")
    parser.add_argument("--stream", action="store_true", help="ask for a stream (stream: true)")
    parser.add_argument("--at", metavar="REV", help="measure src/ as of this commit")
    parser.add_argument("--plain", action="store_true", help="keyplane as plain Python")
    parser.add_argument("--keep", type=Path, metavar="FILE", help="keep callgrind's output there")
    parser.add_argument(
        "--serve", choices=("chat", "stream", "embeddings"), help="count keyplane serve under load"
    )
    parser.add_argument("--seconds", type=float, default=20, help="of counted load (--serve)")
    parser.add_argument(
        "--bare", action="store_true", help="with --serve: count bench/bare_proxy.py instead"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flag", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.requests, args.flush_only, args.flag, args.stream))
        return 0
    return _serve(args) if args.serve else _parent(args)


if __name__ == "__main__":
    entry(main)
