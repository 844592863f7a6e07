"""Clocks: the one place that reads "now", so everything else receives a minute.

Beat asks a clock which collection minute it is. Live, that is the wall clock. With
`OPTASK_SIMULATED_SESSION_DAY` set (how `optask up` shows minutes outside market hours, and how
the chaos suite and the soak run a session at an accelerated clock), the clock plays that day's
session from its open at `OPTASK_SIMULATED_SESSION_SPEED` x real time and goes on past its close
(the market is then closed, as on a real day). The session's start (its anchor) is kept in Redis, so
beat, workers, health checks, a test's venue and a restarted stack all read the same clock.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from optask.calendar import MarketCalendar, get_calendar
from optask.timeutils import UTC, floor_minute

ANCHOR_TTL_S = 2 * 24 * 3600


class WallClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)


@dataclass
class SessionReplayClock:
    """Maps wall time since `anchor` onto the minutes of `day`'s session, at `speed` x real time.

    With `client`, the anchor is read from Redis at every `now()` (one GET), so a shared clock that is
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
            except Exception:  # noqa: BLE001 - Redis away for a moment: the last anchor read still holds
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


_REPLAY_CLOCKS: dict[tuple, SessionReplayClock] = {}


def anchor_key(day: dt.date, speed: float) -> str:
    from optask.coordination import PREFIX

    return f"{PREFIX}:clock:{day.isoformat()}:{speed:g}"


def start_session_clock(client, day: dt.date, speed: float, minutes: int, resume: bool = True) -> tuple[float, bool]:
    """Anchor the shared clock of a simulated session: (anchor, resumed).

    With `resume`, a session still in progress on this Redis (a restarted stack) continues where it was;
    otherwise, or when none is, it starts now from the open.
    """
    key = anchor_key(day, speed)
    raw = client.get(key)
    if resume and raw is not None and (time.time() - float(raw)) * speed / 60 < minutes:
        return float(raw), True
    now = time.time()
    client.set(key, repr(now), ex=ANCHOR_TTL_S)
    return now, False


def get_clock(settings=None) -> WallClock | SessionReplayClock:
    """The process's clock. A simulated session's anchor is shared through Redis when one answers."""
    from optask.config import get_settings

    settings = settings or get_settings()
    day = settings.market.simulated_session_day
    if day is None:
        return WallClock()
    speed = settings.market.simulated_session_speed
    cache_key = (day, speed, str(settings.data.calendar_overrides), settings.redis.effective_url())
    if cache_key not in _REPLAY_CLOCKS:
        client, key, anchor = None, anchor_key(day, speed), time.time()
        from optask.health import redis_url_if_running

        url, _ = redis_url_if_running(settings)
        if url:
            import redis

            try:
                client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
                client.set(key, repr(anchor), nx=True, ex=ANCHOR_TTL_S)  # the first process to ask starts it
            except (redis.RedisError, OSError):
                client = None
        _REPLAY_CLOCKS[cache_key] = SessionReplayClock(
            day, get_calendar(settings.data.calendar_overrides), speed, anchor, client, key)
    return _REPLAY_CLOCKS[cache_key]


def current_minute_iso() -> str:
    """The collection minute beat stamps on `collect_minute` (a second's slack for early wake-ups)."""
    return floor_minute(get_clock().now() + dt.timedelta(seconds=1)).isoformat()


def current_day_iso() -> str:
    """The IST day beat stamps on `end_of_day`."""
    from optask.timeutils import IST

    return get_clock().now().astimezone(IST).date().isoformat()
