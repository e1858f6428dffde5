"""Profile keyplane under load: wrk drives the chat scenario while py-spy samples the gateway.

    .venv/bin/pip install py-spy          # a developer tool, deliberately not in the lock file
    .venv/bin/python bench/pyspy.py [--seconds 15] [--connections 16] [--scenario chat] [--at REV]

Prints the hottest functions by own time and by inclusive time, and keeps the collapsed stacks
(for flamegraph.pl or speedscope; path printed at the end).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from harness import BenchError, cpu_split, entry, log, pinned, workdir, write_bodies
from load import run_wrk
from run import SCENARIOS
from stub import Stub
from target import DataDir, Gateway, export_source

_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``handle (…/site-packages/httpx/_client.py:123)`` → ``httpx/_client.py:handle``."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = m.group("file")
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{m.group('fn')}"


def summarize(raw: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
        files[frames[-1].split(":", 1)[0]] += n
    if not total:
        return "py-spy recorded no samples"
    out = [f"{total} samples of busy threads"]
    for title, counter in (
        ("own time (the frame on top of the stack)", own),
        ("inclusive time (anywhere on the stack)", inclusive),
        ("own time by file", files),
    ):
        out += ["", f"Top {top} by {title}:"]
        out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--scenario", default="chat", choices=list(SCENARIOS))
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--all-threads", action="store_true",
        help="sample every running thread (default: only the one holding the GIL, i.e. where "
        "Python CPU time goes)",
    )  # fmt: skip
    parser.add_argument(
        "--nonblocking", action="store_true",
        help="do not pause keyplane for each sample (less slowdown, but some stacks come out torn)",
    )  # fmt: skip
    parser.add_argument("--at", metavar="REV", help="profile src/ as of this commit")
    parser.add_argument("--out", type=Path, default=Path("/tmp/keyplane-profile"))
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    scenario = SCENARIOS[args.scenario]
    sut, load = cpu_split()
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "stacks.txt"
    with workdir(keep=False) as wd:
        bodies = write_bodies(wd)
        src = export_source(args.at, wd / "snapshot")[0] if args.at else None
        stub = Stub(wd, sut)
        try:
            stub.start()
            data = DataDir(wd, src, plain=True)  # (py-spy sees no Python frames in compiled code)
            data.init()
            gateway = Gateway(data, stub.upstream + scenario.upstream_prefix, sut)
            gateway.start()
            try:
                url = gateway.url + scenario.path
                body = bodies[scenario.body]
                run_wrk(url, body, data.key, args.connections, 2, load)  # warm-up
                assert gateway.proc is not None
                base = [py_spy, "record", "--pid", str(gateway.proc.pid), "--rate", str(args.rate)]
                base += ["--duration", str(args.seconds)]
                base += [] if args.all_threads else ["--gil"]
                base += ["--nonblocking"] if args.nonblocking else []
                # py-spy samples from the load generator's core, not from the one under test.
                spy = subprocess.Popen(pinned(load, [*base, "--format", "raw", "-o", str(raw)]))
                result: list[object] = []
                seconds = args.seconds + 1
                load_thread = threading.Thread(
                    target=lambda: result.append(
                        run_wrk(url, body, data.key, args.connections, seconds, load)
                    )
                )
                load_thread.start()
                spy.wait(timeout=args.seconds + 60)
                load_thread.join()
            finally:
                gateway.close()
        finally:
            stub.close()
    wrk = result[0] if result else None
    if wrk is not None:
        log(f"under profile: {wrk.rps:.0f} req/s, p50 {wrk.p50_ms:.3f} ms")  # type: ignore[attr-defined]
    print(summarize(raw, args.top))
    print(f"\ncollapsed stacks (for flamegraph.pl or speedscope): {raw}")
    return 0


if __name__ == "__main__":
    entry(main)
