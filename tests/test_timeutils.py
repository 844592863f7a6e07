"""Time: unified ts text, legacy formats, round trips (hypothesis)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optask.core.timeutils import (
    IST,
    UTC,
    TimestampParseError,
    floor_minute,
    format_ts,
    now_csv_format,
    parse_minute,
    parse_ts,
    standardize_timestamp_column,
    standardize_to_datetime,
)

instants = st.datetimes(
    min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC)
)


def test_unified_form():
    t = dt.datetime(2026, 11, 24, 3, 45, tzinfo=UTC)
    assert format_ts(t) == "2026-11-24T09:15:00+05:30"
    assert format_ts(dt.datetime(2026, 11, 24, 9, 15, 30, 250000, tzinfo=IST)) == "2026-11-24T09:15:30.25+05:30"


def test_now_csv_format_is_parseable():
    text = now_csv_format()
    assert text.endswith("+05:30") and parse_ts(text).tzinfo is not None


def test_floor_minute():
    t = dt.datetime(2026, 11, 24, 9, 15, 59, 999999, tzinfo=IST)
    assert floor_minute(t) == dt.datetime(2026, 11, 24, 3, 45, tzinfo=UTC)


def test_every_legacy_format():
    expected = "2026-11-24T09:15:00+05:30"
    epoch = int(dt.datetime(2026, 11, 24, 3, 45, tzinfo=UTC).timestamp())
    values = pd.Series([
        epoch, epoch * 1000, epoch * 10**9, str(epoch), "2026-11-24 09:15:00", "2026-11-24T09:15",
        "2026-11-24T03:45:00Z", "2026-11-24T09:15:00+05:30", "2026-11-24T04:45:00+01:00", "24-11-2026 09:15",
        "24-11-2026 09:15:00", dt.datetime(2026, 11, 24, 9, 15), pd.Timestamp("2026-11-24T03:45Z"),
    ], dtype=object)
    assert (standardize_timestamp_column(values) == expected).all()


def test_typed_columns():
    naive = pd.Series(pd.to_datetime(["2026-11-24 09:15:00"]))
    assert standardize_timestamp_column(naive).iloc[0] == "2026-11-24T09:15:00+05:30"
    ms = pd.Series([1_795_499_100_000])
    assert standardize_timestamp_column(ms).iloc[0] == format_ts(dt.datetime.fromtimestamp(1_795_499_100, UTC))


@pytest.mark.parametrize("bad", ["yesterday", "31-02-2026 09:15", "2026-13-01T00:00", "", None, float("nan")])
def test_unparseable_value_is_named(bad):
    values = pd.Series(["2026-11-24T09:15:00+05:30", bad], dtype=object)
    with pytest.raises(TimestampParseError) as exc:
        standardize_timestamp_column(values)
    assert repr(bad) in str(exc.value) and "row 1" in str(exc.value)


def test_parse_minute_rejects_seconds():
    assert parse_minute("2026-11-24T09:15+05:30") == dt.datetime(2026, 11, 24, 3, 45, tzinfo=UTC)
    with pytest.raises(TimestampParseError):
        parse_minute("2026-11-24T09:15:30+05:30")


@settings(max_examples=200, deadline=None)
@given(instants)
def test_text_round_trip_is_exact(t):
    text = format_ts(t)
    assert parse_ts(text) == t
    assert standardize_timestamp_column(pd.Series([text])).iloc[0] == text


@settings(max_examples=200, deadline=None)
@given(instants.map(lambda t: t.replace(microsecond=0)))
def test_every_format_of_an_instant_agrees(t):
    ist = t.astimezone(IST)
    forms = pd.Series([
        int(t.timestamp()), int(t.timestamp()) * 1000, int(t.timestamp()) * 10**9,
        ist.strftime("%Y-%m-%d %H:%M:%S"), t.strftime("%Y-%m-%dT%H:%M:%SZ"), ist.isoformat(),
        ist.strftime("%d-%m-%Y %H:%M:%S"), t, ist.replace(tzinfo=None),
    ], dtype=object)
    out = standardize_timestamp_column(forms)
    assert out.nunique() == 1 and out.iloc[0] == format_ts(t)
    assert (standardize_to_datetime(forms) == pd.Timestamp(t)).all()
