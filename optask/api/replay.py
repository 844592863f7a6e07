"""What a subscriber that comes back is owed: the stored-minute events after the last id it saw, read from the
stream in Redis, at most API_REPLAY_MAX of them (the newest). Older ones are not replayed one by one: the
subscriber is told which minutes it missed and where to read them whole (/v1/summary, or since=), as it is told
when the stream no longer keeps them, so that one resume can never cost the server a whole stream of payloads."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator

import orjson

from optask.api.params import ApiError
from optask.core.timeutils import parse_ts
from optask.infra.events import AsyncEventStream

_EVENT_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_MAX_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit numbers


def checked_event_id(value: str | None, parameter: str) -> str | None:
    """An event id as Redis can take it (ms-seq, each under 2**64), or None; anything else is a 400."""
    if value is None or value == "":
        return None
    hit = _EVENT_ID.match(value)
    if not hit or int(hit[1]) > _MAX_PART or int(hit[2]) > _MAX_PART:
        raise ApiError(400, parameter, f"{parameter}={value[:60]!r} is not an event id (like 1764489300000-0): pass "
                       "the id of the last event received, or an earlier answer's X-Stored-Cursor header")
    return value


async def lost_since(redis, after: str) -> str | None:
    """Why events after `after` cannot all be given (the stream was trimmed past it), or None."""
    oldest = await AsyncEventStream(redis).trimmed_past(after)
    if oldest is None:
        return None
    return (f"events after {after} are no longer all kept (the oldest kept is {oldest}): read "
            "the range again without since= (/v1/summary, /v1/legs)")


async def window(redis, after: str, most: int) -> tuple[AsyncIterator[tuple[str, dict]], bytes | None]:
    """The events after `after` to replay, oldest first (at most `most`: the newest), read as they are consumed;
    and the notice for the subscriber when some are left out (trimmed from the stream, or more than `most`)."""
    stream = AsyncEventStream(redis)
    found = await stream.newest_window(after, most)
    if found is not None:
        first_kept, first, last = found
        return (stream.entries_after(first_kept, inclusive=True),
                _too_many(after, first_kept, {"ts": first}, {"ts": last}, most))
    why = await lost_since(redis, after)
    return stream.entries_after(after), None if why is None else orjson.dumps({"type": "lost", "message": why})


def _too_many(after: str, first_kept: str, first: dict, last: dict, most: int) -> bytes:
    """The notice for events not replayed: the minutes they were about and where to read them."""
    times = sorted(t for t in (_ts(first), _ts(last)) if t is not None)
    span = f"{times[0].isoformat()} to {times[-1].isoformat()}" if times else "an unknown range"
    return orjson.dumps({
        "type": "lost", "resume_after": first_kept, "from": times[0].isoformat() if times else None,
        "to": times[-1].isoformat() if times else None,
        "message": f"more than {most} events (API_REPLAY_MAX) were stored after {after}: only the newest {most} "
                   f"are replayed. The minutes of the others ({span}) are in /v1/summary/{{index}}?from=...&to= "
                   f"(or since={after}, for exactly what was stored after it)"})


def _ts(fields: dict) -> dt.datetime | None:
    try:
        return parse_ts(fields["ts"])
    except (KeyError, ValueError):
        return None
