"""Request ids: OpenAI's shape (``req_`` + 32 hex digits), unique, and ordered by time so that the
holds, usage and ledger indexes they key grow at one end (ids.py says why)."""

from __future__ import annotations

import os
import re
import time
from collections import Counter

from keyplane.ids import BASE62, new_request_id, random_base62


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


def test_a_forked_child_does_not_repeat_its_parents_random_bits() -> None:
    new_request_id()  # the pool is filled before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: send 50 ids' random parts, exit without running pytest's teardown
        os.write(write, "".join(new_request_id()[16:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = [new_request_id()[16:] for _ in range(50)]
    assert len(child) == 50 * 20
    assert not {child[i : i + 20] for i in range(0, len(child), 20)} & set(parent)


def test_random_base62_is_uniform_over_its_62_characters() -> None:
    text = "".join(random_base62(50) for _ in range(4_000))  # 200,000 characters
    counts = Counter(text)
    assert set(counts) == set(BASE62)
    expected = len(text) / 62
    # Chi-squared, 61 degrees of freedom: above 120 about once in 100,000 runs for a uniform
    # source; the modulo bias of taking all 256 byte values (8 characters at 5/256 instead of
    # 4/256) gives ~1,300 at this size.
    chi2 = sum((n - expected) ** 2 / expected for n in counts.values())
    assert chi2 < 120
    assert {len(random_base62(n)) for n in (1, 12, 32, 300)} == {1, 12, 32, 300}
