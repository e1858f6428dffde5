"""Process tuning at start: one malloc arena on glibc, unless the operator chose otherwise; the
request path compiled when run from the compiled copy; the event loop's thread asks Linux for a
long time slice, worker threads keep the default (keyplane/sched.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from keyplane.sched import LOOP_SLICE_NS, set_time_slice
from keyplane.server import compiled, make_server, one_malloc_arena


def test_one_arena_is_asked_for_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert one_malloc_arena() is (platform.libc_ver()[0] == "glibc")


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert one_malloc_arena() is False


def test_idle_connections_outlive_the_clients_own_expiry() -> None:
    # A server closing idle connections exactly when httpx (the OpenAI SDK's transport) stops
    # reusing them loses the race now and then: a request sent just as the server closes fails.
    assert make_server(app=None).keep_alive_s >= 2 * httpx.Limits().keepalive_expiry


def test_the_request_path_is_compiled_exactly_when_run_from_the_compiled_copy() -> None:
    # `make test` runs the suite a second time with build/compiled/src first on PYTHONPATH: this
    # fails there if that pass quietly ran the plain sources (and here if a compiled module were
    # shadowing src/).
    from_copy = "build/compiled/src" in os.environ.get("PYTHONPATH", "")
    assert compiled() is from_copy


SLICES = """
import asyncio, json, threading
from keyplane import server
from keyplane.gateway.housekeeping import housekeeping_thread

def slice_ns():
    for line in open("/proc/thread-self/sched"):
        if line.startswith("se.slice"):
            return int(line.split(":")[1])

async def main():
    loop = asyncio.get_running_loop()
    with housekeeping_thread() as housekeeping:
        print(json.dumps({
            "loop": slice_ns(),
            "worker": await asyncio.to_thread(slice_ns),
            "housekeeping": await loop.run_in_executor(housekeeping, slice_ns),
        }))

server.run(main())
"""


def _kernel_shows_slices() -> bool:
    path = Path("/proc/thread-self/sched")
    return path.exists() and "se.slice" in path.read_text()


@pytest.mark.skipif(not _kernel_shows_slices(), reason="a kernel without EEVDF time slices")
def test_the_event_loop_asks_for_a_long_time_slice_and_workers_keep_the_default() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SLICES], capture_output=True, text=True, timeout=60, check=True
    )
    slices = json.loads(done.stdout)
    default = int(
        next(
            x for x in Path("/proc/thread-self/sched").read_text().splitlines() if "se.slice" in x
        ).split(":")[1]
    )
    assert default < LOOP_SLICE_NS
    assert slices == {"loop": LOOP_SLICE_NS, "worker": default, "housekeeping": default}, slices


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread scheduling policies are Linux's")
def test_a_thread_an_operator_put_under_another_policy_is_left_alone() -> None:
    seen: list[object] = []

    def idle_thread() -> None:  # (a thread of its own: the policy is per thread on Linux)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        seen.append(set_time_slice(LOOP_SLICE_NS))
        seen.append(os.sched_getscheduler(0) == os.SCHED_IDLE)

    thread = threading.Thread(target=idle_thread)
    thread.start()
    thread.join()
    assert seen == [False, True]
