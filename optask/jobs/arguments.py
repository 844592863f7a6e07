"""Task arguments checked before anything touches a path: whoever can enqueue a task must not be able to
write outside the data root (`index="../../x"`) or make a task of a day that is not one."""

from __future__ import annotations

import datetime as dt

from optask.core.config import Settings
from optask.core.timeutils import parse_minute

#: A batch task covers at most one day of one index's minutes.
MAX_BATCH_MINUTES = 24 * 60


class InvalidTaskArgument(ValueError):
    """A task was sent an argument optask never sends: refused before any file is touched (not retried)."""


def checked_index(index: object, settings: Settings) -> str:
    if not isinstance(index, str) or index not in settings.market.indices:
        raise InvalidTaskArgument(f"index {index!r} is not one of the configured OPTASK_INDICES "
                                  f"({', '.join(settings.market.indices)})")
    return index


def checked_minute(ts: object) -> dt.datetime:
    if not isinstance(ts, str) or len(ts) > 64:
        raise InvalidTaskArgument(f"minute {str(ts)[:80]!r} is not an ISO timestamp string")
    try:
        minute = parse_minute(ts)
    except (ValueError, TypeError) as exc:
        raise InvalidTaskArgument(f"minute {ts!r} is not a whole-minute ISO timestamp ({exc})") from None
    if not 2000 <= minute.year <= 2100:
        raise InvalidTaskArgument(f"minute {ts!r} is outside the years 2000-2100")
    return minute


def checked_minutes(minutes: object) -> list[dt.datetime]:
    if not isinstance(minutes, list | tuple) or not 0 < len(minutes) <= MAX_BATCH_MINUTES:
        raise InvalidTaskArgument(f"minutes must be a list of 1 to {MAX_BATCH_MINUTES} ISO timestamps")
    return [checked_minute(ts) for ts in minutes]


def checked_day(day: object) -> dt.date:
    """A real calendar day written YYYY-MM-DD (what the report and archive folders are named by)."""
    if not isinstance(day, str) or len(day) != 10:
        raise InvalidTaskArgument(f"day {str(day)[:80]!r} is not a date written YYYY-MM-DD")
    try:
        d = dt.date.fromisoformat(day)
    except ValueError:
        raise InvalidTaskArgument(f"day {day!r} is not a real date (YYYY-MM-DD)") from None
    if not 2000 <= d.year <= 2100:
        raise InvalidTaskArgument(f"day {day!r} is outside the years 2000-2100")
    return d
