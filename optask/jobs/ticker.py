"""`optask ticker`: the long-running KiteTicker process behind KITE_FETCH=ticker.

It holds websocket connections to Kite (at most 3,000 instruments each, up to 3), subscribed in
full mode to the day's universe, and keeps the latest packet of every instrument. When the clock
enters a minute it cuts that minute from the latest state (every leg as of the same instant),
archives one envelope per index (`kite_ticker.envelope`) and is done: beat's `collect_minute`
finds the archive and processing reads it as for any provider. When the ticker is down or
stale, `optask.jobs.minute.fetch_minute` takes those minutes over REST, marked `rest_fallback`.

Why our own client over `kiteconnect.KiteTicker`: the official one runs Twisted's reactor, which
starts once per process and reconnects on its own schedule, out of our sight. We need to see a
socket go quiet, fall back within seconds and resubscribe a changing universe, so the transport
(`optask.providers.kite.stream.Connection`) is the `websockets` library; the decoding is tested byte
for byte against the official parser.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time

from optask.core.calendar import get_calendar
from optask.core.config import Settings, get_settings
from optask.core.timeutils import IST, floor_minute
from optask.infra.celery_client import celery_client
from optask.infra.coordination import PREFIX
from optask.infra.ledger import ledger_for
from optask.infra.queues import DEFAULT_QUEUE, TICK_EXPIRES_S
from optask.infra.redis_client import url_of
from optask.infra.session_clock import get_clock
from optask.providers.kite import SPOT_KEYS, KiteProvider
from optask.providers.kite import stream as kt
from optask.providers.kite.stream import Connection, LatestState
from optask.storage.archive import write_raw_once

log = logging.getLogger("optask.ticker")

#: Kite's limits: instruments per connection and connections per API key.
PER_CONNECTION = 3000
CONNECTIONS = 3
STATE_KEY = f"{PREFIX}:ticker"
STATE_TTL_S = 10


class Ticker:
    """Cuts each minute of the clock from the latest state of the subscribed universe."""

    def __init__(self, settings: Settings | None = None, provider=None, redis_client=None, clock=None):
        self.settings = settings or get_settings()
        self.provider = provider or KiteProvider.from_settings(self.settings)
        self.redis = redis_client if redis_client is not None else ledger_for(self.settings).redis
        self.clock = clock or get_clock(self.settings)
        self.indices = list(self.settings.market.indices)
        self.state = LatestState()
        self.stop_event = threading.Event()
        self.connections: list[Connection] = []
        self.metas: dict[str, dict[str, tuple]] = {}
        self.spot_tokens: dict[str, int] = {}
        self.day: dt.date | None = None
        self.cuts = 0
        self.skipped: dict[str, str] = {}
        self._celery = None
        self.session_open = True  # until `run` has read the calendar: expect ticks, the safe side

    def _in_session(self) -> bool:
        """Whether the current minute is in session, as `run` last saw it (the connections ask after every
        message: no calendar read or clock round trip on that path)."""
        return self.session_open

    def _url(self) -> str:
        k = self.settings.kite  # a token set with `optask kite set-token` is used at the next connect
        return f"{k.ticker_url}?api_key={k.api_key}&access_token={self.provider.current_token()}"

    @property
    def healthy(self) -> bool:
        return bool(self.connections) and all(c.healthy for c in self.connections)

    def universe(self, day: dt.date) -> set[int]:
        """Spots and every option of each index's universe (whose strikes follow the day's spot range, which
        the streamed spot widens): the instruments to subscribe. Rolls with the day (expired contracts go)."""
        if day != self.day:
            self.day, self.metas = day, {}
            self.spot_tokens = {i: self.provider.spot_token(i, day) for i in self.indices}
        tokens = set(self.spot_tokens.values())
        spots = self._spots()
        for index in self.indices:
            spot = spots.get(self.spot_tokens[index])
            known = self.provider.known_range(index, day)
            if spot is None and known is None:
                continue  # its options follow once its spot has streamed in
            rng = self.provider.spot_range(index, day, spot) if spot is not None else known
            self.metas[index] = self.provider.contracts(index, day, rng)
            tokens |= {m[0] for m in self.metas[index].values()}
        return tokens

    def _spots(self) -> dict[int, float]:
        """The latest streamed spot of each index, by token."""
        packets, _ = self.state.take(list(self.spot_tokens.values()))
        _, rows, _ = kt.decode(packets)
        return {int(r["token"]): float(r["ltp"]) / kt.PRICE_DIVISOR for r in rows}

    def subscribe(self, tokens: set[int]) -> None:
        """Spread the tokens over connections of at most PER_CONNECTION (spots first, so they always stream)."""
        ordered = sorted(tokens, key=lambda t: (t not in set(self.spot_tokens.values()), t))
        if len(ordered) > PER_CONNECTION * CONNECTIONS:
            log.error("the universe has %d instruments; Kite streams at most %d per API key (%d connections of %d): "
                      "the rest are left out; lower STRIKES_AROUND_ATM", len(ordered), PER_CONNECTION * CONNECTIONS,
                      CONNECTIONS, PER_CONNECTION)
            ordered = ordered[:PER_CONNECTION * CONNECTIONS]
        shards = [set(ordered[i:i + PER_CONNECTION]) for i in range(0, len(ordered), PER_CONNECTION)] or [set()]
        while len(self.connections) < len(shards):
            c = Connection(f"ticker-{len(self.connections) + 1}", self._url, self.state, self.settings.kite.ticker_stale_s,
                           self.stop_event, in_session=self._in_session)
            c.start()
            self.connections.append(c)
        for i, c in enumerate(self.connections):
            c.want(shards[i] if i < len(shards) else set())

    def cut(self, minute: dt.datetime) -> dict[str, int]:
        """Archive the minute of every index from the latest state; an archive already there (a REST
        fallback that came first) is kept. Returns legs per index written."""
        at = time.time()
        out: dict[str, int] = {}
        self.skipped = {}
        for index in self.indices:
            meta = self.metas.get(index)
            if not meta:
                self.skipped[index] = "no universe yet"
                continue
            tokens = [self.spot_tokens[index], *(m[0] for m in meta.values())]
            packets, received = self.state.take(tokens)
            if len(packets) <= 1:
                self.skipped[index] = "no packets yet"
                continue
            payload = kt.envelope(index, minute, meta, SPOT_KEYS[index], self.spot_tokens[index], packets, received, at)
            if write_raw_once(self.settings.data.raw_root, index, minute, "kite-ticker", payload):
                out[index] = len(packets) - 1
        self.cuts += 1
        return out

    def dispatch(self, minute: dt.datetime) -> None:
        """Send the minute's collect_minute at once rather than at beat's next tick: the minute is claimed once
        (`plan_minute`), so beat's own send for it is a no-op, and beat still dispatches when no cut comes."""
        try:
            if self._celery is None:
                self._celery = celery_client(self.settings, self.settings.redis.effective_url() or url_of(self.redis))
            self._celery.send_task("tasks.collect_minute", args=(minute.isoformat(),), queue=DEFAULT_QUEUE,
                                   expires=TICK_EXPIRES_S)
        except Exception as exc:  # noqa: BLE001 - beat's tick dispatches the minute anyway
            log.warning("could not send collect_minute for %s (%s: %s); beat will", minute.isoformat(),
                        type(exc).__name__, exc)

    def beat(self, minute: dt.datetime | None) -> None:
        """The ticker's state in Redis: `collect_minute` waits for a cut only while it is healthy."""
        state = {"pid": os.getpid(), "healthy": int(self.healthy), "at": time.time(),
                 "connections": len(self.connections), "connected": sum(c.connected for c in self.connections),
                 "subscribed": sum(len(c.tokens) for c in self.connections),
                 "last_message": max((c.last_message for c in self.connections), default=0.0),
                 "last_data": max((c.last_data for c in self.connections), default=0.0),
                 "reconnects": sum(c.reconnects for c in self.connections),
                 "stale_events": sum(c.stale_events for c in self.connections),
                 "last_error": next((c.last_error for c in self.connections if c.last_error), ""),
                 "last_cut": minute.isoformat() if minute else "", "cuts": self.cuts}
        try:
            with self.redis.pipeline() as pipe:
                pipe.hset(STATE_KEY, mapping={k: str(v) for k, v in state.items()})
                pipe.expire(STATE_KEY, STATE_TTL_S)
                pipe.execute()
        except Exception:  # noqa: BLE001 - Redis away: collect_minute then falls back to REST by itself
            pass

    def run(self, stop_after: float | None = None) -> None:
        """Until `stop()` (SIGTERM) or `stop_after` seconds: follow the clock, cut each new minute in session
        when the socket is healthy, then refresh the universe and subscriptions."""
        calendar = get_calendar(self.settings.data.calendar_overrides)
        cut_delay = self.settings.kite.ticker_cut_delay_ms / 1000
        ends = time.time() + stop_after if stop_after else None
        last: dt.datetime | None = None
        last_cut: dt.datetime | None = None
        now = floor_minute(self.clock.now())
        self.session_open = calendar.in_session(now)
        self._refresh(now)  # the dump unreachable now: tried again every second
        next_beat = 0.0
        while not self.stop_event.is_set() and (ends is None or time.time() < ends):
            minute = floor_minute(self.clock.now())
            if minute != last:
                if last is not None:
                    self.stop_event.wait(cut_delay)  # packets stamped at the boundary still in flight
                self.session_open = calendar.in_session(minute)
                if self.session_open and self.healthy:
                    wrote = self.cut(minute)
                    last_cut = minute
                    if wrote:
                        self.dispatch(minute)
                    log.info("cut %s: %s", minute.astimezone(IST).strftime("%H:%M"), wrote or self.skipped)
                last = minute
                self._refresh(minute)
            elif len(self.metas) < len(self.indices) and time.time() >= next_beat:
                self._refresh(minute)  # an index whose spot has just streamed in: subscribe its options now
            if time.time() >= next_beat:
                self.beat(last_cut)
                next_beat = time.time() + 1.0
            self.stop_event.wait(0.02)
        self.stop()

    def _refresh(self, minute: dt.datetime) -> None:
        try:
            self.subscribe(self.universe(minute.astimezone(IST).date()))
        except Exception as exc:  # noqa: BLE001 - the current subscriptions keep streaming
            log.warning("universe refresh failed (%s: %s); keeping the current subscriptions", type(exc).__name__, exc)

    def stop(self) -> None:
        self.stop_event.set()
        for c in self.connections:
            c.join(timeout=3)
        try:
            self.redis.delete(STATE_KEY)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass


def ticker_state(client) -> dict[str, str]:
    """The running ticker's last heartbeat ({} when none is running)."""
    try:
        return {k.decode(): v.decode() for k, v in client.hgetall(STATE_KEY).items()}
    except Exception:  # noqa: BLE001 - no Redis: no ticker known
        return {}


def ticker_healthy(client) -> bool:
    state = ticker_state(client)
    return state.get("healthy") == "1" and time.time() - float(state.get("at", 0)) < STATE_TTL_S
