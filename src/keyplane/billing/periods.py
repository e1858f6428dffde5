"""Calendar months in UTC: budgets, thresholds and the usage limit reset at 00:00 UTC on the 1st."""

from __future__ import annotations

import datetime as dt

_last: tuple[float, float, str] = (0.0, 0.0, "")  # the month asked last: [start, end), period


def period_of(ts: float) -> str:
    """Returns the UTC month of a Unix time as ``YYYY-MM`` (asked several times per request:
    remembered for the month asked last)."""
    global _last
    start, end, period = _last
    if start <= ts < end:
        return period
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    period = f"{d.year:04d}-{d.month:02d}"
    _last = (period_start(period), period_end(period), period)
    return period


def period_start(period: str) -> int:
    year, month = (int(p) for p in period.split("-"))
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp())


def period_end(period: str) -> int:
    """Returns the first second of the following month."""
    year, month = (int(p) for p in period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp())
