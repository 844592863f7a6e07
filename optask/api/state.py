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
import pandas as pd
import redis
import redis.asyncio

from optask.api.catalog import Catalog
from optask.api.chain import StoredChains
from optask.api.live import Hub
from optask.api.params import ApiError, year_range
from optask.api.replay import checked_event_id, lost_since
from optask.core.calendar import MarketCalendar
from optask.core.timeutils import IST, parse_ts
from optask.infra.events import NONE, AsyncEventStream, Event, EventStream
from optask.infra.ledger import stored_key

log = logging.getLogger("optask.api")
HEALTH_S = 1.0


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
    last_event_id: str = NONE
    answers: OrderedDict = field(default_factory=OrderedDict)  # (index, gen, url) -> (etag, body)
    hub: Hub | None = None  # the push subscribers (live.Hub)
    heavy: object = None  # routes.Turns: heavy answers take turns
    following: str | None = "not yet"  # why the event stream is not being followed now, or None while it is
    redis_state: str = "not yet asked"  # "ok", or why Redis does not answer (asked every HEALTH_S)
    chains: StoredChains = field(init=False)  # /v1/chain's and the push's chains, of the catalog

    def __post_init__(self) -> None:
        self.chains = StoredChains(self.catalog, self.calendar, self.settings)

    def load_latest(self) -> None:
        for index in self.indices:
            self.latest[index] = self.catalog.latest_minute(index)
            self.generation.setdefault(index, 0)

    def latest_day(self, index: str) -> dt.date | None:
        """The IST day of the newest minute the index has stored: the day live subscribers are shown."""
        latest = self.latest.get(index)
        return latest.astimezone(IST).date() if latest is not None else None

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
        outlasts the blocking read); a lost Redis is retried, and /healthz says so meanwhile."""
        while True:
            try:
                if self.following is not None:
                    await client.ping()  # back: say so now, not after the next blocking read
                    self.following = None
                for event_id, fields in await AsyncEventStream(client).read(self.last_event_id, block_ms=5000):
                    self.on_event(event_id, fields)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: keep serving what is on disk, retry
                if self.following is None:
                    log.warning("cannot follow the stored-minute events (%s); retrying every 2 s", exc)
                self.following = f"cannot read the stored-minute events: {exc}"
                await asyncio.sleep(2)

    async def watch_redis(self, client: redis.asyncio.Redis) -> None:
        """Every HEALTH_S, whether Redis answers (on the events' client, not the requests' pool): /healthz reads
        the answer and waits on nothing."""
        while True:
            try:
                await asyncio.wait_for(client.ping(), HEALTH_S * 2)
                self.redis_state = "ok"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to answer is "down", with what it was
                self.redis_state = f"down: {exc or type(exc).__name__}"
            await asyncio.sleep(HEALTH_S)

    def warm_calendar(self) -> None:
        """Every year a request may name (params.year_range), and the one before, built now in a thread of its own
        (about a second, newest first): a request's calendar question is then a lookup on the event loop."""
        first, last = year_range()
        for year in range(last, first - 2, -1):
            self.calendar.is_trading_day(dt.date(year, 6, 1))

    async def start_cursor(self) -> None:
        self.last_event_id = await AsyncEventStream(self.redis).last_id()

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
            raw = await self.redis.hget(stored_key(index, ts.astimezone(IST).date()), ts.isoformat())
        except redis.RedisError:
            return None  # Redis away: the provenance says "not known" rather than failing the chain
        return orjson.loads(raw) if raw else None

    async def minutes_since(self, since: str, index: str) -> np.ndarray:
        """since=: the minutes of `index` stored (or stored again) after event `since`, up to now (int64 ns); the
        stream is read and parsed in a worker thread."""
        checked_event_id(since, "since")
        if (why := await lost_since(self.redis, since)) is not None:
            raise ApiError(410, "since", why)
        return await asyncio.to_thread(self._minutes_since, since, index)

    def _minutes_since(self, since: str, index: str) -> np.ndarray:
        mine = EventStream(self.sync_redis).minutes_after(since, index)
        if not mine:
            return np.array([], dtype=np.int64)
        return np.unique(pd.to_datetime(pd.Series(mine), utc=True, format="ISO8601").dt.as_unit("ns").astype("int64"))
