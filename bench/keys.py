"""Cost of growth: key lookup at 10 and at 1,000,000 keys, and memory per cached key (issue #6).

    .venv/bin/python bench/keys.py             # ~1-2 minutes; prints a Markdown section
    .venv/bin/python bench/keys.py --record    # ... and appends it to bench/RESULTS.md

In-process, no HTTP. A data directory made by the real `keyplane init` (and `keyplane keys
create`), then project keys added in bulk with SQLAlchemy Core into the real ``api_keys`` table
(and one ``key_events`` row each, as SqlKeyStore.add writes), every one with its HMAC-SHA-256
computed with the data directory's pepper, up to 10 keys and later up to 1,000,000. At each size
a fresh KeyAuthenticator over SqlKeyStore, refreshed once as the gateway does at startup, holding
every key in its cache, and then:

- warm lookup: ``authenticate(token)`` on a cached key, the full call as the gateway makes it
  (format and checksum check, lookup by public key id, HMAC compare, expiry, last-use note), in
  passes over 100,000 tokens (at 1,000,000 keys: 100,000 distinct keys in random order, so the
  CPU caches do not hold them); ns per lookup, median of the passes;
- cold lookup: a key dropped from the cache (``forget``) and authenticated again, which reads it
  from SQLite in a worker thread (what the first request of every key pays);
- a full garbage collection with that cache alive (the gateway runs with the collector on);
- memory per cached key (at 1,000,000 only).

At 10 keys the cache fills through ``authenticate`` itself (each key's first use reads it from
SQLite). At 1,000,000 that would take minutes (one thread hop and one SQLite read per key), so
the cache is filled the way ``authenticate`` fills it after a miss: each row converted by the
store's own row-to-key function and put in with the authenticator's ``_remember``, under the
key id as ``authenticate`` computes it. The cold-lookup sample checks the claim: every key it
re-reads through the normal path must equal the entry built in bulk.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import hashlib
import os
import random
import secrets
import statistics
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import BenchError, Spread, cpu_split, entry, git_commit, log, machine, vm_kb, workdir
from report import record
from target import DataDir, export_source

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from keyplane.keys.authenticator import KeyAuthenticator

CLIENT_IP = "127.0.0.1"
CHUNK = 20_000  # rows per insert transaction and per fetch when filling the cache
TRACED = 100_000  # the last keys put in the cache under tracemalloc


# --- keys in the database --------------------------------------------------------------------------


class KeyMaker:
    """Deterministic, well-formed project keys: key ``i`` can be rebuilt from its index alone, so
    a million of them never need to be held in memory. Not random enough for production (they
    come from a hash of a per-run seed), which changes nothing the gateway does with them."""

    def __init__(self) -> None:
        from keyplane.ids import BASE62

        self.seed = secrets.token_bytes(16)
        self._table = bytes(ord(BASE62[b % 62]) for b in range(256))

    def token(self, i: int) -> str:
        from keyplane.keys import format as keyfmt

        digest = hashlib.blake2b(self.seed + i.to_bytes(8, "little"), digest_size=44).digest()
        body = digest.translate(self._table).decode()  # 12-char public id + 32-char secret
        head = f"sk-kp-proj-{body}"
        return head + keyfmt.checksum(head)


def settings_pepper(data: DataDir) -> bytes:
    """The pepper `keyplane serve` would use for this data directory."""
    from keyplane.config import Settings

    return Settings(data_dir=data.path, database_url="", pepper=None).secret_bytes("pepper")


def key_count(engine: Engine) -> int:
    from sqlalchemy import func, select

    from keyplane.storage import tables as t

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.api_keys)).scalar() or 0)


def insert_keys(database: Path, maker: KeyMaker, pepper: bytes, start: int, stop: int) -> None:
    """Adds keys ``start`` ≤ i < ``stop`` as rows like the CLI's key (same organization, project
    and owner), with one change event each, as SqlKeyStore.add writes them."""
    from sqlalchemy import insert, select

    from keyplane.keys import format as keyfmt
    from keyplane.storage import tables as t
    from keyplane.storage.engine import make_engine

    # An engine of its own, so the page cache set here (the default 2 MB makes each insert into
    # a large table a disk read) never reaches the connections the lookups are measured on.
    engine = make_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA cache_size = -262144")  # 256 MB
            first_key = select(t.api_keys).where(t.api_keys.c.kind == "proj").limit(1)
            template = dict(conn.execute(first_key).mappings().one())
            conn.commit()
            now = int(time.time())
            for first in range(start, stop, CHUNK):
                keys, events = [], []
                for i in range(first, min(first + CHUNK, stop)):
                    token = maker.token(i)
                    parsed = keyfmt.parse(token)
                    assert parsed is not None
                    kid = keyfmt.key_id(parsed.public_id)
                    keys.append(
                        {
                            **template, "id": kid, "name": f"bench-{i}", "created_at": now,
                            "secret_hash": keyfmt.hash_secret(pepper, parsed.secret),
                            "redacted_value": keyfmt.redact(token),
                            "last_used_at": None, "last_used_ip": None,
                        }
                    )  # fmt: skip
                    events.append({"key_id": kid, "at": now})
                with conn.begin():
                    conn.execute(insert(t.api_keys), keys)
                    conn.execute(insert(t.key_events), events)
    finally:
        engine.dispose()


# --- the authenticator ------------------------------------------------------------------------------


async def new_authenticator(engine: Engine, pepper: bytes) -> KeyAuthenticator:
    """As build_gateway() makes it (default cache size), refreshed once as the gateway's startup."""
    from keyplane.clock import SystemClock
    from keyplane.keys.authenticator import KeyAuthenticator
    from keyplane.storage.key_repository import SqlKeyStore

    auth = KeyAuthenticator(SqlKeyStore(engine), pepper, SystemClock())
    await auth.refresh()
    return auth


def _rows(engine: Engine, after: str, limit: int | None) -> Iterator[Sequence[Any]]:
    from sqlalchemy import select

    from keyplane.storage import tables as t

    query = select(t.api_keys).where(t.api_keys.c.id > after).order_by(t.api_keys.c.id)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=CHUNK).execute(query)
        yield from result.mappings().partitions()


def fill_cache(auth: KeyAuthenticator, engine: Engine, after: str, limit: int | None) -> str:
    """Caches the keys not cached yet (ordered by id, after ``after``) as authenticate() does
    after a miss; returns the last id."""
    from keyplane.keys import format as keyfmt
    from keyplane.storage.key_repository import _key as key_from_row  # what SqlKeyStore.get returns

    last = after
    for part in _rows(engine, after, limit):
        for row in part:
            key = key_from_row(row)
            # authenticate() keys the cache with a string of its own, built from the token.
            kid = keyfmt.key_id(key.id.removeprefix("key_"))
            if kid not in auth._cache:
                auth._remember(kid, key)
        last = part[-1]["id"]
    return last


@dataclass
class Memory:
    traced_keys: int = 0
    traced_bytes: int = 0  # Python objects the last TRACED keys added (tracemalloc)
    dict_bytes: int = 0  # the cache dict's own table, whole
    rss_keys: int = 0
    rss_bytes: int = 0  # VmRSS growth while the other keys were cached

    @property
    def per_key_traced(self) -> float:
        return self.traced_bytes / self.traced_keys + self.dict_bytes / (
            self.traced_keys + self.rss_keys
        )

    @property
    def per_key_rss(self) -> float:
        return self.rss_bytes / self.rss_keys if self.rss_keys else 0.0


def fill_cache_measured(auth: KeyAuthenticator, engine: Engine, total: int) -> Memory:
    """Fills the cache with every key: RSS growth over all but the last TRACED keys, then
    tracemalloc over those (tracemalloc's own tables would otherwise show in the RSS)."""
    mem = Memory()
    untraced = max(0, total - TRACED)
    gc.collect()
    rss0 = vm_kb(os.getpid(), "VmRSS")
    last = fill_cache(auth, engine, "", untraced) if untraced else ""
    gc.collect()
    mem.rss_keys, mem.rss_bytes = auth.cached, (vm_kb(os.getpid(), "VmRSS") - rss0) * 1024
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fill_cache(auth, engine, last, None)
    gc.collect()
    mem.traced_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    mem.traced_keys = auth.cached - mem.rss_keys
    mem.dict_bytes = sys.getsizeof(auth._cache)
    return mem


# --- timings --------------------------------------------------------------------------------------


async def warm_lookups_ns(auth: KeyAuthenticator, tokens: list[str], passes: int) -> list[float]:
    """ns per authenticate() of a cached key, one figure per pass over ``tokens``."""
    out = []
    for _ in range(passes):
        auth.take_uses()  # what the gateway's last-used flush does every few seconds
        t0 = time.perf_counter_ns()
        for token in tokens:
            await auth.authenticate(token, CLIENT_IP)
        out.append((time.perf_counter_ns() - t0) / len(tokens))
    return out


async def cold_lookups_ns(auth: KeyAuthenticator, tokens: list[str]) -> list[float]:
    """ns per authenticate() of a key just dropped from the cache (read from SQLite in a thread).

    Checks on the way that the entry read back equals the one the cache held."""
    from keyplane.keys import format as keyfmt

    out = []
    for token in tokens:
        parsed = keyfmt.parse(token)
        assert parsed is not None
        kid = keyfmt.key_id(parsed.public_id)
        held = auth._cache.get(kid)
        auth.forget(kid)
        t0 = time.perf_counter_ns()
        await auth.authenticate(token, CLIENT_IP)
        out.append(time.perf_counter_ns() - t0)
        if held is not None and auth._cache.get(kid) != held:
            raise BenchError(f"{kid}: the cached entry differs from what SqlKeyStore.get reads")
    return out


def gc_pause_ms(repeats: int = 3) -> float:
    """Duration of a full collection (all generations) with everything alive now; median."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class SizeResult:
    keys: int
    warm_ns: Spread
    cold_ns: list[float]
    gc_ms: float
    memory: Memory | None = None
    # The large size only: the small size's number of keys looked up over and over, so the
    # table's size is the only difference from the small size (the CPU caches hold those keys).
    few_ns: Spread | None = None


@dataclass
class Plan:
    small: int
    large: int
    sample: int  # tokens per timed pass
    passes: int
    cold: int  # cold lookups per size


async def measure_size(
    engine: Engine, pepper: bytes, maker: KeyMaker, known: list[str], n: int, plan: Plan,
    bulk: bool,
) -> SizeResult:  # fmt: skip
    """One size: a fresh authenticator holding all ``n`` keys, then the timings.

    ``known``: the tokens `keyplane init` and `keyplane keys create` gave us (not the admin key's:
    at the small size it is cached the bulk way, being the one key no token here can use)."""
    auth = await new_authenticator(engine, pepper)
    rng = random.Random(n)
    memory = None
    made = n - len(known) - 1  # keys 0 ≤ i < made were inserted in bulk
    if bulk:
        log(f"{n:,} keys: filling the cache from SQLite")
        memory = fill_cache_measured(auth, engine, n)
        sample = [maker.token(i) for i in rng.sample(range(made), min(plan.sample, made))]
    else:
        every = [*known, *(maker.token(i) for i in range(made))]
        for token in every:  # the first use of each key, through the normal path
            await auth.authenticate(token, CLIENT_IP)
        fill_cache(auth, engine, "", None)  # the admin key
        sample = [every[i % len(every)] for i in range(plan.sample)]
    if auth.cached != n:
        raise BenchError(f"the cache holds {auth.cached} keys, not {n}")
    log(f"{n:,} keys: {plan.passes} passes of {len(sample):,} warm lookups")
    await warm_lookups_ns(auth, sample[: min(len(sample), 10_000)], 1)  # warm-up
    warm = await warm_lookups_ns(auth, sample, plan.passes)
    cold_tokens = [sample[rng.randrange(len(sample))] for _ in range(plan.cold)]
    log(f"{n:,} keys: {plan.cold:,} cold lookups")
    cold = await cold_lookups_ns(auth, cold_tokens)
    result = SizeResult(n, Spread.of(warm), cold, gc_pause_ms(), memory)
    if bulk:
        few = [sample[i % plan.small] for i in range(plan.sample)]
        result.few_ns = Spread.of(await warm_lookups_ns(auth, few, plan.passes))
    auth.take_uses()
    return result


# --- report ------------------------------------------------------------------------------------------


def _fmt(s: Spread) -> str:
    return f"{s.median:,.0f} ({s.low:,.0f}–{s.high:,.0f})"


def memory_line(mem: Memory, keys: int) -> str:
    rss = (
        f"; RSS growth while the first {mem.rss_keys:,} were cached: {mem.per_key_rss:,.0f} B per key"
        if mem.rss_keys
        else ""
    )
    return (
        f"Memory per cached key: **{mem.per_key_traced:,.0f} B** (tracemalloc over the last "
        f"{mem.traced_keys:,} keys cached: {mem.traced_bytes / mem.traced_keys:,.0f} B of objects, "
        f"plus the cache dict's table: {mem.dict_bytes / 1024 / 1024:,.0f} MB for {keys:,} "
        f"entries, {mem.dict_bytes / keys:,.0f} B each){rss}. A full cache of {keys:,} keys: "
        f"~{mem.per_key_traced * keys / 1024 / 1024:,.0f} MB (the goal for the whole process "
        "under load: RSS ≤ 120 MB)."
    )


def report(results: list[SizeResult], plan: Plan, commit: str, cpu: str | None) -> str:
    m = machine()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    small, large = results[0], results[-1]
    ratio = large.warm_ns.median / small.warm_ns.median
    size_ratio = large.few_ns.median / small.warm_ns.median if large.few_ns is not None else None
    lines = [
        f"## {when} · commit {commit} · key lookup at {small.keys:,} and {large.keys:,} keys "
        "(bench/keys.py)",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram']} RAM, Linux {m['kernel']}, "
        f"Python {m['python']}. {f'Pinned to CPU {cpu}' if cpu else 'NOT pinned'}. "
        f"Load average at the end: {m['loadavg']}. In-process, no HTTP: KeyAuthenticator over "
        "SqlKeyStore on a SQLite data directory from `keyplane init`, every key in the table "
        "and in the cache. Warm: authenticate() of a cached key seen before (its keyed digest, "
        "the lookups), "
        f"{plan.passes} passes of {plan.sample:,} lookups (at {large.keys:,} keys: "
        f"{plan.sample:,} distinct keys in random order). Cold: the key dropped from the cache "
        f"first, so authenticate() reads it from SQLite in a worker thread ({plan.cold:,} "
        "lookups). GC: one full collection with that cache alive.",
        "",
        "| keys (database = cache) | warm lookup ns, median (min–max) | cold lookup µs, "
        "median / p99 | full GC pause ms |",
        "|---|---|---|---|",
    ]
    for r in results:
        w = r.warm_ns
        lines.append(
            f"| {r.keys:,} | {_fmt(w)} | {statistics.median(r.cold_ns) / 1000:,.1f} / "
            f"{percentile(r.cold_ns, 0.99) / 1000:,.1f} | {r.gc_ms:,.1f} |"
        )
        if r.few_ns is not None:
            lines.append(
                f"| {r.keys:,}, the same {small.keys} keys over and over | {_fmt(r.few_ns)} | — | — |"
            )
    lines += [
        "",
        f"Warm lookup at {large.keys:,} keys / at {small.keys:,} keys: {ratio:.2f}× with "
        f"{plan.sample:,} distinct keys in random order (that adds the CPU cache misses of a "
        f"{plan.sample:,}-key working set to the table's size)"
        + (
            f"; **{size_ratio:.2f}×** for the same {small.keys} keys looked up in the "
            f"{large.keys:,}-key cache: the table's size alone (goal: O(1); "
            f"{'met' if size_ratio <= 1.5 else 'NOT met'} by the measure ratio ≤ 1.5)."
            if size_ratio is not None
            else "."
        ),
    ]
    if large.memory is not None:
        lines += ["", memory_line(large.memory, large.keys)]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------------


async def run(data: DataDir, plan: Plan) -> list[SizeResult]:
    from keyplane.storage.engine import make_engine

    engine = make_engine(f"sqlite:///{data.database}")
    try:
        pepper = settings_pepper(data)
        maker = KeyMaker()
        base = key_count(engine)
        if base != 2:
            raise BenchError(f"expected the admin key and the project key, found {base} keys")
        results: list[SizeResult] = []
        for n, bulk in ((plan.small, False), (plan.large, True)):
            t0 = time.monotonic()
            insert_keys(data.database, maker, pepper, key_count(engine) - base, n - base)
            log(f"{key_count(engine):,} keys in the database ({time.monotonic() - t0:.0f} s)")
            results.append(await measure_size(engine, pepper, maker, [data.key], n, plan, bulk))
            gc.collect()
        return results
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10, help="keys in the small case")
    parser.add_argument("--large", type=int, default=1_000_000, help="keys in the large case")
    parser.add_argument("--sample", type=int, default=100_000, help="lookups per timed pass")
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--cold", type=int, default=2_000, help="cold lookups per size")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--at", metavar="REV", help="measure src/ as of this commit")
    args = parser.parse_args()
    if not 3 <= args.small < args.large:
        parser.error("need 3 ≤ --small < --large (init makes 2 keys)")
    plan = Plan(args.small, args.large, args.sample, args.passes, args.cold)
    started = time.monotonic()
    cpu = cpu_split()[0]
    if cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in cpu.split(",")})
    with workdir(args.keep) as wd:
        src, commit = None, git_commit()
        if args.at:
            src, commit = export_source(args.at, wd / "snapshot")
            sys.path.insert(0, str(src))
            log(f"measuring commit {commit} (src exported to {src})")
        data = DataDir(wd, src)
        data.init()
        results = asyncio.run(run(data, plan))
    text = report(results, plan, commit, cpu)
    print(text)
    if args.record:
        record(text)
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    entry(main)
