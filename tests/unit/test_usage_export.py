"""The usage CSV: exact dollars, cells a spreadsheet never runs, and rows written as they are read
(a month of a million records is never held whole)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyplane.usage.export import HEADER, csv_chunks, dollars, neutralized
from keyplane.usage.records import Outcome, UsageRecord


def record(i: int, cost: int = 1) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{i}", created_at=1_796_551_200 + i, org_id="org_x", project_id="proj_x",
        key_id="key_x", owner_type="user", owner_id="u", model="gpt-4o", endpoint="chat.completions",
        input_tokens=10, cached_input_tokens=0, output_tokens=100, status=200, latency_ms=5,
        client_ip=None, cost_micro_usd=cost, stream=False, outcome=Outcome.COMPLETED,
    )  # fmt: skip


@given(st.integers(min_value=0, max_value=10**15))
def test_dollars_are_the_micro_dollars_exactly_with_six_decimals(micros: int) -> None:
    text = dollars(micros)
    assert Decimal(text) * 1_000_000 == micros and len(text.partition(".")[2]) == 6


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("Acme = best", "Acme = best"),  # only a cell's start makes a formula
        ("", ""),
    ],
)
def test_cells_that_start_like_a_formula_get_a_leading_quote(cell: str, shown: str) -> None:
    assert neutralized(cell) == shown


def test_rows_are_written_as_the_records_are_read() -> None:
    taken = 0

    def records() -> Iterator[UsageRecord]:
        nonlocal taken
        for i in range(25):
            taken += 1
            yield record(i)

    chunks = csv_chunks(records(), {"proj_x": "Main"}, {}, rows_per_chunk=10)
    first = next(chunks)
    assert taken == 10 and first.count("\r\n") == 11  # the header and ten rows, no more read
    text = first + "".join(chunks)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(HEADER) and [r[1] for r in rows[1:]] == [f"req_{i}" for i in range(25)]
    assert rows[1][0] == "2026-12-06T10:00:00Z" and rows[1][3] == "Main"


def test_no_records_is_a_header_alone() -> None:
    assert list(csv_chunks(iter(()), {}, {})) == [",".join(HEADER) + "\r\n"]
