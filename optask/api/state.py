"""What one API process knows between requests: the newest stored minute of each index and the newest
stored-minute event, learnt by following the ledger's event stream (one blocking read per process, never
one per request), and the answers it can give again while nothing changed."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import orjson
import redis
import redis.asyncio

from optask.api.catalog import Catalog
from optask.api.live import Event, Hub, checked_event_id, lost_since
from optask.api.params import ApiError
from optask.core.calendar import MarketCalendar
from optask.core.timeutils import IST, parse_ts
from optask.infra.coordination import PREFIX
from optask.infra.ledger import EVENTS

log = logging.getLogger("optask.api")


@dataclass
class ServerState:
    catalog: Catalog
    calendar: MarketCalendar
    redis: redis.asyncio.Redis
    indices: tuple[str, ...]
    sync_redis: redis.Redis | None = None  # for the ledger's sync readers (coverage), in worker threads
    settings: object = None
    tokens: object = None  # tokens.TokenLedger
    sessions: object = None  # tokens.Sessions: the page's logins
    latest: dict[str, dt.datetime | None] = field(default_factory=dict)
    generation: dict[str, int] = field(default_factory=dict)  # bumped by every stored-minute event of an index
    last_event_id: str = "0-0"
    answers: OrderedDict = field(default_factory=OrderedDict)  # (index, gen, url) -> (etag, body)
    hub: Hub | None = None  # the push subscribers (live.Hub)

    def load_latest(self) -> None:
        for index in self.indices:
            self.latest[index] = self.catalog.latest_minute(index)
            self.generation.setdefault(index, 0)

    def on_event(self, event_id: str, fields: dict) -> None:
        index, ts = fields.get("index"), fields.get("ts")
        self.last_event_id = event_id
        if index not in self.generation or not ts:
            return
        self.generation[index] += 1
        self.catalog.changed(index)
        t = parse_ts(ts)
        if self.latest.get(index) is None or t > self.latest[index]:
            self.latest[index] = t
        if self.hub is not None and (event := Event.of(event_id, fields)) is not None:
            self.hub.publish(event)

    async def follow(self, client: redis.asyncio.Redis) -> None:
        """Follow the stored-minute events for as long as the server runs (on its own client, whose timeout
        outlasts the blocking read); a lost Redis is retried."""
        while True:
            try:
                out = await client.xread({EVENTS: self.last_event_id}, block=5000, count=1000) or []
                for _, entries in out:
                    for eid, raw in entries:
                        self.on_event(eid.decode(), {k.decode(): v.decode() for k, v in raw.items()})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: keep serving what is on disk, retry
                log.warning("cannot follow the stored-minute events (%s); retrying in 2 s", exc)
                await asyncio.sleep(2)

    async def start_cursor(self) -> None:
        last = await self.redis.xrevrange(EVENTS, count=1)
        self.last_event_id = last[0][0].decode() if last else "0-0"

    def chain_key(self, index: str, query: str) -> tuple:
        """The chain of an index for one query string, valid until the index stores another minute."""
        return ("chain", index, self.generation.get(index), query)

    def kept_answer(self, path: str, query: str) -> tuple[str, bytes] | None:
        if not path.startswith("/v1/chain/"):
            return None
        return self.answers.get(self.chain_key(path[10:].upper(), query))

    def cached(self, key) -> tuple[str, bytes] | None:
        hit = self.answers.get(key)
        if hit is not None:
            self.answers.move_to_end(key)
        return hit

    def remember(self, key, etag: str, body: bytes) -> None:
        self.answers[key] = (etag, body)
        while len(self.answers) > 512:
            self.answers.popitem(last=False)

    async def stored_info(self, index: str, ts: dt.datetime) -> dict | None:
        """What the ledger recorded when the minute was stored (when; live or by a repair), or None."""
        try:
            raw = await self.redis.hget(f"{PREFIX}:stored:{index}:{ts.astimezone(IST).date()}", ts.isoformat())
        except redis.RedisError:
            return None  # Redis away: the provenance says "not known" rather than failing the chain
        return orjson.loads(raw) if raw else None

    async def minutes_since(self, since: str, index: str) -> np.ndarray:
        """since=: the minutes of `index` stored (or stored again) after event `since`, up to now (int64 ns)."""
        checked_event_id(since, "since")
        if (why := await lost_since(self.redis, since)) is not None:
            raise ApiError(410, "since", why)
        out: set[int] = set()
        start = f"({since}"
        while True:
            chunk = await self.redis.xrange(EVENTS, min=start, max="+", count=10_000)
            for _eid, raw in chunk:
                if raw.get(b"index", b"").decode() == index:
                    out.add(int(parse_ts(raw[b"ts"].decode()).timestamp() * 1e9))
            if len(chunk) < 10_000:
                break
            start = f"({chunk[-1][0].decode()}"
        return np.array(sorted(out), dtype=np.int64)

