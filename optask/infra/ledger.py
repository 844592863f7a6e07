"""The pipeline's ledger in Redis: which minutes each index has stored, missed, or claimed.

- claims: SET NX with expiry per (task, key), so a minute fanned out by two beats runs once;
- stored: a hash per (index, day) of minute -> {legs, stage timings, stored_at}, written only
  after every store is durable, so "stored" is never ahead of the files;
- missed: a hash per (index, day) of minute -> reason (retries exhausted, expired in queue),
  the backfill work list; a minute stored later leaves it;
- events: each minute stored is also an event on the stored-minute stream (`optask.infra.events`, which owns
  it), appended by the same script;
- repair: per (index, day), the in-session repair attempts of each minute (count, last outcome).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

import redis

from optask.core.timeutils import IST, parse_ts
from optask.infra import events
from optask.infra.coordination import PREFIX, claim_once, heartbeat
from optask.infra.redis_server import client_for

#: SET NX the claim; the progress hash says who holds it and how far it got (see Ledger.claim_progress).
_CLAIM_PROGRESS = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then
  redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'state', 'claimed')
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return 'new'
end
local progress = redis.call('HMGET', KEYS[2], 'owner', 'state')
if progress[2] == 'dispatched' then return 'dispatched' end
if progress[1] == ARGV[2] then return 'resume' end
return 'taken'
"""
CLAIM_TTL_S = 2 * 24 * 3600
#: KEYS: stored hash, missed hash, last_stored, events; ARGV: ts, info, index, legs, live (1/0), stored_at, kept,
#: the day's expiry (s: a net under the end-of-day sweep, `optask.infra.retention`).
#: One script so that the event's kind (which needs to know whether the minute was there) is never lost.
_MARK_STORED = f"""
local first = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[1])
local kind = 'repaired'
if ARGV[5] == '1' then kind = (first == 1) and 'minute' or 'again' end
{events.append_lua('KEYS[4]', 'ARGV[7]', ('ARGV[3]', 'ARGV[1]', 'ARGV[4]', 'ARGV[6]', 'kind'))}
return first
"""


def _day(ts: str) -> str:
    return parse_ts(ts).astimezone(IST).date().isoformat()


def stored_key(index: str, day: dt.date | str) -> str:
    """The hash of the minutes an index stored on an IST day (minute ISO -> what was recorded, JSON)."""
    return f"{PREFIX}:stored:{index}:{day if isinstance(day, str) else day.isoformat()}"


@dataclass
class Ledger:
    redis: redis.Redis
    keep_days: int = 30  # LEDGER_RETENTION_DAYS: a day's keys expire this long (plus one day) after their last write

    @property
    def _day_ttl_s(self) -> int:
        return (self.keep_days + 1) * 86400

    def claim(self, task: str, key: str, ttl_s: int = CLAIM_TTL_S) -> bool:
        """True for the first caller only, across processes and machines. The value is the claim time."""
        return claim_once(self.redis, task, key, ttl_s)

    def claim_progress(self, task: str, key: str, owner: str, ttl_s: int = CLAIM_TTL_S) -> str:
        """Claim (task, key) for `owner` (a Celery task id), recording progress: "new" for the first caller,
        "resume" for the same owner again while it has not reported `dispatched` (a redelivery or retry of
        the one task that claimed it: it must finish the job), "dispatched" once it has, "taken" for anyone
        else (a second beat's tick of the same minute)."""
        return self.redis.eval(_CLAIM_PROGRESS, 2, f"{PREFIX}:claim:{task}:{key}",
                               f"{PREFIX}:claim:{task}:{key}:progress", repr(time.time()), owner, ttl_s).decode()

    def mark_dispatched(self, task: str, key: str) -> None:
        self.redis.hset(f"{PREFIX}:claim:{task}:{key}:progress", "state", "dispatched")

    def claimed_at(self, task: str, key: str) -> float | None:
        """When a claim was taken (for a minute: when its tick was dispatched), or None."""
        v = self.redis.get(f"{PREFIX}:claim:{task}:{key}")
        return float(v) if v else None

    def is_stored(self, index: str, ts: str) -> bool:
        return bool(self.redis.hexists(stored_key(index, _day(ts)), ts))

    def mark_stored(self, index: str, ts: str, legs: int, stages_ms: dict[str, float], live: bool = True) -> None:
        """Record a stored minute; `live` (not a backfill or repair) also beats the index's heartbeat,
        which health's freshness check reads: repairs must not hide a live pipeline that stopped."""
        first_time = self.redis.register_script(_MARK_STORED)(*self._stored_call(index, ts, legs, stages_ms, live,
                                                                                   time.time()))
        if first_time:  # a repeat of a stored minute is not counted twice
            self.redis.hincrby(f"{PREFIX}:metrics:stored", index, 1)
        if live:
            heartbeat(self.redis, f"process_index:{index}", last_stored=ts)

    def _stored_call(self, index: str, ts: str, legs: int, stages_ms: dict[str, float], live: bool,
                     now: float) -> tuple[tuple, tuple]:
        """The keys and arguments of `_MARK_STORED` for one minute."""
        day = _day(ts)
        info = json.dumps({"legs": legs, "stages_ms": stages_ms, "stored_at": now, "live": live})
        keys = (stored_key(index, day), f"{PREFIX}:missed:{index}:{day}", f"{PREFIX}:last_stored:{index}",
                events.STREAM)
        return keys, (ts, info, index, legs, int(live), repr(now), events.KEPT, self._day_ttl_s)

    def mark_stored_many(self, index: str, legs_by_minute: dict[str, int]) -> None:
        """Record a batch's stored minutes (a backfill, repair or replay: not live) in one round trip."""
        if not legs_by_minute:
            return
        script = self.redis.register_script(_MARK_STORED)
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for ts, legs in legs_by_minute.items():
            script(*self._stored_call(index, ts, legs, {}, False, now), client=pipe)
        first_times = sum(int(x) for x in pipe.execute())
        if first_times:
            self.redis.hincrby(f"{PREFIX}:metrics:stored", index, first_times)

    def mark_missed(self, index: str, ts: str, reason: str) -> None:
        key = f"{PREFIX}:missed:{index}:{_day(ts)}"
        if not self.is_stored(index, ts) and self.redis.hset(key, ts, reason):
            self.redis.expire(key, self._day_ttl_s)
            self.redis.hincrby(f"{PREFIX}:metrics:missed", index, 1)

    def stored(self, index: str, day: dt.date) -> dict[str, dict]:
        raw = self.redis.hgetall(stored_key(index, day))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def missed(self, index: str, day: dt.date) -> dict[str, str]:
        raw = self.redis.hgetall(f"{PREFIX}:missed:{index}:{day.isoformat()}")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def last_stored(self, index: str) -> str | None:
        v = self.redis.get(f"{PREFIX}:last_stored:{index}")
        return v.decode() if v else None

    def stored_minutes(self, index: str, day: dt.date) -> set[str]:
        """The minutes the ledger has recorded as stored (a cache of the stores, cheap to ask)."""
        return {k.decode() for k in self.redis.hkeys(stored_key(index, day))}

    def repair_attempts(self, index: str, day: dt.date) -> dict[str, dict]:
        """Minute -> {attempts, last_at, last}: what in-session repair has tried for each minute."""
        raw = self.redis.hgetall(f"{PREFIX}:repair:{index}:{day.isoformat()}")
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def record_repair(self, index: str, ts: str, attempts: int, outcome: str) -> None:
        key = f"{PREFIX}:repair:{index}:{_day(ts)}"
        self.redis.hset(key, ts, json.dumps({"attempts": attempts, "last_at": time.time(), "last": outcome}))
        self.redis.expire(key, CLAIM_TTL_S * 4)

    def record_eod(self, day: str, summary: dict) -> None:
        """End of day has closed `day` (score before and after repair, status, report path)."""
        self.redis.hset(f"{PREFIX}:eod", day, json.dumps({**summary, "at": time.time()}))

    def eod_days(self) -> set[str]:
        """The days end of day has closed (within retention)."""
        return {k.decode() for k in self.redis.hkeys(f"{PREFIX}:eod")}

    def eod(self, day: str) -> dict | None:
        raw = self.redis.hget(f"{PREFIX}:eod", day)
        return json.loads(raw) if raw else None

    def stored_info(self, ts: str, indices: list[str]) -> dict[str, dict]:
        """The indices that have stored minute `ts`, with what the ledger recorded for each (one round trip)."""
        day = _day(ts)
        pipe = self.redis.pipeline(transaction=False)
        for index in indices:
            pipe.hget(stored_key(index, day), ts)
        return {i: json.loads(v) for i, v in zip(indices, pipe.execute(), strict=True) if v}


def ledger_for(settings) -> Ledger:
    """The process's ledger on the Redis optask uses (one connection pool per worker process)."""
    return Ledger(client_for(settings), settings.data.ledger_retention_days)
