"""Completeness: calendar minutes against stored ones, gaps as ranges."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from optask.calendar import MarketCalendar
from optask.verify import compare_minutes, missing_ranges


def test_full_day_is_complete():
    expected = MarketCalendar().session_minutes(dt.date(2026, 11, 23))
    out = compare_minutes(expected, expected)
    assert out == {"expected": 375, "stored": 375, "completeness": 1.0, "gaps": [], "outside_session": 0}


def test_gaps_fold_into_ranges():
    expected = MarketCalendar().session_minutes(dt.date(2026, 11, 23))
    stored = expected.delete([0, 1, 2, 100, 374])
    out = compare_minutes(expected, stored.append(pd.DatetimeIndex([pd.Timestamp("2026-11-23T12:00Z")])))
    assert out["stored"] == 370 and out["outside_session"] == 1
    assert out["gaps"] == [
        ("2026-11-23T03:45:00+00:00", "2026-11-23T03:47:00+00:00"),
        ("2026-11-23T05:25:00+00:00", "2026-11-23T05:25:00+00:00"),
        ("2026-11-23T09:59:00+00:00", "2026-11-23T09:59:00+00:00"),
    ]
    assert out["completeness"] == round(370 / 375, 6)


def test_no_missing():
    assert missing_ranges(pd.DatetimeIndex([], tz="UTC")) == []
