"""The stored-minute events: one capped Redis stream, its key, its fields and its readers, here and nowhere else.

The ledger appends an event in the same script that records a minute stored (`Ledger.mark_stored`: the event's
kind needs to know whether the minute was there, so the append is a Lua line this module writes, `append_lua`).
`optask up` and `optask demo` follow it (`EventStream.read`); the API follows it once per process, replays it to a
subscriber that comes back and answers `since=` from it (`AsyncEventStream`). Paging lives here once: every range
read goes through `entries_after`, a page at a time.

Each event names the index, the minute (`ts`, ISO), the legs stored, when (`stored_at`, epoch s) and its `kind`:
`minute` (stored live, the first time), `repaired` (stored by a repair or backfill: new or replacing what was
there) or `again` (a live minute stored again, as a redelivery does: nothing changed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import redis
import redis.asyncio

from optask.core.timeutils import parse_ts
from optask.infra.coordination import PREFIX

STREAM = f"{PREFIX}:events"
KEPT = 50_000  # the stream is capped near this many events (about three weeks of six indices)
FIELDS = ("index", "ts", "legs", "stored_at", "kind")
KINDS = ("minute", "repaired", "again")
NONE = "0-0"  # the id before every event
#: Where a replay after ARGV[1] starts when more than ARGV[2] events follow it, found inside Redis (the events
#: themselves are not sent here, a replay reads them a page at a time): {0} when all follow, else {1, the first
#: event kept, the ts of the first and the last event left out}.
_WINDOW = """
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


def append_lua(key: str, kept: str, values: Sequence[str]) -> str:
    """The Lua call that appends one event, for a script that appends it with what the event records: `key` and
    `kept` (the cap) and `values` (one per FIELDS, in order) are Lua expressions of that script."""
    pairs = ", ".join(f"'{name}', {value}" for name, value in zip(FIELDS, values, strict=True))
    return f"redis.call('XADD', {key}, 'MAXLEN', '~', {kept}, '*', {pairs})"


def decoded(entry) -> tuple[str, dict[str, str]]:
    """(id, fields) of one entry as redis-py gives it (bytes)."""
    eid, raw = entry
    return eid.decode(), {k.decode(): v.decode() for k, v in raw.items()}


def event_key(event_id: str) -> tuple[int, int]:
    """An id as numbers, to order ids (a string comparison would put 9-0 after 10-0)."""
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


@dataclass(frozen=True)
class Event:
    """One stored-minute event, parsed (`of`)."""

    id: str
    index: str
    ts: dt.datetime
    kind: str
    stored_at: float

    @classmethod
    def of(cls, event_id: str, fields: dict) -> Event | None:
        """The event, or None for a malformed entry."""
        kind = fields.get("kind", "minute")  # events written before kinds existed were live minutes
        try:
            return cls(event_id, fields["index"], parse_ts(fields["ts"]), kind, float(fields["stored_at"]))
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class EventStream:
    """The stream on a blocking client (`optask up`'s console, the demo, the API's `since=` in a worker thread)."""

    redis: redis.Redis

    def last_id(self) -> str:
        """The newest event's id (NONE when there is none): follow the stream from here."""
        last = self.redis.xrevrange(STREAM, count=1)
        return last[0][0].decode() if last else NONE

    def read(self, after: str = "$", block_ms: int = 1000, count: int = 1000) -> list[tuple[str, dict[str, str]]]:
        """The events after `after` ("$": only new ones), waiting up to block_ms for the first."""
        out = self.redis.xread({STREAM: after}, block=block_ms, count=count) or []
        return [decoded(entry) for _, entries in out for entry in entries]

    def entries_after(self, after: str, inclusive: bool = False,
                      page: int = 10_000) -> Iterator[tuple[str, dict[str, str]]]:
        """Every event after `after` (or from it, `inclusive`), oldest first, read `page` at a time."""
        for chunk in self._pages(after, inclusive, page):
            yield from map(decoded, chunk)

    def minutes_after(self, after: str, index: str, page: int = 10_000) -> list[str]:
        """The minutes (ISO) of the index's events after `after`, as stored (a minute stored twice is there twice):
        the API's since=. Filtered on the raw entries, with no dict made per event of the whole stream."""
        name = index.encode()
        return [raw[b"ts"].decode() for chunk in self._pages(after, False, page) for _eid, raw in chunk
                if raw.get(b"index") == name and b"ts" in raw]

    def _pages(self, after: str, inclusive: bool, page: int) -> Iterator[list]:
        start = after if inclusive else f"({after}"
        while True:
            chunk = self.redis.xrange(STREAM, min=start, max="+", count=page)
            yield chunk
            if len(chunk) < page:
                return
            start = f"({chunk[-1][0].decode()}"

    def length(self) -> int:
        return self.redis.xlen(STREAM)


@dataclass(frozen=True)
class AsyncEventStream:
    """The stream on an asyncio client (the API process: its follower, the push's replays, `since=`)."""

    redis: redis.asyncio.Redis

    async def last_id(self) -> str:
        last = await self.redis.xrevrange(STREAM, count=1)
        return last[0][0].decode() if last else NONE

    async def read(self, after: str, block_ms: int = 5000, count: int = 1000) -> list[tuple[str, dict[str, str]]]:
        """As EventStream.read; the caller's client must outlast block_ms."""
        out = await self.redis.xread({STREAM: after}, block=block_ms, count=count) or []
        return [decoded(entry) for _, entries in out for entry in entries]

    async def entries_after(self, after: str, inclusive: bool = False,
                            page: int = 25) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """As EventStream.entries_after; a small page by default, since each is parsed on the event loop."""
        start = after if inclusive else f"({after}"
        while True:
            chunk = await self.redis.xrange(STREAM, min=start, max="+", count=page)
            for entry in chunk:
                yield decoded(entry)
            if len(chunk) < page:
                return
            start = f"({chunk[-1][0].decode()}"

    async def trimmed_past(self, after: str) -> str | None:
        """The oldest event kept, when the cap has trimmed events after `after` away; else None."""
        first = await self.redis.xrange(STREAM, count=1)
        if not first:
            return None
        oldest = first[0][0].decode()
        return oldest if event_key(after) < event_key(oldest) and await self.redis.xlen(STREAM) >= KEPT * 0.9 else None

    async def newest_window(self, after: str, most: int) -> tuple[str, str, str] | None:
        """When more than `most` events follow `after`: (the first of the newest `most`, the ts of the first and
        of the last event before it); else None. Found inside Redis, reading no event out."""
        found = await self.redis.eval(_WINDOW, 1, STREAM, after, most)
        return (found[1].decode(), found[2].decode(), found[3].decode()) if int(found[0]) else None
