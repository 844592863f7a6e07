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
from optask.infra.ledger import EVENTS, EVENTS_KEPT

CHUNK = 25  # events read from Redis at once: each read is parsed on the event loop, so a small one
#: Where a replay after ARGV[1] starts when more than ARGV[2] events follow it, found inside Redis (the events
#: themselves are not sent here, a replay reads them CHUNK at a time): {0} when all follow, else {1, the first
#: event kept, the ts of the first and the last event left out}.
WINDOW = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '(' .. ARGV[1], 'COUNT', ARGV[2])
if #newest < tonumber(ARGV[2]) then return {0} end
local first_kept = newest[#newest][1]
local skipped = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '(' .. first_kept, 'COUNT', 1)
if #skipped == 0 then return {0} end
local last = redis.call('XREVRANGE', KEYS[1], '(' .. first_kept, '(' .. ARGV[1], 'COUNT', 1)
local function ts(entry)
  for i = 1, #entry[2], 2 do if entry[2][i] == 'ts' then return entry[2][i + 1] end end
  return ''
end
return {1, first_kept, ts(skipped[1]), ts(last[1])}
"""
_EVENT_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_MAX_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit numbers


def event_key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def checked_event_id(value: str | None, parameter: str) -> str | None:
    """An event id as Redis can take it (ms-seq, each under 2**64), or None; anything else is a 400."""
    if value is None or value == "":
        return None
    hit = _EVENT_ID.match(value)
    if not hit or int(hit[1]) > _MAX_PART or int(hit[2]) > _MAX_PART:
        raise ApiError(400, parameter, f"{parameter}={value[:60]!r} is not an event id (like 1764489300000-0): pass "
                       "the id of the last event received, or an earlier answer's X-Stored-Cursor header")
    return value


def decoded(entry) -> tuple[str, dict]:
    eid, raw = entry
    return eid.decode(), {k.decode(): v.decode() for k, v in raw.items()}


async def entries_after(redis, after: str, inclusive: bool = False) -> AsyncIterator[tuple[str, dict]]:
    """Every event after `after` (or from it, `inclusive`), oldest first, read CHUNK at a time."""
    start = after if inclusive else f"({after}"
    while True:
        chunk = await redis.xrange(EVENTS, min=start, max="+", count=CHUNK)
        for entry in chunk:
            yield decoded(entry)
        if len(chunk) < CHUNK:
            return
        start = f"({chunk[-1][0].decode()}"


async def lost_since(redis, after: str) -> str | None:
    """Why events after `after` cannot all be given (the stream was trimmed past it), or None."""
    first = await redis.xrange(EVENTS, count=1)
    if first and event_key(after) < event_key(first[0][0].decode()) and await redis.xlen(EVENTS) >= EVENTS_KEPT * 0.9:
        return (f"events after {after} are no longer all kept (the oldest kept is {first[0][0].decode()}): read "
                "the range again without since= (/v1/summary, /v1/legs)")
    return None


async def window(redis, after: str, most: int) -> tuple[AsyncIterator[tuple[str, dict]], bytes | None]:
    """The events after `after` to replay, oldest first (at most `most`: the newest), read as they are consumed;
    and the notice for the subscriber when some are left out (trimmed from the stream, or more than `most`)."""
    found = await redis.eval(WINDOW, 1, EVENTS, after, most)
    if int(found[0]):
        first_kept = found[1].decode()
        times = {"ts": found[2].decode()}, {"ts": found[3].decode()}
        return entries_after(redis, first_kept, inclusive=True), _too_many(after, first_kept, *times, most)
    why = await lost_since(redis, after)
    return entries_after(redis, after), None if why is None else orjson.dumps({"type": "lost", "message": why})


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
