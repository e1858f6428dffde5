"""The hold journal: where a hold becomes durable before its request is forwarded.

Writing every hold to the database before forwarding cost a database round trip (through a worker
thread) per request. Instead, a hold is appended to a local file — one ``write`` system call, a few
microseconds — and reaches the database with the next settlement batch, in the same transaction as
the settlements. The file is then deleted.

Durability: the data is in the kernel once ``write`` returns, so a killed gateway (SIGKILL, OOM,
crash) loses nothing — the same guarantee as SQLite's WAL with ``synchronous=NORMAL``, which
keyplane uses: a power cut may lose the last writes of either.

Recovery: each gateway appends to segments it holds an exclusive ``flock`` on. A segment nobody
holds belongs to a gateway that died; any gateway on the data directory (at start, then every sweep)
takes it, stores its holds as open holds — counted against the balance, settled by the sweeper at
their full amount when they expire — and deletes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from keyplane.billing.wallet import Hold
from keyplane.ids import new_id

log = logging.getLogger("keyplane.journal")

PATTERN = "holds-*.log"
FIELDS = 10  # a line: the Hold's fields in order


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int  # open and locked for as long as the segment exists
    holds: list[Hold] = field(default_factory=list)


class HoldJournal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._current: Segment | None = None

    def append(self, hold: Hold) -> None:
        """Returns once ``hold`` survives this process dying. Raises OSError (disk full…)."""
        if self._current is None:
            self._current = self._open()
        # The newline goes first: if a write fails half-way (disk full), the next line still starts
        # on a line of its own and only the failed one (whose request was refused) is unreadable.
        line = b"\n" + orjson.dumps(
            [hold.id, hold.org_id, hold.project_id, hold.amount, hold.period, hold.created_at,
             hold.expires_at, hold.key_id, hold.model, hold.endpoint]
        )  # fmt: skip
        view = memoryview(line)
        while view:
            view = view[os.write(self._current.fd, view) :]
        self._current.holds.append(hold)

    def rotate(self) -> Segment | None:
        """Closes the current segment to new holds and returns it (None if nothing was written);
        its holds must be stored, then the segment ``discard``-ed."""
        segment, self._current = self._current, None
        return segment

    def discard(self, segment: Segment) -> None:
        """Deletes a segment whose holds are now in the database."""
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
        os.close(segment.fd)

    def release(self, segment: Segment) -> None:
        """Unlocks a segment without deleting it (its holds could not be stored: retried later)."""
        os.close(segment.fd)

    def close(self) -> None:
        """Releases the current segment's lock without deleting it (what remains is recovered by
        the next gateway)."""
        if self._current is not None:
            os.close(self._current.fd)
            self._current = None

    def orphans(self) -> Iterator[Segment]:
        """Segments of gateways that died: locked by this process while yielded (each must be
        ``discard``-ed once its holds are stored)."""
        for path in sorted(self.directory.glob(PATTERN)):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # discarded meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live gateway's (or our own)
                continue
            if not path.exists():  # discarded between our open and our lock
                os.close(fd)
                continue
            yield Segment(path, fd, _read(fd, path))

    def _open(self) -> Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"holds-{os.getpid()}-{new_id('j')}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Segment(path, fd)


def _read(fd: int, path: Path) -> list[Hold]:
    with open(fd, "rb", closefd=False) as f:
        data = f.read()
    out = []
    for line in data.splitlines():
        if not line:
            continue
        try:
            fields = orjson.loads(line)
            if not isinstance(fields, list) or len(fields) != FIELDS:
                raise ValueError
            out.append(Hold(*fields))
        except (orjson.JSONDecodeError, ValueError):
            # A write cut short (disk full, or the process died inside it): that request was
            # refused or never forwarded.
            log.warning("skipping an unreadable line in %s", path.name)
    return out
