"""Push: every stored minute to every subscriber of this API process.

The process follows the ledger's stored-minute event stream once (ServerState.follow) and the hub fans each
event out to the subscribers of its index: a bounded queue each, filled without waiting, so a subscriber that
does not keep up is dropped (with the reason) and never slows the others. What an event carries — the chain
or the summary in the shape of /v1/chain — is built once per (event, what was asked), in a worker thread, and
shared. A subscriber that comes back with the last id it saw is replayed what it missed from the stream in Redis
(replay.window: at most API_REPLAY_MAX events, each charged to its token's rate limit), then goes live: nothing
missed, nothing twice. A repair of a past day (a backfill) is not pushed: `since=` reads find it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from optask.api import replay
from optask.api.params import ApiError
from optask.core.timeutils import IST
from optask.infra.events import AsyncEventStream, Event, event_key

log = logging.getLogger("optask.api")
PUSHED = ("minute", "repaired")  # an `again` event (a redelivered minute stored again) changes nothing
WHAT = ("summary", "chain")
KEPT_PAYLOADS = 256
REPLAY_REST = 3.0  # a replayed payload's build is followed by a rest this many times as long (see Hub._build)
#: atm_window of the push, rounded up to one of these: subscribers asking nearly the same share one payload.
ATM_WINDOWS = (0, 1, 2, 3, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500)
#: WebSocket close codes for why the hub let a subscriber go (SSE gets the reason in `event: close`).
BEHIND, REVOKED, LIMITED, SHUTDOWN = 1013, 4401, 4429, 1001


def rounded_window(atm_window: int | None) -> int | None:
    return None if atm_window is None else next(w for w in ATM_WINDOWS if w >= atm_window)


@dataclass(frozen=True)
class Ask:
    """What a subscriber asked for: the chain or only its head (summary), of which expiry, how many strikes."""

    what: str = "summary"
    expiry: tuple | None = None
    atm_window: int | None = None


#: Charge n replayed events to the subscriber's token: None, or (close code, reason) to end its stream.
Charge = Callable[[int], Awaitable[tuple[int, str] | None]]


@dataclass(eq=False)
class Subscriber:
    indices: set[str]
    ask: Ask
    label: str  # who, for the log: the token's name and the transport
    sha: str | None = None  # the token's digest, for the stream caps and the recheck
    session: str | None = None  # the session cookie it came with (its digest), if it came with one
    charge: Charge | None = None
    queue: asyncio.Queue | None = None  # made by Hub.add, of the hub's size
    replaying: bool = True
    overflowed: bool = False
    closed: str | None = None  # why the hub let it go
    code: int = BEHIND  # ... as a WebSocket close code
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    """The subscribers of one API process, the streams it has open and the payloads built for them."""

    def __init__(self, redis, build, queue_size: int = 64, replay_max: int = 2000,
                 live_day: Callable[[str], dt.date | None] = lambda index: None) -> None:
        self.redis, self.build = redis, build  # build(index, ts, ask, ledger info) -> the /v1/chain document
        self.queue_size = queue_size  # events a subscriber may fall behind before it is dropped (API_PUSH_QUEUE)
        self.replay_max, self.live_day = replay_max, live_day
        self.subscribers: set[Subscriber] = set()
        self.payloads: OrderedDict[tuple, asyncio.Task] = OrderedDict()
        self.replay_builds = asyncio.Semaphore(1)  # a replay's payloads one at a time: live ones never queue behind
        self.streams: Counter[str | None] = Counter()  # open streams per token digest
        self.dropped = 0  # since the process started (in /healthz)

    def open_stream(self, sha: str | None, per_token: int, most: int) -> tuple[int, str] | None:
        """Count a stream about to open, or say why it may not: (HTTP status, message)."""
        if self.streams[sha] >= per_token:
            return 429, (f"this token has {per_token} streams open here (API_STREAMS_PER_TOKEN): close one first; "
                         "one stream can follow every index")
        if sum(self.streams.values()) >= most:
            return 503, f"this API process has {most} streams open (API_STREAMS_MAX); try again later"
        self.streams[sha] += 1
        return None

    def close_stream(self, sha: str | None) -> None:
        self.streams[sha] -= 1
        if self.streams[sha] <= 0:
            del self.streams[sha]

    def shows(self, event: Event) -> bool:
        """Whether live subscribers are sent the event: not a repair of a day before the index's current one."""
        if event.kind not in PUSHED:
            return False
        today = self.live_day(event.index)
        return event.kind == "minute" or today is None or event.ts.astimezone(IST).date() >= today

    def publish(self, event: Event) -> None:
        """Hand an event to each subscriber of its index, never waiting: a full queue drops its subscriber."""
        if not self.shows(event):
            return
        for sub in list(self.subscribers):
            if event.index not in sub.indices or sub.closed:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                if sub.replaying:  # still catching up from Redis: the replay reads this event again
                    sub.overflowed = True
                else:
                    self.drop(sub, f"{self.queue_size} events behind: it does not read as fast as minutes are stored")

    def drop(self, sub: Subscriber, reason: str, code: int = BEHIND, quiet: bool = False) -> None:
        """Let a subscriber go: its stream says why (SSE `event: close`, WebSocket close `code`) and ends."""
        if sub.closed:
            return
        sub.closed, sub.code = reason, code
        self.subscribers.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)
        sub.gone.set()
        if code == BEHIND:
            self.dropped += 1
        if not quiet:
            log.warning("dropped a subscriber (%s): %s", sub.label, reason)

    def close_all(self, reason: str, code: int = SHUTDOWN) -> None:
        """Every subscriber told `reason` (a shutdown), one log line for them all."""
        subs = list(self.subscribers)
        for sub in subs:
            self.drop(sub, reason, code, quiet=True)
        if subs:
            log.info("closed %d streams: %s", len(subs), reason)

    def add(self, sub: Subscriber) -> None:
        sub.queue = asyncio.Queue(self.queue_size)
        self.subscribers.add(sub)

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def payload(self, event: Event, ask: Ask, replayed: bool = False) -> bytes:
        """The event as JSON, built once (in a task of its own, so that a subscriber leaving meanwhile cancels
        nothing) for every subscriber that asked the same."""
        key = (event.id, event.index, ask)
        task = self.payloads.get(key)
        if task is None:
            task = self.payloads[key] = asyncio.create_task(self._build(event, ask, replayed))
            while len(self.payloads) > KEPT_PAYLOADS:
                self.payloads.popitem(last=False)
        if task.done():  # every subscriber after the first: no wrapper, no wake-up
            return task.result()
        return await asyncio.shield(task)

    async def _build(self, event: Event, ask: Ask, replayed: bool) -> bytes:
        """A live event's payload at once; a replayed one's in turn, one at a time, each followed by a rest
        REPLAY_REST times as long as it took: however many replay at once, replays take a quarter of one core."""
        if not replayed:
            return await self._built(event, ask)
        async with self.replay_builds:
            started = time.perf_counter()
            payload = await self._built(event, ask)
            await asyncio.sleep((time.perf_counter() - started) * REPLAY_REST)
            return payload

    async def _built(self, event: Event, ask: Ask) -> bytes:
        from_chain = {"expiry": ask.expiry, "atm_window": 0 if ask.what == "summary" else ask.atm_window,
                      "strikes": None, "greeks": True, "columns": None, "tz": dt.UTC}
        info = {"stored_at": event.stored_at, "live": event.kind == "minute"}
        try:
            doc = await self.build(event.index, event.ts, from_chain, info)
        except Exception as exc:  # noqa: BLE001 - an event that cannot be built says so, to each subscriber
            return orjson.dumps(_head(event) | {"error": _message(exc)})
        if ask.what == "summary":
            doc = {k: v for k, v in doc.items() if k not in ("strikes", "columns", "oi_change_base")}
        return orjson.dumps(_head(event) | {ask.what: doc}, option=orjson.OPT_SERIALIZE_NUMPY)

    async def _replayed(self, sub: Subscriber, entries) -> AsyncIterator[tuple[Event, bytes] | str]:
        """The subscriber's events among `entries` with their payloads, each charged to its token's rate limit
        before it is built (a local count, synced with Redis every 0.1 s); the id of each event that is not the
        subscriber's, as a str (so that the caller knows how far it read)."""
        async for eid, fields in entries:
            event = Event.of(eid, fields)
            if event is None or event.index not in sub.indices or not self.shows(event):
                yield eid
                continue
            if sub.charge is not None and (stop := await sub.charge(1)) is not None:
                self.drop(sub, stop[1], stop[0])
                return
            yield event, await self.payload(event, sub.ask, replayed=True)

    async def batches(self, sub: Subscriber, after: str | None) -> AsyncIterator[list[tuple[Event | None, bytes]]]:
        """The subscriber's events with their payloads, in batches (what queued up while it was sending: one write
        for several): first those stored after `after` (from Redis, at most replay_max), then live ones; each
        once, in order. A first (None, notice) when some are left out. Ends when the hub lets the subscriber go
        (which the caller has added to it)."""
        last = after
        if after is not None:
            source, notice = await replay.window(self.redis, after, self.replay_max)
            if notice is not None:
                yield [(None, notice)]
            while last is not None and not sub.closed:  # replay until one pass ends without the live queue overflowing
                sub.replaying, sub.overflowed = True, False
                async for got in self._replayed(sub, source):
                    last = got if isinstance(got, str) else got[0].id
                    if not isinstance(got, str):
                        yield [got]
                if not sub.overflowed:
                    break
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                source = AsyncEventStream(self.redis).entries_after(last)
        sub.replaying = False
        async for batch in self._live(sub, last):
            yield batch

    async def _live(self, sub: Subscriber, last: str | None) -> AsyncIterator[list[tuple[Event, bytes]]]:
        while True:
            queued = [await sub.queue.get()]
            while not sub.queue.empty():
                queued.append(sub.queue.get_nowait())
            batch = []
            for event in queued:
                if event is None:
                    break
                if (last is not None and event_key(event.id) <= event_key(last)) \
                        or event.index not in sub.indices:
                    continue
                last = event.id
                batch.append((event, await self.payload(event, sub.ask)))
            if batch:
                yield batch
            if event is None:
                return


def _head(event: Event) -> dict:
    return {"id": event.id, "type": event.kind, "index": event.index, "ts": event.ts.isoformat(),
            "stored_at": event.stored_at}


def _message(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return exc.message
    log.exception("cannot build a pushed event")
    return f"cannot build this event ({type(exc).__name__}); the server's log has the details"
