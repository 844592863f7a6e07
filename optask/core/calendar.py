"""NSE/BSE sessions: trading days, holidays and special (Muhurat) sessions.

Built on pandas_market_calendars' `XNSE` (which includes Muhurat sessions), plus an
operator override file for what was announced after the library's release:

    {data root}/calendar_overrides.json
    {
      "holidays": ["2026-12-01"],
      "sessions": [{"date": "2026-11-08", "open": "18:00", "close": "19:15"}]
    }

Times are IST. An override session replaces the library's session on that day, and may
fall on a weekend (a Sunday Muhurat, which the library cannot express). A holiday removes
the day. BSE indices follow the same sessions.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from optask.core.timeutils import IST, UTC


class CalendarError(ValueError):
    """The override file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Session:
    day: dt.date
    open: dt.datetime  # IST, aware
    close: dt.datetime  # IST, aware
    special: bool = False

    @property
    def minutes(self) -> int:
        return int((self.close - self.open).total_seconds() // 60)


@functools.lru_cache(maxsize=32)
def _library_year(year: int) -> dict[dt.date, tuple[dt.datetime, dt.datetime]]:
    import pandas_market_calendars as mcal

    sched = mcal.get_calendar("XNSE").schedule(f"{year}-01-01", f"{year}-12-31")
    opens = sched["market_open"].dt.tz_convert("Asia/Kolkata")
    closes = sched["market_close"].dt.tz_convert("Asia/Kolkata")
    return {
        idx.date(): (o.to_pydatetime(), c.to_pydatetime())
        for idx, o, c in zip(sched.index, opens, closes, strict=True)
    }


def _parse_hhmm(text: str, where: str) -> dt.time:
    try:
        return dt.time.fromisoformat(text)
    except (TypeError, ValueError):
        raise CalendarError(f"{where}: time {text!r} is not HH:MM") from None


@dataclass
class MarketCalendar:
    """The exchange calendar with the operator's overrides applied."""

    overrides_file: Path | None = None
    holidays: set[dt.date] = field(default_factory=set)
    specials: dict[dt.date, tuple[dt.time, dt.time]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.overrides_file and Path(self.overrides_file).exists():
            self._load(Path(self.overrides_file))

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise CalendarError(f"{path}: not valid JSON ({exc})") from None
        for text in doc.get("holidays", []):
            try:
                self.holidays.add(dt.date.fromisoformat(text))
            except (TypeError, ValueError):
                raise CalendarError(f"{path}: holiday {text!r} is not YYYY-MM-DD") from None
        for i, entry in enumerate(doc.get("sessions", [])):
            where = f"{path}: sessions[{i}]"
            try:
                day = dt.date.fromisoformat(entry["date"])
            except (KeyError, TypeError, ValueError):
                raise CalendarError(f"{where}: needs \"date\": \"YYYY-MM-DD\"") from None
            start = _parse_hhmm(entry.get("open"), where)
            end = _parse_hhmm(entry.get("close"), where)
            if end <= start:
                raise CalendarError(f"{where}: close {end} is not after open {start}")
            self.specials[day] = (start, end)

    def session(self, day: dt.date) -> Session | None:
        """The day's session in IST, or None when the market is closed."""
        if day in self.holidays:
            return None
        if day in self.specials:
            start, end = self.specials[day]
            return Session(day, dt.datetime.combine(day, start, IST), dt.datetime.combine(day, end, IST), True)
        hit = _library_year(day.year).get(day)
        if hit is None:
            return None
        o, c = hit
        return Session(day, o, c, special=(o.time(), c.time()) != (dt.time(9, 15), dt.time(15, 30)))

    def is_trading_day(self, day: dt.date) -> bool:
        return self.session(day) is not None

    def session_minutes(self, day: dt.date) -> pd.DatetimeIndex:
        """Every collection minute, open inclusive to close exclusive, as UTC timestamps."""
        s = self.session(day)
        if s is None:
            return pd.DatetimeIndex([], tz=UTC)
        return pd.date_range(s.open, s.close, freq="min", inclusive="left").tz_convert(UTC)

    def sessions(self, start: dt.date, end: dt.date) -> list[Session]:
        days = pd.date_range(start, end, freq="D")
        return [s for s in (self.session(d.date()) for d in days) if s is not None]

    def in_session(self, ts: dt.datetime) -> bool:
        """Whether the minute `ts` is a collection minute."""
        ist = ts.astimezone(IST)
        s = self.session(ist.date())
        return s is not None and s.open <= ist < s.close

    def previous_trading_day(self, day: dt.date) -> dt.date:
        d = day - dt.timedelta(days=1)
        while not self.is_trading_day(d):
            d -= dt.timedelta(days=1)
        return d

    def last_closed_session(self, now: dt.datetime) -> dt.date:
        """The most recent day whose session has closed by `now` (a whole day to replay, verify or show)."""
        ist = now.astimezone(IST)
        s = self.session(ist.date())
        return ist.date() if s and s.close <= ist else self.previous_trading_day(ist.date())

    def trading_day_on_or_before(self, day: dt.date) -> dt.date:
        """Where an expiry falling on a holiday moves to."""
        return day if self.is_trading_day(day) else self.previous_trading_day(day)


def get_calendar(overrides_file: Path | None = None) -> MarketCalendar:
    """The calendar with the configured data root's override file."""
    if overrides_file is None:  # settings (pydantic) load only when asked: the calendar alone stays light
        from optask.core.config import get_settings

        overrides_file = get_settings().data.calendar_overrides
    return MarketCalendar(overrides_file)
