"""End-of-day verification. For now: completeness, the calendar's minutes against the stored ones.

Gaps are a list of missing minute ranges: the calendar's minutes minus what is stored;
repair consumes exactly that list.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from optask.calendar import get_calendar
from optask.config import Settings, get_settings


def missing_ranges(missing: pd.DatetimeIndex) -> list[tuple[str, str]]:
    """Consecutive missing minutes folded into [first, last] ranges (ISO, UTC)."""
    if len(missing) == 0:
        return []
    m = missing.sort_values()
    breaks = (m[1:] - m[:-1]) != pd.Timedelta(minutes=1)
    starts = [m[0], *m[1:][breaks]]
    ends = [*m[:-1][breaks], m[-1]]
    return [(s.isoformat(), e.isoformat()) for s, e in zip(starts, ends, strict=True)]


def compare_minutes(expected: pd.DatetimeIndex, stored: pd.DatetimeIndex) -> dict:
    """Completeness of one index-day: counts, ratio, gaps, and minutes stored outside the session."""
    stored = pd.DatetimeIndex(stored).unique()
    missing = expected.difference(stored)
    extra = stored.difference(expected)
    return {
        "expected": len(expected),
        "stored": len(expected) - len(missing),
        "completeness": 1.0 if len(expected) == 0 else round((len(expected) - len(missing)) / len(expected), 6),
        "gaps": missing_ranges(missing),
        "outside_session": len(extra),
    }


def completeness(index: str, day: dt.date, settings: Settings | None = None) -> dict:
    """Expected minutes from the calendar against minutes present in the Parquet summary table."""
    from optask.storage.sinks import stored_minutes

    settings = settings or get_settings()
    expected = get_calendar(settings.data.calendar_overrides).session_minutes(day)
    return compare_minutes(expected, stored_minutes(index, day, settings=settings))
