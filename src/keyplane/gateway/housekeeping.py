"""A worker thread for the gateway's housekeeping, below the event loop's scheduling priority.

The WAL checkpoint and the hold journal's file work (deleting stored segments, opening the next)
are system calls and disk copies that run without the GIL, for up to a few milliseconds of CPU
each. On a core the event loop shares with them, Linux let such a job run while the loop waited
to be scheduled (seen with ``perf sched``: the loop's thread runnable for 1-2 ms while a worker
ran), and every request in flight waited with it. ``HOUSEKEEPING_NICE`` steps nicer, the thread
gets about a tenth of a busy core and gives way to the loop; the jobs take longer, which nothing
waits for (a flush waits for neither).

Not for work the request path waits for (a key or an organization not cached yet, a batch written
on a worker thread): those stay on the default executor, at the loop's priority.
"""

from __future__ import annotations

import concurrent.futures

from keyplane.sched import lower_priority, worker_thread

HOUSEKEEPING_NICE = 10  # added to the process's nice value (Linux: per thread)


def _start() -> None:
    worker_thread()
    lower_priority(HOUSEKEEPING_NICE)


def housekeeping_thread() -> concurrent.futures.ThreadPoolExecutor:
    """One worker thread at a lower priority (started on first use; ``shutdown`` it when done)."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="keyplane-housekeeping", initializer=_start
    )
