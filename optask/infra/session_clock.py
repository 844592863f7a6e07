"""The process's clock, with a simulated session's anchor shared through Redis.

Beat, workers, health checks, a test's venue and a restarted stack all read the same session clock:
its start (the anchor) is one Redis key, set by the first process that asks.
"""

from __future__ import annotations

import datetime as dt
import time

import redis

from optask.core.calendar import get_calendar
from optask.core.clock import SessionReplayClock, WallClock
from optask.core.config import get_settings
from optask.core.timeutils import IST, floor_minute
from optask.infra.coordination import PREFIX
from optask.infra.redis_client import connect
from optask.infra.redis_server import url_if_running

ANCHOR_TTL_S = 2 * 24 * 3600
_REPLAY_CLOCKS: dict[tuple, SessionReplayClock] = {}


def anchor_key(day: dt.date, speed: float, days: int = 1) -> str:
    return f"{PREFIX}:clock:{day.isoformat()}:{speed:g}" + (f":{days}d" if days > 1 else "")


def start_session_clock(client, day: dt.date, speed: float, minutes: int, resume: bool = True,
                        days: int = 1) -> tuple[float, bool]:
    """Anchor the shared clock of a simulated session: (anchor, resumed).

    With `resume`, a session still in progress on this Redis (a restarted stack) continues where it was;
    otherwise, or when none is, it starts now from the open.
    """
    key = anchor_key(day, speed, days)
    raw = client.get(key)
    if resume and raw is not None and (time.time() - float(raw)) * speed / 60 < minutes:
        return float(raw), True
    now = time.time()
    client.set(key, repr(now), ex=ANCHOR_TTL_S)
    return now, False


def get_clock(settings=None) -> WallClock | SessionReplayClock:
    """The process's clock. A simulated session's anchor is shared through Redis when one answers."""
    settings = settings or get_settings()
    day = settings.market.simulated_session_day
    if day is None:
        return WallClock()
    speed, days = settings.market.simulated_session_speed, settings.market.simulated_session_days
    cache_key = (day, speed, days, str(settings.data.calendar_overrides), settings.redis.effective_url())
    if cache_key not in _REPLAY_CLOCKS:
        client, key, anchor = None, anchor_key(day, speed, days), time.time()
        url, _ = url_if_running(settings)
        if url:
            try:
                client = connect(url, timeout_s=2)
                client.set(key, repr(anchor), nx=True, ex=ANCHOR_TTL_S)  # the first process to ask starts it
            except (redis.RedisError, OSError):
                client = None
        _REPLAY_CLOCKS[cache_key] = SessionReplayClock(
            day, get_calendar(settings.data.calendar_overrides), speed, anchor, client, key, days)
    return _REPLAY_CLOCKS[cache_key]


def clock_note(settings=None) -> dict:
    """What a heartbeat says of its process's clock: the simulated session it plays (day, speed, days), or nothing
    for the wall clock. Beat carries it, so a process started without OPTASK_SIMULATED_SESSION_DAY (`optask
    health` in a shell beside `optask up` outside market hours) judges by the stack's clock (`clock_of`)."""
    market = (settings or get_settings()).market
    if market.simulated_session_day is None:
        return {}
    return {"session_day": market.simulated_session_day.isoformat(), "speed": market.simulated_session_speed,
            "days": market.simulated_session_days}


def clock_of(note: dict, client, calendar) -> SessionReplayClock | None:
    """The clock a heartbeat's `clock_note` names, on its shared anchor; None for the wall clock, or when the
    anchor is gone (that session's clock expired)."""
    if not note.get("session_day"):
        return None
    day, speed, days = dt.date.fromisoformat(note["session_day"]), float(note["speed"]), int(note.get("days", 1))
    key = anchor_key(day, speed, days)
    anchor = client.get(key)
    return None if anchor is None else SessionReplayClock(day, calendar, speed, float(anchor), client, key, days)


def current_minute_iso() -> str:
    """The collection minute beat stamps on `collect_minute` (a second's slack for early wake-ups)."""
    return floor_minute(get_clock().now() + dt.timedelta(seconds=1)).isoformat()


def current_day_iso() -> str:
    """The IST day beat stamps on `end_of_day`."""
    return get_clock().now().astimezone(IST).date().isoformat()
