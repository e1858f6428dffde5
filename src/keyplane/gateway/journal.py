"""The hold journal: where a hold becomes durable before its request is forwarded.

Writing every hold to the database before forwarding cost a database round trip (through a worker
thread) per request. Instead, a hold is appended to a local file mapped into memory — a copy of
~150 bytes, no system call (a ``write`` per hold was ~5% of the gateway's CPU) — and reaches the
database with the next settlement batch, in the same transaction as the settlements. The file is
then deleted.

Durability: the bytes are in the kernel's page cache once copied (a shared file mapping), so a
killed gateway (SIGKILL, OOM, crash) loses nothing — the same guarantee as ``write`` and as
SQLite's WAL with ``synchronous=NORMAL``, which keyplane uses: a power cut may lose the last writes
of either. A segment's disk space is reserved when it is created (``posix_fallocate``), so a full
disk is an error then (the request is refused), never a fault while copying into the mapping.

Off the event loop: creating a segment (open, ``posix_fallocate``, ``mmap``) and the first write
into its mapping cost ~0.5 ms on ext4 (the first written page starts a filesystem transaction), and
deleting one ~0.1–0.3 ms (the disk space given back): done by an append or a flush on the event
loop, every request waited. The gateway prepares the next segment (``prepare``, first page written
without the GIL) and deletes stored ones (``discard_all``) on a worker thread; an append opens one
itself only when no spare was ready.

Recovery: each gateway appends to segments it holds an exclusive ``flock`` on. A segment nobody
holds belongs to a gateway that died; any gateway on the data directory (at start, then every sweep)
takes it, stores its holds as open holds — counted against the balance, settled by the sweeper at
their full amount when they expire — and deletes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import mmap
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
SEGMENT_BYTES = 1 << 20  # ~7,000 holds; a full segment is handed over and a new one started


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int  # open and locked for as long as the segment exists
    holds: list[Hold] = field(default_factory=list)
    map: mmap.mmap | None = None  # the file, while holds are appended to it
    used: int = 0  # bytes written into the map

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        os.close(self.fd)


class HoldJournal:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._current: Segment | None = None
        self._full: list[Segment] = []  # filled up since the last rotate()
        self._spare: Segment | None = None  # opened ahead, for the next append that needs one

    @property
    def needs_spare(self) -> bool:
        return self._spare is None

    def prepare(self) -> Segment:
        """Opens a segment for a later append and takes its first write fault now (blocking: run
        it on a worker thread, then hand the result to ``add_spare`` on the loop)."""
        segment = self._open()
        assert segment.map is not None
        view = ctypes.c_char.from_buffer(segment.map)
        try:
            # A zero where the file holds zeros anyway; through ctypes, so without the GIL.
            ctypes.memset(ctypes.addressof(view), 0, 1)
        finally:
            del view  # (a live export would keep the mapping from being closed)
        return segment

    def add_spare(self, segment: Segment) -> None:
        if self._spare is None:
            self._spare = segment
        else:
            self.discard(segment)

    def append(self, hold: Hold) -> None:
        """Returns once ``hold`` survives this process dying. Raises OSError (disk full…)."""
        # The newline goes first: if a copy is cut short (the process killed in the middle),
        # the next line still starts on a line of its own and only that one is unreadable.
        line = b"\n" + orjson.dumps(
            [hold.id, hold.org_id, hold.project_id, hold.amount, hold.period, hold.created_at,
             hold.expires_at, hold.key_id, hold.model, hold.endpoint]
        )  # fmt: skip
        segment = self._current
        if segment is None or segment.used + len(line) > self._segment_bytes:
            if len(line) > self._segment_bytes:
                raise OSError("a hold does not fit in a journal segment")
            if segment is not None:
                self._full.append(segment)
                self._current = None  # (if opening the next one fails, it is not handed twice)
            segment, self._spare = self._spare or self._open(), None
            self._current = segment
        assert segment.map is not None
        end = segment.used + len(line)
        segment.map[segment.used : end] = line
        segment.used = end
        segment.holds.append(hold)

    def rotate(self) -> list[Segment]:
        """Closes the segments written since the last call to new holds and returns them (none
        if nothing was written); their holds must be stored, then each segment ``discard``-ed."""
        segments, self._full = self._full, []
        if self._current is not None:
            segments.append(self._current)
            self._current = None
        return segments

    def discard(self, segment: Segment) -> None:
        """Deletes a segment whose holds are now in the database."""
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
        segment.close()

    def discard_all(self, segments: list[Segment]) -> None:
        """``discard`` each (blocking: may run on a worker thread)."""
        for segment in segments:
            self.discard(segment)

    def release(self, segment: Segment) -> None:
        """Unlocks a segment without deleting it (its holds could not be stored: retried later)."""
        segment.close()

    def close(self) -> None:
        """Releases the segments not handed over yet, without deleting them (what they hold is
        recovered by the next gateway); deletes the spare, which holds nothing."""
        for segment in self.rotate():
            segment.close()
        if self._spare is not None:
            self.discard(self._spare)
            self._spare = None

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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, self._segment_bytes)  # the disk space, now or never
            mapped = mmap.mmap(fd, self._segment_bytes, mmap.MAP_SHARED, mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return Segment(path, fd, map=mapped)


def _read(fd: int, path: Path) -> list[Hold]:
    with open(fd, "rb", closefd=False) as f:
        data = f.read()
    # What was never written is zeros (the file's space is reserved up front); JSON lines hold
    # no NUL byte, so the holds end at the first one.
    data = data.split(b"\0", 1)[0]
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
