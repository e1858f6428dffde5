"""The hold journal: what a killed gateway leaves behind is found, read and taken exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from keyplane.billing.wallet import Hold
from keyplane.gateway.journal import HoldJournal


def hold(i: int) -> Hold:
    return Hold(f"req_{i}", "org_1", "proj_1", 1_000 + i, "2026-11", 100, 1_000, "key_1", "gpt-4o",
                "chat.completions")  # fmt: skip


def test_a_live_gateways_segments_are_not_orphans(tmp_path: Path) -> None:
    journal = HoldJournal(tmp_path)
    journal.append(hold(1))
    [rotated] = journal.rotate()
    assert rotated.holds == [hold(1)]
    journal.append(hold(2))
    # Another gateway on the same directory sees nothing to take: both segments are locked.
    assert list(HoldJournal(tmp_path).orphans()) == []
    journal.discard(rotated)
    assert not rotated.path.exists()
    journal.close()  # released without deleting: now it is an orphan
    [orphan] = list(HoldJournal(tmp_path).orphans())
    assert orphan.holds == [hold(2)]


def test_a_killed_process_leaves_its_holds_readable_and_a_cut_line_is_skipped(
    tmp_path: Path,
) -> None:
    script = f"""
import os, signal
from pathlib import Path
from keyplane.billing.wallet import Hold
from keyplane.gateway.journal import HoldJournal
j = HoldJournal(Path({str(tmp_path)!r}))
for i in range(3):
    j.append(Hold(f"req_{{i}}", "org_1", "proj_1", 5, "2026-11", 1, 2))
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", script], check=False)
    [path] = tmp_path.glob("holds-*.log")
    with open(path, "ab") as f:
        f.write(b'\n["req_cut", "org_1", "pro')  # a write the process did not finish
    journal = HoldJournal(tmp_path)
    [orphan] = list(journal.orphans())
    assert [h.id for h in orphan.holds] == ["req_0", "req_1", "req_2"]
    # While one gateway recovers it, no other can take it too.
    assert list(HoldJournal(tmp_path).orphans()) == []
    journal.discard(orphan)
    assert list(tmp_path.iterdir()) == []


def test_nothing_written_means_nothing_to_rotate(tmp_path: Path) -> None:
    journal = HoldJournal(tmp_path / "journal")
    assert journal.rotate() == []
    assert list(journal.orphans()) == []
    assert not os.path.exists(tmp_path / "journal")


def test_a_full_segment_is_handed_over_and_a_new_one_started(tmp_path: Path) -> None:
    journal = HoldJournal(tmp_path, segment_bytes=200)  # two holds (87 bytes each) a segment
    for i in range(5):
        journal.append(hold(i))
    segments = journal.rotate()
    assert [[h.id for h in s.holds] for s in segments] == [
        ["req_0", "req_1"], ["req_2", "req_3"], ["req_4"],
    ]  # fmt: skip
    # What each file holds is what its segment says (read back as a dead gateway's would be).
    for s in segments:
        journal.release(s)
    found = {h.id for orphan in HoldJournal(tmp_path).orphans() for h in orphan.holds}
    assert found == {f"req_{i}" for i in range(5)}


def test_a_disk_without_room_refuses_the_hold(tmp_path: Path) -> None:
    journal = HoldJournal(tmp_path, segment_bytes=1 << 62)  # more than any disk has
    try:
        journal.append(hold(1))
    except OSError:
        pass
    else:
        raise AssertionError("the hold should have been refused")
    assert list(tmp_path.iterdir()) == []  # no half-made segment left behind


def test_a_segment_opened_ahead_takes_the_next_append(tmp_path: Path) -> None:
    journal = HoldJournal(tmp_path)
    journal.add_spare(journal.prepare())
    [spare_path] = tmp_path.iterdir()
    assert not journal.needs_spare
    journal.append(hold(1))
    assert journal.needs_spare
    assert list(tmp_path.iterdir()) == [spare_path]  # no other file was made for the append
    [rotated] = journal.rotate()
    assert rotated.path == spare_path and rotated.holds == [hold(1)]
    journal.release(rotated)
    [orphan] = HoldJournal(tmp_path).orphans()  # what the file holds, read back
    assert orphan.holds == [hold(1)]


def test_an_unused_spare_is_deleted_at_close_or_recovered_empty_after_a_kill(
    tmp_path: Path,
) -> None:
    journal = HoldJournal(tmp_path / "a")
    journal.add_spare(journal.prepare())
    journal.add_spare(journal.prepare())  # one spare at a time: the second is deleted
    assert len(list((tmp_path / "a").iterdir())) == 1
    journal.close()
    assert list((tmp_path / "a").iterdir()) == []

    script = f"""
import os, signal
from pathlib import Path
from keyplane.gateway.journal import HoldJournal
j = HoldJournal(Path({str(tmp_path / "b")!r}))
j.add_spare(j.prepare())
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", script], check=False)
    recovering = HoldJournal(tmp_path / "b")
    [orphan] = list(recovering.orphans())
    assert orphan.holds == []
    recovering.discard(orphan)
    assert list((tmp_path / "b").iterdir()) == []
