"""Clocks: the one place that reads "now", so everything else receives a minute.

Beat asks a clock which collection minute it is. Live, that is the wall clock. With
`OPTASK_SIMULATED_SESSION_DAY` set (how `optask up` shows minutes outside market hours),
the clock plays that day's session from its open at wall speed, starting when the process
starts and wrapping at the close, so every tick is a real in-session minute.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from optask.calendar import MarketCalendar, get_calendar
from optask.timeutils import UTC, floor_minute


class WallClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)


@dataclass
class SessionReplayClock:
    """Maps wall time since `anchor` onto the minutes of `day`'s session, at `speed` x real time."""

    day: dt.date
    calendar: MarketCalendar
    speed: float = 1.0
    anchor: float = field(default_factory=time.time)

    def now(self) -> dt.datetime:
        minutes = self.calendar.session_minutes(self.day)
        if len(minutes) == 0:
            raise ValueError(f"{self.day} has no session to simulate; pick a trading day")
        elapsed_min = int((time.time() - self.anchor) * self.speed // 60)
        return minutes[elapsed_min % len(minutes)].to_pydatetime()


_REPLAY_CLOCKS: dict[tuple, SessionReplayClock] = {}


def get_clock(settings=None) -> WallClock | SessionReplayClock:
    """The process's clock. A simulated session is anchored at its first use, so it advances from there."""
    from optask.config import get_settings

    settings = settings or get_settings()
    day = settings.market.simulated_session_day
    if day is None:
        return WallClock()
    key = (day, settings.market.simulated_session_speed, str(settings.data.calendar_overrides))
    if key not in _REPLAY_CLOCKS:
        _REPLAY_CLOCKS[key] = SessionReplayClock(
            day, get_calendar(settings.data.calendar_overrides), settings.market.simulated_session_speed)
    return _REPLAY_CLOCKS[key]


def current_minute_iso() -> str:
    """The collection minute beat stamps on `collect_minute` (a second's slack for early wake-ups)."""
    return floor_minute(get_clock().now() + dt.timedelta(seconds=1)).isoformat()


def current_day_iso() -> str:
    """The IST day beat stamps on `end_of_day`."""
    from optask.timeutils import IST

    return get_clock().now().astimezone(IST).date().isoformat()
