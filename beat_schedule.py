"""The one beat schedule of optask, in Asia/Kolkata time.

Minute collection fires every minute of every day, not `mon-fri`: a special session can
fall on a weekend (a Sunday Muhurat), so `collect_minute` asks the calendar itself and
returns at once outside a session. Each send is stamped with its minute (or day) by the
clock when beat sends it, so the tasks never read "now".
"""

from __future__ import annotations

import datetime as dt
import os

import redis
from celery.beat import BeatLazyFunc
from celery.schedules import crontab
from celery.signals import beat_init

from optask.core.clock import clock_speed
from optask.core.config import get_settings
from optask.infra.coordination import heartbeat
from optask.infra.queues import (
    EOD_SWEEP_EXPIRES_S,
    HEALTH_EXPIRES_S,
    REPAIR_EXPIRES_S,
    TICK_EXPIRES_S,
)
from optask.infra.redis_client import connect
from optask.infra.redis_server import url_if_running
from optask.infra.session_clock import clock_note, current_day_iso, current_minute_iso

TIMEZONE = "Asia/Kolkata"


def _minute_schedule():
    """Once per clock minute: a crontab live; every 60/speed seconds in an accelerated simulated session."""
    speed = clock_speed(get_settings())
    return dt.timedelta(seconds=60.0 / speed) if speed > 1 else crontab()


def _repair_schedule():
    """Every other clock minute (scaled like the minute schedule in an accelerated simulated session)."""
    every = _minute_schedule()
    return every * 2 if isinstance(every, dt.timedelta) else crontab(minute="*/2")


_beat_redis = None


@beat_init.connect
def beat_heartbeat(**_) -> None:
    """Beat's own heartbeat, at start and every tick: health reads it (beat alive)."""
    global _beat_redis


    try:
        if _beat_redis is None:
            url, _ = url_if_running(get_settings())
            _beat_redis = connect(url) if url else None
        if _beat_redis is not None:
            heartbeat(_beat_redis, "beat", pid=os.getpid(), **clock_note())  # health judges by beat's clock
    except (redis.RedisError, OSError):
        _beat_redis = None  # reconnect next tick; a missing heartbeat is what health reports


def tick_minute() -> str:
    """The minute beat stamps on `collect_minute` (and a heartbeat of beat's)."""
    beat_heartbeat()
    return current_minute_iso()


BEAT_SCHEDULE = {
    "collect-minute": {
        "task": "tasks.collect_minute",
        "schedule": _minute_schedule(),  # every minute; the calendar decides, not a mon-fri crontab
        "args": (BeatLazyFunc(tick_minute),),
        # A tick nobody picked up within the minute is useless: the next tick is already due.
        "options": {"expires": TICK_EXPIRES_S},
    },
    # Self-healing in session: minutes not stored a few minutes after their time are rebuilt from the
    # archive or the provider's history (on the maintenance queue), at most a few attempts each.
    "repair-missed": {
        "task": "tasks.repair_missed",
        "schedule": _repair_schedule(),
        "args": (BeatLazyFunc(current_minute_iso),),
        "options": {"expires": REPAIR_EXPIRES_S},
    },
    # end_of_day is also enqueued by the last minute of each session; this late sweep catches a
    # day whose last minute was lost. It is idempotent, so running twice is harmless.
    "end-of-day-sweep": {
        "task": "tasks.end_of_day",
        "schedule": crontab(hour=23, minute=30),
        "args": (BeatLazyFunc(current_day_iso),),
        "options": {"expires": EOD_SWEEP_EXPIRES_S},
    },
}

if get_settings().monitoring.health_in_beat:
    # Health checks, alerts and self-healing every HEALTH_CHECK_INTERVAL seconds, so a Celery deployment
    # monitors itself (`optask up` runs a monitor process of its own instead: it must not wait behind
    # the very workers it watches).
    BEAT_SCHEDULE["health-check"] = {
        "task": "tasks.health_check",
        "schedule": dt.timedelta(seconds=get_settings().monitoring.health_check_interval),
        "options": {"expires": HEALTH_EXPIRES_S},
    }
