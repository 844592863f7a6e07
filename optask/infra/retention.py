"""Every Redis key optask writes, what bounds it, and the daily sweep that drops old days.

Redis runs with `noeviction`: a key family that grows without end would one day stop the pipeline. So each
family is bounded in one of four ways, listed here (the docs' Redis keys page is generated from this list) and
checked by a test that scans a Redis after several simulated days:

- per day: one key per (.., day), or a field per day of one hash, dropped by `prune` once the day is
  LEDGER_RETENTION_DAYS old by the clock (the ledger is a cache of the stores: an older day is asked of them);
- expiring: every write sets a TTL;
- capped: a list or stream trimmed at each write;
- configured: a key, or a field, per configured thing (index, queue, token, component).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import redis

from optask.infra import events
from optask.infra.coordination import PREFIX

_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})")
#: Hashes with one field per day (a field cannot expire: old fields are deleted).
DAY_FIELDS = (f"{PREFIX}:eod",)


@dataclass(frozen=True)
class Family:
    pattern: str  # after "optask:", * for a part
    bound: str  # per day | expiring | capped | configured
    how: str
    by_day: bool = False  # its keys name a day, and days past the retention are dropped (as well as expiring)

    def matches(self, key: str) -> bool:
        return re.fullmatch(re.escape(f"{PREFIX}:{self.pattern}").replace(r"\*", "[^ ]+"), key) is not None


FAMILIES = (
    Family("stored:*:*", "per day", "the ledger's stored minutes of an (index, day)", True),
    Family("missed:*:*", "per day", "the ledger's missed minutes of an (index, day)", True),
    Family("repair:*:*", "per day", "in-session repair attempts of an (index, day); also expires after 8 days", True),
    Family("cursor:*", "per day", "an incremental reader's position in a (store, table, index, day)", True),
    Family("kite:spot:*:*", "per day", "the Kite universe's spot range of a (day, index)", True),
    Family("eod", "per day", "a field per closed day: the end-of-day scores and report", True),
    Family("claim:*", "expiring", "once-only claims of a task and key (2 days; a day's are dropped with it)", True),
    Family("clock:*:*", "expiring", "a simulated session's shared clock anchor (2 days)"),
    Family("lock:*", "expiring", "writer locks (their timeout)"),
    Family("deliveries:*", "expiring", "deliveries of one task attempt (3 days)"),
    Family("api:rate:*", "expiring",
           "requests of a token in one rate-limit window; its page logins of the last minute"),
    Family("api:session:*", "expiring",
           "a page login (API_SESSION_HOURS); a token's newest logins, at most API_SESSIONS_PER_TOKEN"),
    Family("ticker", "expiring", "the ticker's state"),
    Family(events.STREAM.removeprefix(f"{PREFIX}:"), "capped",
           f"stored-minute events, about {events.KEPT:,} (three weeks of six indices)"),
    Family("alerts:history", "capped", "the last 500 alerts raised and resolved"),
    Family("alerts:outbox", "capped", "the last 200 notifications waiting for a channel to come back"),
    Family("health:actions", "capped", "the last 200 self-healing actions"),
    Family("health:depths:*", "capped", "the last 10 depths of a queue"),
    Family("health:cpu:*", "capped", "the last 100 CPU-time samples of a host (health's CPU average)"),
    Family("parked", "capped", "the last 100 tasks parked after too many deliveries"),
    Family("last_stored:*", "configured", "the newest stored minute of an index"),
    Family("metrics", "configured", "counters by family and label"),
    Family("metrics:*", "configured", "counters and latency buckets per index or kind"),
    Family("heartbeats", "configured", "a field per component"),
    Family("consumers:*", "configured", "which workers consume a queue (members past their deadline removed)"),
    Family("pace:*", "configured", "a shared rate limiter's next slot"),
    Family("api:tokens", "configured", "a field per API token (its SHA-256)"),
    Family("api:token_used", "configured", "when each API token was last used"),
    Family("kite:access_token:*", "configured", "the Kite access token of an API key"),
    Family("kite:token_meta:*", "configured", "when that token dies"),
    Family("health:last", "configured", "the last health report"),
    Family("health:healing", "configured", "what self-healing is doing now"),
    Family("alerts:state", "configured", "a field per alert rule"),
    Family("alerts:delivery", "configured", "a field per alert channel"),
)


def family_of(key: str) -> Family | None:
    return next((f for f in FAMILIES if f.matches(key)), None)


def day_of(key: str) -> dt.date | None:
    """The day a per-day key belongs to (the first date in it; a minute's ISO time counts), or None."""
    found = _DAY.search(key)
    if not found:
        return None
    try:
        return dt.date.fromisoformat(found.group(1))
    except ValueError:
        return None


def prune(client: redis.Redis, today: dt.date, keep_days: int) -> dict[str, int]:
    """Keep the last `keep_days` days (today included) of every per-day key and day-field; drop older ones.

    One SCAN over optask's keys, deleted in batches: a few thousand keys for a month of six indices.
    Returns {"keys": n, "fields": n} dropped."""
    cutoff = today - dt.timedelta(days=keep_days - 1)
    dropped = {"keys": 0, "fields": 0}
    batch: list[bytes] = []
    for raw in client.scan_iter(f"{PREFIX}:*", count=1000):
        key = raw.decode()
        family = family_of(key)
        if family is None or not family.by_day or key in DAY_FIELDS:
            continue
        day = day_of(key)
        if day is not None and day < cutoff:
            batch.append(raw)
        if len(batch) >= 500:
            dropped["keys"] += client.delete(*batch)
            batch.clear()
    if batch:
        dropped["keys"] += client.delete(*batch)
    for key in DAY_FIELDS:
        old = [f for f in client.hkeys(key) if (d := day_of(f.decode())) is not None and d < cutoff]
        if old:
            dropped["fields"] += client.hdel(key, *old)
    return dropped


def unbounded_keys(client: redis.Redis) -> list[str]:
    """optask's keys that nothing bounds: of no known family, or of an expiring family without a TTL."""
    out = []
    for raw in client.scan_iter(f"{PREFIX}:*", count=1000):
        key = raw.decode()
        family = family_of(key)
        if family is None or (family.bound == "expiring" and client.ttl(raw) == -1):
            out.append(key)
    return sorted(out)
