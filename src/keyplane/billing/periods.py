"""Calendar months in UTC: budgets, thresholds and the usage limit reset at 00:00 UTC on the 1st."""

from __future__ import annotations

import datetime as dt


def period_of(ts: float) -> str:
    """Returns the UTC month of a Unix time as ``YYYY-MM``."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return f"{d.year:04d}-{d.month:02d}"


def period_start(period: str) -> int:
    year, month = (int(p) for p in period.split("-"))
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp())


def period_end(period: str) -> int:
    """Returns the first second of the following month."""
    year, month = (int(p) for p in period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp())
