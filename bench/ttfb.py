"""Streaming: time to the first SSE byte, direct to a paced upstream vs through keyplane (issue #6),
through nginx ``proxy_pass`` (the floor for any proxy hop) and through a bare proxy in Python
(the floor for a gateway in Python).

    .venv/bin/python bench/ttfb.py              # 500 streams each way, interleaved (~30 s)
    .venv/bin/python bench/ttfb.py --record     # ... and append the figures to bench/RESULTS.md

The upstream (bench/sse_upstream.py) sends the first event of a chat completion stream at once
and the rest ``--delay-ms`` later, so the first byte is not the whole answer. The client is a raw
socket (no HTTP library), one keep-alive HTTP/1.1 connection per target, one request at a time,
taking the four targets in turn (direct, nginx ``proxy_pass`` with ``proxy_buffering off``,
bench/bare_proxy.py — keyplane's own server and upstream client forwarding with no check at all —
and keyplane) so a drift in the machine's speed hits all alike. For each stream it notes, from the
moment the request was written:

- TTFB: when the first ``data:`` of the body arrived (after the status line and headers);
- the gap: when the second event arrived minus when the first did. An upstream paced by
  ``delay`` gives a gap of about ``delay``; a gateway that buffered the stream would give ~0
  (everything at once, late). Through keyplane every gap must be at least half the delay.

"Added" is keyplane's figure minus direct's (median minus median, p99 minus p99); nginx's added
TTFB is what one more process in the path costs on this machine, however little it does (waking
it, two more loopback hops), the bare proxy's what the same hop costs in Python. The upstream,
nginx and both proxies are pinned to BENCH_SUT_CPUS, this
client to BENCH_LOAD_CPUS. Afterwards the usage
records are checked: one per stream through keyplane, each with the upstream's exact usage
(read from the usage event that arrived last, after the delay).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fixtures
from harness import (
    BENCH_DIR,
    HOST,
    BenchError,
    cpu_split,
    entry,
    failed,
    free_port,
    git_commit,
    log,
    machine,
    pinned,
    stop,
    wait_http,
    workdir,
)
from report import record
from stub import nginx_config, start_nginx
from target import BareProxy, DataDir, Gateway, expected_cost, export_source, usage_totals

TTFB_GOAL_MS = 0.3


# --- the client -------------------------------------------------------------------------------------


@dataclass
class Stream:
    status: int
    ttfb_ns: int  # request written → first "data:" of the body
    gap_ns: int  # first event → second event
    total_ns: int  # request written → last byte
    events: int


class _Body:
    """Incremental decoding of a response body (chunked or Content-Length)."""

    def __init__(self, chunked: bool, length: int | None) -> None:
        self.chunked = chunked
        self.left = length
        self.data = b""
        self.done = length == 0
        self._raw = b""
        self._need = 0  # data bytes of the current chunk still to come
        self._skip = 0  # bytes of the CRLF after it still to come

    def feed(self, raw: bytes) -> None:
        if not self.chunked:
            self.data += raw
            if self.left is not None:
                self.left -= len(raw)
                self.done = self.left <= 0
            return
        self._raw += raw
        while self._raw and not self.done:
            if self._skip:
                n = min(self._skip, len(self._raw))
                self._raw, self._skip = self._raw[n:], self._skip - n
            elif self._need:
                part = self._raw[: self._need]
                self.data += part
                self._raw, self._need = self._raw[len(part) :], self._need - len(part)
                self._skip = 0 if self._need else 2
            else:
                end = self._raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(self._raw[:end].split(b";")[0], 16)
                if size == 0:
                    # The last chunk; done once the CRLF that ends the message (no trailers) is in.
                    self.done = self._raw[end + 2 : end + 4] == b"\r\n"
                    return
                self._raw, self._need = self._raw[end + 2 :], size


class Connection:
    """One keep-alive HTTP/1.1 connection sending the same streaming POST again and again."""

    def __init__(self, port: int, path: str, body: bytes, key: str) -> None:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def stream(self) -> Stream:
        t0 = time.perf_counter_ns()
        self.sock.sendall(self.request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += self._recv()
        head, _, rest = head.partition(b"\r\n\r\n")
        status, headers = _parse_head(head)
        length = headers.get("content-length")
        body = _Body(headers.get("transfer-encoding") == "chunked", int(length) if length else None)
        times: list[int] = []  # arrival time of the 1st and 2nd "data:"
        now = time.perf_counter_ns()
        while True:
            body.feed(rest)
            while len(times) < 2 and body.data.count(b"data:") > len(times):
                times.append(now)
            if body.done:
                break
            rest = self._recv()
            now = time.perf_counter_ns()
        if headers.get("connection") == "close":
            raise BenchError("the server closed the keep-alive connection")
        if len(times) < 2:
            raise BenchError(f"status {status}, fewer than two events: {body.data[:300]!r}")
        events = body.data.count(b"data:")
        return Stream(status, times[0] - t0, times[1] - times[0], now - t0, events)

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise BenchError("the server closed the connection mid-answer")
        return data


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    return int(status_line.split()[1]), headers


# --- the upstream ------------------------------------------------------------------------------------


class PacedUpstream:
    """bench/sse_upstream.py as a process, pinned like the stub."""

    def __init__(self, delay_ms: float, cpus: str | None) -> None:
        self.port = free_port()
        self.delay_ms = delay_ms
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, str(BENCH_DIR / "sse_upstream.py"), "--port", str(self.port)]
        argv += ["--delay-ms", str(self.delay_ms)]
        self.proc = subprocess.Popen(
            pinned(self.cpus, argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        wait_http(f"{self.url}/v1/models", 30, self.proc)

    def close(self) -> int | None:
        """Stops it; returns how many streams it served (None if it did not say)."""
        if self.proc is None:
            return None
        stop(self.proc, signal.SIGTERM, 10, "sse_upstream")
        assert self.proc.stdout is not None
        out = self.proc.stdout.read().decode()
        for line in out.splitlines():
            if line.startswith("streams served:"):
                return int(line.split(":")[1])
        return None


class NginxProxy:
    """nginx ``proxy_pass`` to the paced upstream: one worker, keep-alive upstream connections, no
    buffering (each event is passed on as it arrives), pinned like the upstream."""

    def __init__(self, workdir: Path, upstream_port: int, cpus: str | None) -> None:
        self.dir = workdir / "nginx-proxy"
        self.port = free_port()
        self.upstream_port = upstream_port
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        config = nginx_config(
            self.dir,
            1024,
            f"""
  keepalive_requests 1000000000;
  upstream paced {{ server {HOST}:{self.upstream_port}; keepalive 8; }}
  server {{
    listen {HOST}:{self.port};
    location / {{
      proxy_pass http://paced;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
""",
        )
        self.proc = start_nginx(self.dir, config, self.cpus)
        wait_http(f"http://{HOST}:{self.port}/v1/models", 10, self.proc)

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGQUIT, 10, "nginx")


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    streams: list[Stream] = field(default_factory=list)

    def ms(self, attr: str, q: float) -> float:
        values = sorted(getattr(s, attr) for s in self.streams)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] / 1e6


def measure(
    conns: dict[str, Connection], requests: int, warmup: int
) -> tuple[dict[str, Side], float]:
    """``requests`` streams per target, the targets in turn (the order reversed every other
    round); returns them and the wall time."""
    for _ in range(warmup):
        for conn in conns.values():
            conn.stream()
    sides = {name: Side(name) for name in conns}
    names = list(conns)
    t0 = time.monotonic()
    for i in range(requests):
        for name in names if i % 2 == 0 else reversed(names):
            sides[name].streams.append(conns[name].stream())
    return sides, time.monotonic() - t0


@dataclass
class Outcome:
    sides: dict[str, Side]
    delay_ms: float
    wall_s: float
    served: int | None  # streams the upstream served (both targets, warm-up included)
    sent: int  # streams this client asked for (both targets, warm-up included)
    records: int  # usage records keyplane wrote
    exact: int  # of which with the upstream's exact usage and cost
    keyplane_streams: int
    problems: list[str] = field(default_factory=list)

    def check(self) -> None:
        for side in self.sides.values():
            bad = [s.status for s in side.streams if s.status != 200]
            if bad:
                self.problems.append(f"{side.name}: {len(bad)} answers with status ≠ 200")
        slow = [s for s in self.sides["keyplane"].streams if s.gap_ns < self.delay_ms * 1e6 / 2]
        if slow:
            self.problems.append(
                f"{len(slow)} streams through keyplane delivered the first event less than "
                f"{self.delay_ms / 2:g} ms before the second: not forwarded as it arrived"
            )
        if self.served is not None and self.served != self.sent:
            self.problems.append(f"the upstream served {self.served} streams, {self.sent} asked")
        if self.records != self.keyplane_streams or self.exact != self.records:
            self.problems.append(
                f"{self.records} usage records ({self.exact} with the upstream's exact usage) "
                f"for {self.keyplane_streams} streams through keyplane"
            )


def run(
    args: argparse.Namespace, wd: Path, src: Path | None, cpus: tuple[str | None, str | None]
) -> Outcome:
    sut, load = cpus
    if load is not None:
        os.sched_setaffinity(0, {int(c) for c in load.split(",")})
    upstream = PacedUpstream(args.delay_ms, sut)
    upstream.start()
    served = None
    proxy = NginxProxy(wd, upstream.port, sut)
    try:
        proxy.start()
        data = DataDir(wd, src)
        data.init()
        gateway = Gateway(data, upstream.url + "/v1", sut)
        gateway.start()
        bare = BareProxy(data, upstream.url + "/v1", sut)
        bare.start()
        log(f"keyplane on {gateway.url}, paced upstream on {upstream.url} ({args.delay_ms:g} ms)")
        body = fixtures.CHAT_STREAM_REQUEST
        conns = {
            "direct": Connection(upstream.port, "/v1/chat/completions", body, ""),
            "nginx": Connection(proxy.port, "/v1/chat/completions", body, ""),
            "bare": Connection(bare.port, "/v1/chat/completions", body, ""),
            "keyplane": Connection(gateway.port, "/v1/chat/completions", body, data.key),
        }
        try:
            sides, wall = measure(conns, args.requests, args.warmup)
        finally:
            for conn in conns.values():
                conn.close()
            bare.close()
            gateway.close()
    finally:
        proxy.close()
        served = upstream.close()
    unit = expected_cost(fixtures.CHAT_MODEL, fixtures.CHAT_USAGE)
    usage = usage_totals(data.database, fixtures.CHAT_MODEL, fixtures.CHAT_USAGE, unit)
    per_side = args.requests + args.warmup
    outcome = Outcome(
        sides,
        args.delay_ms,
        wall,
        served,
        len(sides) * per_side,
        usage.records,
        usage.exact,
        per_side,
    )
    outcome.check()
    return outcome


def report(
    o: Outcome, args: argparse.Namespace, commit: str, cpus: tuple[str | None, str | None]
) -> str:
    m = machine()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    d, n, b, k = (o.sides[name] for name in ("direct", "nginx", "bare", "keyplane"))

    def over_direct(side: Side, q: float) -> float:
        return side.ms("ttfb_ns", q) - d.ms("ttfb_ns", q)

    added50, added99 = over_direct(k, 0.5), over_direct(k, 0.99)
    nginx50, nginx99 = over_direct(n, 0.5), over_direct(n, 0.99)
    bare50, bare99 = over_direct(b, 0.5), over_direct(b, 0.99)
    pin = (
        f"upstream, nginx and both proxies on CPU {cpus[0]}, client on CPU {cpus[1]}"
        if cpus[0]
        else "NOT pinned"
    )
    lines = [
        f"## {when} · commit {commit} · streaming time to first byte (bench/ttfb.py)",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram']} RAM, Linux {m['kernel']}, "
        f"Python {m['python']}. {pin}. Load average at the end: {m['loadavg']}. "
        f"{args.requests} streaming chat completions per target, one at a time over one "
        f"keep-alive connection each, the targets in turn ({args.warmup} each before, not counted), "
        f"{o.wall_s:.0f} s. The upstream (bench/sse_upstream.py, aiohttp) sends the first event "
        f"at once and the rest {o.delay_ms:g} ms later. TTFB: request written → first `data:` "
        "received; gap: first event → second event.",
        "",
        "| target | TTFB p50 ms | TTFB p99 ms | gap p50 ms | gap min ms | whole stream p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "direct": "direct to the upstream",
        "nginx": "nginx `proxy_pass`, unbuffered",
        "bare": "bare proxy in Python (no checks)",
    }
    for side in (d, n, b, k):
        lines.append(
            f"| {names.get(side.name, '**keyplane**')} "
            f"| {side.ms('ttfb_ns', 0.5):.3f} | {side.ms('ttfb_ns', 0.99):.3f} "
            f"| {side.ms('gap_ns', 0.5):.2f} | {side.ms('gap_ns', 0):.2f} "
            f"| {side.ms('total_ns', 0.5):.2f} |"
        )
    verdict = "met" if added50 <= TTFB_GOAL_MS else "NOT met"
    checks = "; ".join(o.problems) if o.problems else "OK"
    lines += [
        "",
        f"Added TTFB: **+{added50:.3f} ms** at the median (goal ≤ {TTFB_GOAL_MS} ms: {verdict}), "
        f"+{added99:.3f} ms at p99. Chunks forwarded as they arrive: the first event through "
        f"keyplane came {k.ms('gap_ns', 0.5):.1f} ms (median; at least {k.ms('gap_ns', 0):.1f}) "
        "before the rest.",
        "",
        f"One more process in the path, for comparison: nginx `proxy_pass` adds +{nginx50:.3f} ms "
        f"at the median, +{nginx99:.3f} ms at p99; a bare proxy on keyplane's own server and "
        f"client with no check at all (bench/bare_proxy.py) +{bare50:.3f} / +{bare99:.3f} ms.",
        "",
        f"Checks: {o.records} usage records for {o.keyplane_streams} streams through keyplane "
        f"(warm-up included), {o.exact} with the upstream's exact usage; the upstream served "
        f"{o.served} streams for {o.sent} asked → **{checks}**",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="streams per target")
    parser.add_argument("--warmup", type=int, default=20, help="streams per target, not counted")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the upstream's pause")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--at", metavar="REV", help="measure src/ as of this commit")
    args = parser.parse_args()
    started = time.monotonic()
    cpus = cpu_split()
    with workdir(args.keep) as wd:
        src, commit = None, git_commit()
        if args.at:
            src, commit = export_source(args.at, wd / "snapshot")
            sys.path.insert(0, str(src))
            log(f"measuring commit {commit} (src exported to {src})")
        outcome = run(args, wd, src, cpus)
    text = report(outcome, args, commit, cpus)
    print(text)
    if args.record:
        record(text)
    log(f"done in {time.monotonic() - started:.0f} s")
    return failed(outcome.problems)


if __name__ == "__main__":
    entry(main)
