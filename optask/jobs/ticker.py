"""`optask ticker`: the long-running KiteTicker process behind KITE_FETCH=ticker.

It holds websocket connections to Kite (at most 3,000 instruments each, up to 3), subscribed in
full mode to the day's universe, and keeps the latest packet of every instrument. When the clock
enters a minute it cuts that minute from the latest state (every leg as of the same instant),
archives one envelope per index (`kite_ticker.envelope`) and is done: beat's `collect_minute`
finds the archive and processing reads it as for any provider. When the ticker is down or
stale, `collector.fetch_minute` takes those minutes over REST, marked `rest_fallback`.

Why our own client over `kiteconnect.KiteTicker`: the official one runs Twisted's reactor, which
starts once per process and reconnects on its own schedule, out of our sight. We need to see a
socket go quiet, fall back within seconds and resubscribe a changing universe, so the transport
is the `websockets` library; the decoding is tested byte for byte against the official parser.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field

from optask.config import Settings, get_settings
from optask.coordination import PREFIX
from optask.providers import kite_ticker as kt
from optask.timeutils import IST, floor_minute

log = logging.getLogger("optask.ticker")

#: Kite's limits: instruments per connection and connections per API key.
PER_CONNECTION = 3000
CONNECTIONS = 3
STATE_KEY = f"{PREFIX}:ticker"
STATE_TTL_S = 10


@dataclass
class LatestState:
    """The latest packet of every instrument and when it arrived; shared by the connections."""

    packets: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, message: bytes, at: float) -> int:
        packets = kt.split_packets(message)
        with self.lock:
            for p in packets:  # one dict store per packet; decoding waits for the minute's cut, vectorized
                self.packets[kt.token_of(p)] = (p, at)
        return len(packets)

    def take(self, tokens: list[int]) -> tuple[list[bytes], list[float]]:
        with self.lock:
            got = [self.packets[t] for t in tokens if t in self.packets]
        return [p for p, _ in got], [at for _, at in got]


class Connection(threading.Thread):
    """One websocket: connect, subscribe its tokens in full mode, read; on a drop, an error or silence
    longer than `stale_s`, reconnect with exponential backoff and jitter and subscribe again."""

    def __init__(self, name: str, url, state: LatestState, stale_s: float, stop: threading.Event,
                 max_backoff_s: float = 30.0, in_session=lambda: True):
        super().__init__(name=name, daemon=True)
        self.url, self.state, self.stale_s, self.stop_event, self.max_backoff_s = url, state, stale_s, stop, max_backoff_s
        self.in_session = in_session  # in session a socket must bring ticks; outside, Kite's heartbeats suffice
        self.tokens: set[int] = set()
        self._wanted: set[int] = set()
        self._lock = threading.Lock()
        self.connected = False
        self.last_message = 0.0  # any frame, Kite's 1-byte heartbeats included
        self.last_data = 0.0  # packets
        self.reconnects = 0
        self.stale_events = 0
        self.last_error = ""

    def want(self, tokens: set[int]) -> None:
        with self._lock:
            self._wanted = set(tokens)

    def _quiet_for(self) -> float:
        now = time.time()
        return now - (self.last_data if self.in_session() else self.last_message)

    @property
    def healthy(self) -> bool:
        return self.connected and self._quiet_for() < self.stale_s

    def _sync(self, ws) -> None:
        """Send the subscription changes since the last call (all of it after a reconnect)."""
        with self._lock:
            wanted = set(self._wanted)
        gone, new = sorted(self.tokens - wanted), sorted(wanted - self.tokens)
        if gone:
            ws.send(json.dumps({"a": "unsubscribe", "v": gone}))
        if new:
            ws.send(json.dumps({"a": "subscribe", "v": new}))
            ws.send(json.dumps({"a": "mode", "v": ["full", new]}))
        self.tokens = wanted

    def run(self) -> None:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        attempt = 0
        while not self.stop_event.is_set():
            try:
                with connect(self.url(), open_timeout=5, close_timeout=1, max_size=None, compression=None) as ws:
                    self.connected, attempt = True, 0
                    self.last_message = self.last_data = time.time()
                    self.tokens = set()
                    log.info("%s connected", self.name)
                    while not self.stop_event.is_set():
                        self._sync(ws)
                        try:
                            msg = ws.recv(timeout=0.2)
                        except TimeoutError:
                            msg = None
                        if msg is not None:
                            self.last_message = time.time()
                            if isinstance(msg, bytes):
                                if self.state.update(msg, self.last_message):
                                    self.last_data = self.last_message
                            else:
                                self._text(msg)
                        if self._quiet_for() > self.stale_s:
                            self.stale_events += 1
                            raise ConnectionError(f"no ticks for {self.stale_s:g} s") from None
            except InvalidStatus as exc:
                code = exc.response.status_code
                self.last_error = (f"Kite refused the websocket with HTTP {code}"
                                   + (": the access token expired; run `optask kite set-token <token>`" if code == 403 else ""))
            except (OSError, WebSocketException, ConnectionError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self.connected = False
            if self.stop_event.is_set():
                break
            attempt += 1
            self.reconnects += 1
            delay = min(self.max_backoff_s, 0.5 * 2 ** (attempt - 1))
            log.warning("%s down (%s); reconnecting in %.1f s", self.name, self.last_error, delay)
            self.stop_event.wait(delay / 2 + random.random() * delay / 2)

    def _text(self, msg: str) -> None:
        try:
            doc = json.loads(msg)
        except ValueError:
            return
        if doc.get("type") == "error":
            self.last_error = f"Kite said: {doc.get('data')}"
            log.warning("%s: %s", self.name, self.last_error)


class Ticker:
    """Cuts each minute of the clock from the latest state of the subscribed universe."""

    def __init__(self, settings: Settings | None = None, provider=None, redis_client=None, clock=None):
        from optask.clock import get_clock
        from optask.collector import ledger_for
        from optask.providers.kite import KiteProvider

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
        self.provider._fresh_token()  # a token set with `optask kite set-token` is used at the next connect
        k = self.settings.kite
        return f"{k.ticker_url}?api_key={k.api_key}&access_token={self.provider.access_token}"

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
            known = self.provider._known_range(index, day)
            if spot is None and known is None:
                continue  # its options follow once its spot has streamed in
            rng = self.provider._spot_range(index, day, spot) if spot is not None else known
            self.metas[index] = self.provider._legs(index, day, rng)
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
        from optask.providers.kite import SPOT_KEYS
        from optask.storage.archive import write_raw_once

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
                from optask.stack import celery_client

                self._celery = celery_client(self.settings, self.settings.redis.effective_url() or _url_of(self.redis))
            self._celery.send_task("tasks.collect_minute", args=(minute.isoformat(),), queue="optask", expires=55)
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
        from optask.calendar import get_calendar

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


def _url_of(client) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def ticker_state(client) -> dict[str, str]:
    """The running ticker's last heartbeat ({} when none is running)."""
    try:
        return {k.decode(): v.decode() for k, v in client.hgetall(STATE_KEY).items()}
    except Exception:  # noqa: BLE001 - no Redis: no ticker known
        return {}


def ticker_healthy(client) -> bool:
    state = ticker_state(client)
    return state.get("healthy") == "1" and time.time() - float(state.get("at", 0)) < STATE_TTL_S
