"""Request ids: OpenAI's shape (``req_`` + 32 hex digits), unique, and ordered by time so that the
holds, usage and ledger indexes they key grow at one end (ids.py says why)."""

from __future__ import annotations

import re
import time

from keyplane.ids import new_request_id


def test_request_ids_have_openais_shape_and_do_not_repeat() -> None:
    made = [new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", rid) for rid in made)
    assert len(set(made)) == len(made)


def test_a_later_millisecond_gives_a_larger_id() -> None:
    earlier = new_request_id()
    start_ms = time.time_ns() // 1_000_000
    deadline = time.monotonic() + 1
    while time.time_ns() // 1_000_000 <= start_ms:  # poll until the clock moved on
        assert time.monotonic() < deadline
    later = [new_request_id() for _ in range(100)]
    assert all(earlier < rid for rid in later)
    # The first 12 digits are the Unix milliseconds, readable back.
    assert abs(int(later[0][4:16], 16) - time.time_ns() // 1_000_000) < 1_000
