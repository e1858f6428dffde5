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


def test_every_column_of_a_record_is_exported_but_its_organization_and_ip() -> None:
    """A record's audio tokens, owner, stream, latency and month: each in its named column (a
    column added to records and forgotten here fails this test)."""
    spoken = UsageRecord(
        request_id="req_a", created_at=1_796_601_599, org_id="org_x", project_id="proj_x",
        key_id="key_x", owner_type="service_account", owner_id="svc_1", model="gpt-4o-audio-preview",
        endpoint="chat.completions", input_tokens=120, cached_input_tokens=20, output_tokens=300,
        status=200, latency_ms=845, client_ip="203.0.113.9", cost_micro_usd=4_321, stream=True,
        outcome=Outcome.COMPLETED, tokens_estimated=False, period="2026-12", images=0,
        audio_seconds=0, characters=0, input_audio_tokens=100, output_audio_tokens=250,
    )  # fmt: skip
    text = "".join(csv_chunks([spoken], {"proj_x": "Main"}, {}))
    header, row = list(csv.reader(io.StringIO(text)))
    assert header == list(HEADER) == [
        "time", "request_id", "project_id", "project_name", "key_id", "key_name", "owner_type",
        "owner_id", "model", "endpoint", "input_tokens", "cached_input_tokens",
        "input_audio_tokens", "output_tokens", "output_audio_tokens", "images", "audio_seconds",
        "characters", "stream", "status", "outcome", "estimated", "latency_ms", "period",
        "cost_usd",
    ]  # fmt: skip
    assert dict(zip(header, row, strict=True)) == {
        "time": "2026-12-06T23:59:59Z", "request_id": "req_a", "project_id": "proj_x",
        "project_name": "Main", "key_id": "key_x", "key_name": "",
        "owner_type": "service_account", "owner_id": "svc_1", "model": "gpt-4o-audio-preview",
        "endpoint": "chat.completions", "input_tokens": "120", "cached_input_tokens": "20",
        "input_audio_tokens": "100", "output_tokens": "300", "output_audio_tokens": "250",
        "images": "0", "audio_seconds": "0", "characters": "0", "stream": "yes", "status": "200",
        "outcome": "completed", "estimated": "no", "latency_ms": "845", "period": "2026-12",
        "cost_usd": "0.004321",
    }  # fmt: skip
    # Each of the record's fields is a column, or one of the two left out on purpose.
    shown = {"created_at": "time", "tokens_estimated": "estimated", "cost_micro_usd": "cost_usd"}
    left_out = {"org_id", "client_ip"}
    assert {shown.get(f, f) for f in UsageRecord.FIELDS if f not in left_out} <= set(HEADER)
    assert "203.0.113.9" not in text and "org_x" not in text
