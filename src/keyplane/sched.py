"""How keyplane's threads ask Linux's scheduler for their share of a core (elsewhere: nothing).

Under load the event loop never waits: it always has a request to serve. On a core it shares with
a process it wakes — an upstream on the same machine, the bench's nginx stub — Linux's scheduler
(EEVDF) picks the runnable thread with the earliest virtual deadline, a thread's deadline being its
time slice ahead of its share. With equal slices the woken upstream often had the later deadline
and waited for the loop's slice to run out, up to the next scheduler tick (4 ms at 250 Hz): seen
with ``perf sched``, the bench's stub waited more than 1 ms ~20 times a second at 16 connections,
and every request forwarded meanwhile with it (bench/RESULTS.md). The loop's thread asks for the
longest slice (``LOOP_SLICE_NS``): a later deadline, so what it wakes mostly runs at once (the
stub's waits over 1 ms fell from ~20 to ~3 a second), while its weight — its share of the core —
stays what its nice value gives. Worker threads go back to the
default slice (a blocking job should not hold a core that long), the housekeeping thread also
gives way to everything else (``lower_priority``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading

LOOP_SLICE_NS = 100_000_000  # the most Linux grants (it clamps a request to 0.1-100 ms)
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}  # the system call's number per architecture


class _SchedAttr(ctypes.Structure):
    # struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes): up to sched_period.
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        (
            "sched_runtime",
            ctypes.c_uint64,
        ),  # for SCHED_OTHER: the time slice asked for (0: default)
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def set_time_slice(ns: int) -> bool:
    """Asks for a time slice of ``ns`` for the calling thread (0: the kernel's default), keeping its
    policy and nice value; returns whether the kernel took the request (Linux 6.12+ honours it;
    older kernels accept and ignore it). Threads started later inherit it. A thread an operator put
    under another policy than the normal or batch one (``chrt``: idle, real-time) is left alone."""
    number = _SCHED_SETATTR.get(platform.machine())
    if sys.platform != "linux" or number is None:
        return False
    try:
        policy = os.sched_getscheduler(0)  # (0: the calling thread)
        if policy not in (os.SCHED_OTHER, os.SCHED_BATCH):
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (OSError, AttributeError):
        return False
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr), sched_policy=policy, sched_nice=nice, sched_runtime=ns
    )
    # (pid 0: the calling thread)
    return int(libc.syscall(number, 0, ctypes.byref(attr), 0)) == 0


def lower_priority(steps: int) -> None:
    """Makes the calling thread ``steps`` nicer (at most 19), on Linux, where a nice value is a
    thread's own. Elsewhere, or when not permitted, leaves it as it is."""
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + steps))


def worker_thread() -> None:
    """For a worker thread's start (a thread pool's ``initializer``): the default time slice."""
    set_time_slice(0)
