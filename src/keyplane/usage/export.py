"""Usage records as CSV (the Usage page's "Export CSV", BRIEF C7): one row per request.

Every column of a usage record but two: the organization's id (the file is one organization's)
and the client's IP address (every member may export usage, and a caller's address is personal
data the dashboard shows nobody). ``period`` is the month the record's spend counts in (the month
it was admitted), which a request admitted just before a month turned and settled after it does
not share with its ``time``.

Names in it are chosen by people (projects, keys), and spreadsheets run a cell that starts like a
formula: such a cell gets a leading ``'`` (OWASP's advice against CSV injection), so opening the
file runs nothing and the text still reads the same.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Iterator, Mapping

from keyplane.keys.models import ApiKey
from keyplane.usage.records import UsageRecord

HEADER = (
    "time", "request_id", "project_id", "project_name", "key_id", "key_name", "owner_type",
    "owner_id", "model", "endpoint", "input_tokens", "cached_input_tokens", "input_audio_tokens",
    "output_tokens", "output_audio_tokens", "images", "audio_seconds", "characters", "stream",
    "status", "outcome", "estimated", "latency_ms", "period", "cost_usd",
)  # fmt: skip
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MICRO = 1_000_000


def neutralized(cell: str) -> str:
    """The cell as text a spreadsheet shows, never evaluates."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def dollars(micros: int) -> str:
    """Exact dollars with six decimals (``0.000157``): integer arithmetic, never a float."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICRO)
    return f"{sign}{whole}.{fraction:06d}"


def iso_time(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row(
    record: UsageRecord, project_names: Mapping[str, str], keys: Mapping[str, ApiKey]
) -> list[str]:
    """A record's cells, in ``HEADER``'s order. A key shows by its name, or when it has none by
    its redacted value (``sk-proj-…abcd``): never its secret, which keyplane does not keep."""
    key = keys.get(record.key_id)
    key_name = (key.name or key.redacted_value) if key else ""
    project = record.project_id or ""
    cells = (
        iso_time(record.created_at), record.request_id, project, project_names.get(project, ""),
        record.key_id, key_name, record.owner_type, record.owner_id, record.model, record.endpoint,
        record.input_tokens, record.cached_input_tokens, record.input_audio_tokens,
        record.output_tokens, record.output_audio_tokens, record.images, record.audio_seconds,
        record.characters, "yes" if record.stream else "no", record.status, record.outcome.value,
        "yes" if record.tokens_estimated else "no", record.latency_ms, record.period,
        dollars(record.cost_micro_usd),
    )  # fmt: skip
    return [neutralized(str(cell)) for cell in cells]


def csv_chunks(
    records: Iterable[UsageRecord],
    project_names: Mapping[str, str],
    keys: Mapping[str, ApiKey],
    *,
    rows_per_chunk: int = 1000,
) -> Iterator[str]:
    """The CSV text (header first, RFC 4180 line ends) in chunks of ``rows_per_chunk`` rows, as
    ``records`` are taken: a response streams it without holding it all."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER)
    for count, record in enumerate(records, start=1):
        writer.writerow(row(record, project_names, keys))
        if count % rows_per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
