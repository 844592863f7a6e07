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
from optask.core.timeutils import UTC


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


@dataclass
class SessionReplayClock:
    """Maps wall time since `anchor` onto the minutes of `day`'s session, at `speed` x real time.

    With `client` (anything with `get(key)`), the anchor is read at every `now()`, so a shared clock that is
    moved (a restart that resumes, a drill that steps it back) moves for every process.
    """

    day: dt.date
    calendar: MarketCalendar
    speed: float = 1.0
    anchor: float = field(default_factory=time.time)
    client: object | None = None
    key: str = ""

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

    def now(self) -> dt.datetime:
        """The session's minute `position()` after the open; past the close, the minutes after it
        (outside the session: nothing is collected, and health knows the market is closed)."""
        minutes = self.calendar.session_minutes(self.day)
        if len(minutes) == 0:
            raise ValueError(f"{self.day} has no session to simulate; pick a trading day")
        pos = self.position()
        if pos < len(minutes):
            return minutes[pos].to_pydatetime()
        return (minutes[-1] + dt.timedelta(minutes=1 + pos - len(minutes))).to_pydatetime()
