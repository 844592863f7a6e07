"""Clocks: the one place that reads "now", so everything else receives a minute or a clock.

Live, the clock is the wall clock. With `OPTASK_SIMULATED_SESSION_DAY` set (how `optask up` shows
minutes outside market hours, and how the chaos suite and the soak run a session at an accelerated
clock), `SessionReplayClock` plays that day's session from its open at `OPTASK_SIMULATED_SESSION_SPEED`
x real time and goes on past its close (the market is then closed, as on a real day). Its anchor can be
read from a shared store at every `now()` (`optask.infra.session_clock` shares it through Redis), so every
process reads the same clock. Pure: nothing here opens a connection.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Protocol

from optask.core.calendar import MarketCalendar
from optask.core.timeutils import IST, UTC


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class WallClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)


def clock_speed(settings) -> float:
    """How many times real time the process's clock runs: the simulated session's speed, else 1.

    The one place that scales: beat's interval, the close delay, health's minutes since a store."""
    market = settings.market
    return market.simulated_session_speed if market.simulated_session_day is not None else 1.0


#: A multi-day replay: session-minutes played after each close (end of day runs), and for a day without a session.
AFTER_CLOSE_MINUTES = 60
DAY_OFF_MINUTES = 10


@dataclass(frozen=True)
class Segment:
    """One calendar day of a replayed stretch: from `start` (timeline minutes), `length` minutes long."""

    start: int
    day: dt.date
    session: object  # the day's session minutes (a DatetimeIndex, UTC), or None on a day off
    length: int


@dataclass
class SessionReplayClock:
    """Maps wall time since `anchor` onto the minutes of `day`'s session, at `speed` x real time; with `days` > 1
    onto a stretch of calendar days: each session from its open, AFTER_CLOSE_MINUTES after its close, then the
    next day (a day off for DAY_OFF_MINUTES at midday), and the last day on past its close.

    With `client` (anything with `get(key)`), the anchor is read at every `now()`, so a shared clock that is
    moved (a restart that resumes, a drill that steps it back) moves for every process.
    """

    day: dt.date
    calendar: MarketCalendar
    speed: float = 1.0
    anchor: float = field(default_factory=time.time)
    client: object | None = None
    key: str = ""
    days: int = 1
    _segments: list[Segment] = field(default_factory=list, repr=False)

    def _anchor(self) -> float:
        if self.client is not None:
            try:
                raw = self.client.get(self.key)
                if raw is not None:
                    self.anchor = float(raw)
            except Exception:  # noqa: BLE001 - the store away for a moment: the last anchor read still holds
                pass
        return self.anchor

    def position(self) -> int:
        """Session minutes elapsed since the open (not wrapped)."""
        return int((time.time() - self._anchor()) * self.speed // 60)

    def segments(self) -> list[Segment]:
        """The stretch's days on the timeline (computed once: a holiday must be announced before the replay)."""
        if not self._segments:
            start = 0
            for i in range(self.days):
                d = self.day + dt.timedelta(days=i)
                minutes = self.calendar.session_minutes(d)
                session = minutes if len(minutes) else None
                length = len(minutes) + AFTER_CLOSE_MINUTES if session is not None else DAY_OFF_MINUTES
                self._segments.append(Segment(start, d, session, length))
                start += length
        return self._segments

    def total_minutes(self) -> int:
        """Timeline minutes of the whole stretch (one day: its session)."""
        if self.days == 1:
            return len(self.calendar.session_minutes(self.day))
        return sum(s.length for s in self.segments())

    def position_of(self, day: dt.date, minute: int = 0) -> int:
        """Where minute `minute` of `day`'s session (or of its day off) is on the timeline."""
        return next(s.start for s in self.segments() if s.day == day) + minute

    def now(self) -> dt.datetime:
        """The session's minute `position()` after the open; past the close, the minutes after it
        (outside the session: nothing is collected, and health knows the market is closed)."""
        if self.days > 1:
            return self._stretch_now(self.position())
        minutes = self.calendar.session_minutes(self.day)
        if len(minutes) == 0:
            raise ValueError(f"{self.day} has no session to simulate; pick a trading day")
        pos = self.position()
        if pos < len(minutes):
            return minutes[pos].to_pydatetime()
        return (minutes[-1] + dt.timedelta(minutes=1 + pos - len(minutes))).to_pydatetime()

    def _stretch_now(self, pos: int) -> dt.datetime:
        segments = self.segments()
        seg = next((s for s in reversed(segments) if s.start <= pos), segments[0])
        offset = max(pos - seg.start, 0)
        if seg.session is None:
            return (dt.datetime.combine(seg.day, dt.time(12, 0), IST) + dt.timedelta(minutes=offset)).astimezone(UTC)
        if offset < len(seg.session):
            return seg.session[offset].to_pydatetime()
        return (seg.session[-1] + dt.timedelta(minutes=1 + offset - len(seg.session))).to_pydatetime()
