"""What a request may ask for, checked before any file is read: each bad value is an `ApiError` that names the
parameter, what was given and what is allowed (a 4xx JSON body, never a traceback)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
from starlette.responses import JSONResponse

from optask.core.calendar import MarketCalendar
from optask.core.clock import WallClock
from optask.core.schema import EXPIRY_KINDS, SIDES
from optask.core.timeutils import IST, floor_minute

UTC = dt.UTC


class ApiError(Exception):
    """A request the API refuses: HTTP status, the parameter at fault, and a message meant for the caller (and
    headers for it, such as Retry-After)."""

    def __init__(self, status: int, parameter: str | None, message: str, headers: dict | None = None,
                 **extra) -> None:
        super().__init__(message)
        self.status, self.parameter, self.message, self.extra = status, parameter, message, extra
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"status": self.status, "parameter": self.parameter, "message": self.message, **self.extra}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers or self.headers)


def year_range() -> tuple[int, int]:
    """The years a time may name: from 2000 (before any option data optask reads) to next year."""
    return 2000, WallClock().now().year + 1


def checked_year(day: dt.date | dt.datetime, parameter: str, text: str) -> None:
    first, last = year_range()
    if not first <= day.year <= last:
        raise ApiError(400, parameter, f"{parameter}={text[:40]!r}: the year must be {first} to {last}")


def checked_index(index: str, configured: tuple[str, ...]) -> str:
    name = index.upper()
    if name not in configured:
        raise ApiError(404, "index", f"unknown index {index!r}; this server has {', '.join(configured)}")
    return name


def parse_time(text: str, parameter: str) -> dt.datetime:
    """An ISO time with an offset (IST or UTC, `Z` too); a time without one is IST, as people write it."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, parameter, f"{parameter}={text!r} is not an ISO time; use e.g. 2026-11-23T10:30+05:30 "
                       "or 2026-11-23T05:00Z") from None
    checked_year(t, parameter, text)  # before any time arithmetic: year 1 or 9999 would overflow it
    if t.tzinfo is None:
        t = t.replace(tzinfo=IST)
    return floor_minute(t)


def parse_bound(text: str | None, parameter: str, end: bool) -> dt.datetime | None:
    """from/to: a day (the whole of it) or a time. `to` is inclusive; a day as `to` means its end."""
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        return parse_time(text, parameter)
    checked_year(day, parameter, text)
    start = dt.datetime.combine(day, dt.time(0, 0), IST)
    return start + dt.timedelta(days=1) - dt.timedelta(minutes=1) if end else start


@dataclass(frozen=True)
class Range:
    """Minutes first..last inclusive (UTC), and the IST days they touch."""

    first: dt.datetime
    last: dt.datetime

    def days(self) -> list[dt.date]:
        a = self.first.astimezone(IST).date()
        return [a + dt.timedelta(days=i) for i in range(self.n_days)]

    @property
    def n_days(self) -> int:
        return (self.last.astimezone(IST).date() - self.first.astimezone(IST).date()).days + 1


def checked_range(start: str | None, stop: str | None, default_day: dt.date | None, calendar: MarketCalendar,
                  max_days: int) -> Range:
    """from/to, each defaulting to the latest stored day; `from` after `to`, too many days (counted by subtraction,
    before any list of days is made), or a single day that is not a session are refused. On the event loop: the
    calendar has every year from year_range() ready (ServerState.warm_calendar)."""
    first, last = parse_bound(start, "from", end=False), parse_bound(stop, "to", end=True)
    if first is None or last is None:
        if default_day is None:
            raise ApiError(404, "from", "nothing is stored for this index yet; no default range")
        first = first or dt.datetime.combine(default_day if last is None else last.astimezone(IST).date(),
                                             dt.time(0, 0), IST)
        last = last or dt.datetime.combine(first.astimezone(IST).date(), dt.time(23, 59), IST)
    if first > last:
        raise ApiError(400, "from", f"from={first.astimezone(IST).isoformat()} is after to="
                       f"{last.astimezone(IST).isoformat()}; give from <= to")
    span = Range(first.astimezone(UTC), last.astimezone(UTC))
    n = (last.astimezone(IST).date() - first.astimezone(IST).date()).days + 1
    if n > max_days:
        raise ApiError(400, "to", f"the range covers {n:,} days; at most {max_days} per request: "
                       "ask for fewer days at a time")
    days = span.days()
    if not any(calendar.is_trading_day(d) for d in days):
        what = days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"
        raise ApiError(400, "from", f"{what} has no market session (weekend or exchange holiday); "
                       f"the previous session was {calendar.previous_trading_day(days[0])}")
    return span


def checked_expiry(text: str | None) -> tuple[str, object] | None:
    """None (every expiry), ("kind", "this_week"), or ("date", date)."""
    if not text:
        return None
    if text in EXPIRY_KINDS:
        return "kind", text
    try:
        return "date", dt.date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, "expiry", f"expiry={text!r} is neither a date (YYYY-MM-DD) nor one of "
                       f"{', '.join(EXPIRY_KINDS)}") from None


def checked_numbers(text: str | None, parameter: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ApiError(400, parameter, f"{parameter}={text!r} must be numbers separated by commas, "
                       "e.g. 24000,24050") from None


def checked_side(text: str | None) -> str | None:
    if not text:
        return None
    if text.upper() not in SIDES:
        raise ApiError(400, "side", f"side={text!r}; allowed: {', '.join(SIDES)}")
    return text.upper()


def checked_columns(text: str | None, allowed: list[str], always: tuple[str, ...] = ()) -> list[str] | None:
    """The columns asked for (those in `always` first, once), or None for all; an unknown one is refused."""
    if not text:
        return None
    asked = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in asked if c not in allowed]
    if bad:
        raise ApiError(400, "columns", f"unknown column {', '.join(bad)}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys([*always, *asked]))


def checked_limit(limit: int | None, row_limit: int) -> int:
    if limit is None:
        return row_limit
    if limit < 1 or limit > row_limit:
        raise ApiError(400, "limit", f"limit={limit}: between 1 and {row_limit}, this server's row limit; "
                       "page through more with the next_cursor each page returns (cursor=)")
    return limit


def tz_of(text: str | None) -> dt.tzinfo:
    if not text or text.upper() == "UTC":
        return UTC
    if text.upper() in ("IST", "ASIA/KOLKATA"):
        return IST
    raise ApiError(400, "tz", f"tz={text!r}; allowed: UTC (the default), IST")


def iso(t: dt.datetime | pd.Timestamp | None, tz: dt.tzinfo = UTC) -> str | None:
    return None if t is None or pd.isna(t) else pd.Timestamp(t).tz_convert(tz).isoformat()
