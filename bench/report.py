"""The Markdown a run appends to RESULTS.md: table, accounting, the issue's goals, the guard's ratio."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
from typing import TYPE_CHECKING

from harness import RESULTS, Spread, log, machine

if TYPE_CHECKING:
    from run import ScenarioResult


def _fmt(s: Spread, digits: int) -> str:
    return f"{s.median:,.{digits}f} ({s.low:,.{digits}f}–{s.high:,.{digits}f})"


def table(results: list[ScenarioResult], connections: list[int]) -> tuple[str, dict[str, float]]:
    lines = [
        "| scenario | target | c | req/s median (min–max) | p50 ms | p99 ms "
        "| added p50 / p99 ms | CPU ms/req | peak RSS | keyplane / direct |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios: dict[str, float] = {}
    for res in results:
        for c in connections:
            d, k = res.runs[(c, "direct")], res.runs[(c, "keyplane")]
            d_rps, k_rps = Spread.of([r.rps for r in d]), Spread.of([r.rps for r in k])
            d50, k50 = Spread.of([r.p50_ms for r in d]), Spread.of([r.p50_ms for r in k])
            d99, k99 = Spread.of([r.p99_ms for r in d]), Spread.of([r.p99_ms for r in k])
            d_cpu = Spread.of([r.cpu_ms_per_request for r in d]).median
            k_cpu = Spread.of([r.cpu_ms_per_request for r in k]).median
            ratio = k_rps.median / d_rps.median if d_rps.median else 0.0
            ratios[f"{res.scenario.name}_c{c}"] = ratio
            # Best against best: other work on the machine only ever lowers a run's throughput,
            # so the fastest run of each side is the least disturbed (what the guard compares).
            ratios[f"{res.scenario.name}_c{c}_best"] = (
                k_rps.high / d_rps.high if d_rps.high else 0.0
            )
            name = res.scenario.title
            lines.append(
                f"| {name} | direct to the stub | {c} | {_fmt(d_rps, 0)} | {_fmt(d50, 3)} "
                f"| {_fmt(d99, 3)} | — | {d_cpu:.3f} | {res.stub_rss_kb / 1024:.0f} MB (nginx) | — |"
            )
            lines.append(
                f"| {name} | **keyplane** | {c} | **{_fmt(k_rps, 0)}** | {_fmt(k50, 3)} "
                f"| {_fmt(k99, 3)} | +{k50.median - d50.median:.3f} / +{k99.median - d99.median:.3f} "
                f"| {k_cpu:.3f} | {res.keyplane_rss_kb / 1024:.0f} MB | {ratio:.4f} |"
            )
    return "\n".join(lines), ratios


def goals(results: list[ScenarioResult]) -> list[str]:
    """The issue's targets for chat, checked against this run (informative, never fails)."""
    chat = next((r for r in results if r.scenario.name == "chat"), None)
    if chat is None:
        return []

    def med(c: int, target: str, attr: str) -> float | None:
        runs = chat.runs.get((c, target))
        return Spread.of([getattr(r, attr) for r in runs]).median if runs else None

    out = []
    for c in (16, 64):
        rps = med(c, "keyplane", "rps")
        if rps is not None:
            out.append(
                f"c={c}: {rps:,.0f} req/s (goal ≥ 8,000) {'met' if rps >= 8000 else 'NOT met'}"
            )
    for c, p50_goal, p99_goal in ((1, 0.25, 1.0), (16, None, 2.0)):
        k50, d50 = med(c, "keyplane", "p50_ms"), med(c, "direct", "p50_ms")
        k99, d99 = med(c, "keyplane", "p99_ms"), med(c, "direct", "p99_ms")
        if k50 is None or d50 is None or k99 is None or d99 is None:
            continue
        if p50_goal is not None:
            added = k50 - d50
            out.append(
                f"c={c}: added p50 {added:.3f} ms (goal ≤ {p50_goal}) "
                f"{'met' if added <= p50_goal else 'NOT met'}"
            )
        added = k99 - d99
        out.append(
            f"c={c}: added p99 {added:.3f} ms (goal ≤ {p99_goal}) "
            f"{'met' if added <= p99_goal else 'NOT met'}"
        )
    peak = max(r.keyplane_rss_kb for r in results) / 1024
    out.append(f"peak RSS {peak:.0f} MB (goal ≤ 120 MB) {'met' if peak <= 120 else 'NOT met'}")
    return out


def accounting_lines(results: list[ScenarioResult]) -> list[str]:
    out = []
    for res in results:
        a, u = res.accounting, res.accounting.usage
        verdict = "OK" if not a.problems else "MISMATCH: " + "; ".join(a.problems)
        out.append(
            f"- {res.scenario.title}: {u.records:,} usage records, {a.forwarded:,} requests "
            f"forwarded to the stub, {a.wrk_ok:,} 200s counted by wrk (+{u.status_200 - a.wrk_ok} "
            f"answered after wrk's cutoff), {u.cost_micro_usd:,} µ$ billed = {u.records:,} × "
            f"{a.unit_cost} µ$, at most {a.behind_s:.2f} s of traffic unwritten after a run "
            f"→ **{verdict}**"
        )
    return out


QUIET = 0.10  # at most this share of other programs' load for a run to set the guard's ratio


def guard_lines(chat: ScenarioResult, commit: str) -> list[str]:
    """The ratio `make bench-guard` compares with, from the best run of each side at c=16.

    Recorded only when both of those runs were quiet: a baseline slowed down by other work would
    inflate the ratio and make the guard fail later on a quiet machine."""
    direct = max(chat.runs[(16, "direct")], key=lambda r: r.rps)
    through = max(chat.runs[(16, "keyplane")], key=lambda r: r.rps)
    ratio = through.rps / direct.rps if direct.rps else 0.0
    noise = max(direct.foreign, through.foreign)
    text = (
        f"Guard ratio (chat c=16, best keyplane run / best direct run): {ratio:.4f} "
        f"(other load during those runs: {direct.foreign:.0%} / {through.foreign:.0%})"
    )
    if noise > QUIET:
        return [
            text + f"; NOT recorded for the guard (above {QUIET:.0%}): the last recorded ratio "
            "stays in force",
            "",
            f"<!-- guard-not-recorded: chat_c16_ratio={ratio:.4f} -->",
        ]
    # The commit (when the run measured one exactly) lets the guard rerun it beside the work tree.
    at = f" commit={commit}" if re.fullmatch(r"[0-9a-f]{7,40}", commit) else ""
    return [text, "", f"<!-- guard: chat_c16_ratio={ratio:.4f}{at} -->"]


def report(
    results: list[ScenarioResult],
    args: argparse.Namespace,
    cpus: tuple[str | None, str | None],
    commit: str,
    load_at_start: str,
    mode: str,
) -> tuple[str, dict[str, float]]:
    m = machine()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body, ratios = table(results, args.connections)
    pin = f"stub + keyplane on CPU {cpus[0]}, wrk on CPU {cpus[1]}" if cpus[0] else "NOT pinned"
    foreign = [w.foreign for r in results for runs in r.runs.values() for w in runs]
    noisy = sum(1 for f in foreign if f > 0.05)
    noise = (
        f"Other programs' load on the pinned cores during the runs: median {statistics.median(foreign):.0%}, "
        f"max {max(foreign):.0%} ({noisy} of {len(foreign)} runs above 5%: "
        f"{'figures disturbed by other work on the machine' if noisy else 'a quiet machine'})."
        if foreign and cpus[0]
        else ""
    )
    parts = [
        f"## {when} · commit {commit} · {mode} run",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram']} RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, nginx {m.get('nginx', '?')}, wrk {m.get('wrk', '?')}. "
        f"{pin}; {args.repeats} × {args.duration:g} s per cell, wrk -t1, keep-alive. "
        f"Load average at the start: {load_at_start}, at the end: {m['loadavg']}. {noise}",
        "",
        body,
        "",
        "Accounting (usage records vs requests, per scenario, warm-up included):",
        "",
        *accounting_lines(results),
    ]
    goal_lines = goals(results)
    if goal_lines:
        parts += ["", "Issue 6 goals (chat, non-streaming): " + "; ".join(goal_lines) + "."]
    chat = next((r for r in results if r.scenario.name == "chat"), None)
    if chat is not None and (16, "direct") in chat.runs:
        parts += ["", *guard_lines(chat, commit)]
    return "\n".join(parts) + "\n", ratios


HEADER = """# Benchmark results

Appended by `make bench` (bench/run.py); newest at the bottom. Method and definitions:
bench/README.md.

Each table row is one target at one connection count: "direct to the stub" is wrk hitting the
nginx upstream stub itself (the baseline, measured in the same run, interleaved with keyplane);
"keyplane" is wrk hitting keyplane, which forwards to that same stub. req/s, p50 and p99 are the
median over the repeats with the spread (min–max) in parentheses; "added" is keyplane's median
minus direct's median; "CPU ms/req" is the CPU time the target process used per completed request
(keyplane alone on keyplane rows, nginx on direct rows); "peak RSS" is VmHWM of the keyplane
process (of nginx on direct rows) over the whole scenario; "keyplane / direct" is the ratio of
median throughputs. The `guard:` comment under a run is the chat c=16 ratio of the best run of
each side (other work on the machine only ever lowers throughput, so the fastest run is the least
disturbed), written only when those runs were quiet, with the commit measured; `make bench-guard`
fails below half of the last one, unless that commit, rerun beside the work tree, shows keyplane
is not slower than half of it (the host's speed for Python moves more than nginx's).
"""


def record(text: str) -> None:
    if not RESULTS.exists():
        RESULTS.write_text(HEADER)
    with RESULTS.open("a") as f:
        f.write("\n" + text)
    log(f"appended to {RESULTS}")
