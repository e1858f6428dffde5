"""Identifiers: random base62 strings with an OpenAI-style prefix (``org-…``, ``proj_…``)."""

from __future__ import annotations

import os
import secrets
import string
import threading
import time

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def random_base62(length: int) -> str:
    """``length`` base62 characters from the OS's CSPRNG, each uniform: bytes 248 and above are
    dropped (248 = 4 × 62), the rest taken modulo 62. One read for the whole string
    (``secrets.choice`` per character was one ``getrandom`` call each: ~75 µs for 25)."""
    out: list[str] = []
    while len(out) < length:
        out += (BASE62[b % 62] for b in secrets.token_bytes(length + 8) if b < 248)
    return "".join(out[:length])


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + random_base62(length)


def new_request_id() -> str:
    return ordered_id("req_")


def ordered_id(prefix: str) -> str:
    """``prefix`` + 32 hex digits (``req_…`` like OpenAI's), time-ordered like a UUIDv7: 12 digits
    of Unix milliseconds, then 80 random bits. Request ids key the holds, usage and ledger indexes;
    random keys land on random B-tree pages, so each settlement batch dirtied ~one page per row
    and writing it got slower as the tables grew (85 → 160 µs per settlement between 30,000 and
    1.7 M rows); ordered keys append to the last pages (flat at ~65 µs)."""
    return prefix + _millis.hex() + _entropy.take_hex()


class _Millis:
    """The current Unix millisecond as 12 hex digits, formatted once per millisecond: formatting
    it for every id was half the cost of making one (bench/instructions.py)."""

    def __init__(self) -> None:
        self._last = (-1, "")  # (millisecond, its digits): one reference, replaced whole

    def hex(self) -> str:
        ms = time.time_ns() // 1_000_000
        last = self._last
        if last[0] == ms:
            return last[1]
        digits = f"{ms:012x}"
        self._last = (ms, digits)
        return digits


class _Entropy:
    """Random bits for request ids from the OS's CSPRNG, fetched 4 KiB at a time.

    ``secrets.token_hex`` per request was one ``getrandom`` call that releases the GIL: with the
    settlement writer thread waiting for it, the event loop then waited for the GIL to come back,
    which bench/pyspy.py showed as 17 % of the loop's time spent "in" randbytes. A pool refilled
    every 409 ids costs one such call instead of 409. Forgotten in a forked child, so a parent and
    its child never hand out the same bits."""

    _REFILL = 4096  # bytes, kept as hex digits
    _TAKE = 20  # hex digits: 80 random bits per id

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = ""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def take_hex(self) -> str:
        with self._lock:
            start = self._at
            if start + self._TAKE > len(self._pool):
                self._pool, start = os.urandom(self._REFILL).hex(), 0
            self._at = start + self._TAKE
            return self._pool[start : start + self._TAKE]

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._at = "", 0


_entropy = _Entropy()
_millis = _Millis()
