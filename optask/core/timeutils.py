"""Time: UTC inside, IST for people, one text form for every CSV (DESIGN section 3).

The unified `ts` text is ISO 8601 in IST with its offset, `2026-11-24T09:15:00+05:30`;
a fractional second appears only when the instant has one, so any instant survives
text-and-back exactly.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

IST = ZoneInfo("Asia/Kolkata")
UTC = dt.UTC
IST_NAME = "Asia/Kolkata"


class TimestampParseError(ValueError):
    """A timestamp value none of the known formats can read."""


def _aware(t: dt.datetime | pd.Timestamp) -> pd.Timestamp:
    """A tz-aware Timestamp; naive values are taken as IST (how legacy files wrote them)."""
    ts = pd.Timestamp(t)
    return ts.tz_localize(IST_NAME) if ts.tzinfo is None else ts


def to_utc(t: dt.datetime | pd.Timestamp) -> dt.datetime:
    return _aware(t).tz_convert("UTC").to_pydatetime()


def floor_minute(t: dt.datetime | pd.Timestamp) -> dt.datetime:
    """The collection minute an instant belongs to, in UTC."""
    return _aware(t).tz_convert("UTC").floor("min").to_pydatetime()


def format_ts(t: dt.datetime | pd.Timestamp) -> str:
    """One instant in the unified text form."""
    return format_ts_values([_aware(t)])[0]


def parse_ts(text: str) -> dt.datetime:
    """Any accepted single timestamp (e.g. a CLI `--at` or a task argument) -> aware UTC datetime."""
    if isinstance(text, str) and _HAS_ZONE.search(text.strip()):
        try:  # the common case, an ISO string with its offset: no pandas on the hot path
            return dt.datetime.fromisoformat(text.strip()).astimezone(UTC)
        except ValueError:
            pass
    return standardize_to_datetime(pd.Series([text])).iloc[0].to_pydatetime()


def parse_minute(text: str) -> dt.datetime:
    """A task's or the CLI's minute argument -> UTC minute; rejects what is not on a minute."""
    t = parse_ts(text)
    if t.second or t.microsecond:
        raise TimestampParseError(f"{text!r} is not on a whole minute")
    return t


def now_csv_format() -> str:
    """The current instant, to the second, in the unified text form."""
    return format_ts(dt.datetime.now(UTC).replace(microsecond=0))


def format_ts_values(values: list) -> list[str]:
    """A few instants (e.g. the distinct minutes of a table) -> unified text, without pandas overhead."""
    out = []
    for v in values:
        if v is None:
            out.append(None)
        elif getattr(v, "nanosecond", 0) or v.microsecond:
            out.append(format_ts_series(pd.Series([_aware(v)])).iloc[0])
        else:
            out.append(v.astimezone(IST).replace(tzinfo=None).isoformat(timespec="seconds") + "+05:30")
    return out


def format_ts_series(values: pd.Series) -> pd.Series:
    """tz-aware datetime Series -> unified text, vectorized."""
    ist = values.dt.tz_convert(IST_NAME)
    base = ist.dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac_ns = (ist.dt.microsecond * 1000 + ist.dt.nanosecond).to_numpy()
    text = base.to_numpy(dtype=object)
    if frac_ns.any():
        has = frac_ns != 0
        frac = pd.Series(frac_ns[has]).map(lambda n: f".{n:09d}".rstrip("0"))
        text[has] = text[has] + frac.to_numpy()
    return pd.Series(text + "+05:30", index=values.index, dtype=object)


_DMY = re.compile(r"^\d{2}-\d{2}-\d{4} \d{2}:\d{2}(:\d{2})?$")
_DIGITS = re.compile(r"^[+-]?\d+(\.\d+)?$")
_HAS_ZONE = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")


def _epoch_to_utc(num: np.ndarray) -> pd.DatetimeIndex:
    """Epoch numbers of any unit: the magnitude says whether they are s, ms, us or ns."""
    mag = np.abs(num)
    unit_ns = np.where(mag < 1e11, 1e9, np.where(mag < 1e14, 1e6, np.where(mag < 1e17, 1e3, 1.0)))
    ns = np.round(num * unit_ns).astype("int64")
    return pd.to_datetime(ns, unit="ns", utc=True)


def standardize_to_datetime(values: pd.Series) -> pd.Series:
    """Legacy timestamp values of any known format -> tz-aware UTC datetimes, vectorized per format."""
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is None:
            return values.dt.tz_localize(IST_NAME).dt.tz_convert("UTC")
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        if values.isna().any():
            bad = values[values.isna()]
            raise TimestampParseError(f"cannot parse timestamp {bad.iloc[0]!r} (row {bad.index[0]})")
        return pd.Series(_epoch_to_utc(values.to_numpy(dtype="float64")), index=values.index)

    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    is_dt = values.map(lambda v: isinstance(v, dt.datetime | pd.Timestamp))
    if is_dt.any():
        out[is_dt] = values[is_dt].map(lambda v: pd.Timestamp(to_utc(v)))
    is_num = values.map(lambda v: isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool))
    is_num &= ~is_dt
    if is_num.any():
        nums = values[is_num].astype("float64").to_numpy()
        if np.isnan(nums).any():
            bad = values[is_num][np.isnan(nums)]
            raise TimestampParseError(f"cannot parse timestamp {bad.iloc[0]!r} (row {bad.index[0]})")
        out[is_num] = _epoch_to_utc(nums)
    text_mask = values.map(lambda v: isinstance(v, str)) & ~is_dt & ~is_num
    if text_mask.any():
        text = values[text_mask].str.strip()
        digits = text.str.match(_DIGITS)
        if digits.any():
            out[digits[digits].index] = _epoch_to_utc(text[digits].astype("float64").to_numpy())
        dmy = text.str.match(_DMY) & ~digits
        if dmy.any():
            d = text[dmy]
            short = d.str.len() == 16
            parsed = pd.Series(pd.NaT, index=d.index, dtype="datetime64[ns]")
            if short.any():
                parsed[short] = pd.to_datetime(d[short], format="%d-%m-%Y %H:%M", errors="coerce")
            if (~short).any():
                parsed[~short] = pd.to_datetime(d[~short], format="%d-%m-%Y %H:%M:%S", errors="coerce")
            out[d.index] = parsed.dt.tz_localize(IST_NAME).dt.tz_convert("UTC")
        iso = ~digits & ~dmy
        if iso.any():
            t = text[iso]
            zoned = t.str.contains(_HAS_ZONE)
            if zoned.any():
                out[t[zoned].index] = pd.to_datetime(t[zoned], format="ISO8601", utc=True, errors="coerce")
            if (~zoned).any():
                naive = pd.to_datetime(t[~zoned], format="ISO8601", errors="coerce")
                out[t[~zoned].index] = naive.dt.tz_localize(IST_NAME).dt.tz_convert("UTC")
    bad = out.isna()
    if bad.any():
        first = bad[bad].index[0]
        raise TimestampParseError(
            f"cannot parse timestamp {values[first]!r} (row {first}); expected epoch s/ms/ns, ISO 8601 "
            "with or without offset, or DD-MM-YYYY HH:MM[:SS]"
        )
    return out


def standardize_timestamp_column(values: pd.Series) -> pd.Series:
    """Legacy timestamps of any known format -> the unified `ts` text (IST with offset)."""
    return format_ts_series(standardize_to_datetime(values))
