"""Push: every stored minute to every subscriber of this API process.

The process follows the ledger's stored-minute event stream once (ServerState.follow) and the hub fans each
event out to the subscribers of its index: a bounded queue each, filled without waiting, so a subscriber that
does not keep up is dropped (with the reason) and never slows the others. What an event carries — the chain
or the summary in the shape of /v1/chain — is built once per (event, what was asked) and shared. A subscriber
that comes back with the last id it saw is replayed what it missed from the stream in Redis, then goes live:
nothing missed, nothing twice, within the stream's retention (EVENTS_KEPT events, about three weeks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from optask.api.params import ApiError
from optask.core.timeutils import parse_ts
from optask.infra.ledger import EVENTS, EVENTS_KEPT

log = logging.getLogger("optask.api")
PUSHED = ("minute", "repaired")  # an `again` event (a redelivered minute stored again) changes nothing
WHAT = ("summary", "chain")
REPLAY_CHUNK = 500
KEPT_PAYLOADS = 256
_EVENT_ID = re.compile(r"^\d+-\d+$")


def event_key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def checked_event_id(value: str | None, parameter: str) -> str | None:
    if value is None or value == "":
        return None
    if not _EVENT_ID.match(value):
        raise ApiError(400, parameter, f"{parameter}={value!r} is not an event id (like 1764489300000-0): pass the "
                       "id of the last event received, or an earlier answer's X-Stored-Cursor header")
    return value


@dataclass(frozen=True)
class Event:
    id: str
    index: str
    ts: dt.datetime
    kind: str
    stored_at: float

    @classmethod
    def of(cls, event_id: str, fields: dict) -> Event | None:
        """The event as pushed, or None for one no subscriber is sent (an `again`, or a malformed entry)."""
        kind = fields.get("kind", "minute")  # events written before kinds existed were live minutes
        try:
            return cls(event_id, fields["index"], parse_ts(fields["ts"]), kind, float(fields["stored_at"]))
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Ask:
    """What a subscriber asked for: the chain or only its head (summary), of which expiry, how many strikes."""

    what: str = "summary"
    expiry: tuple | None = None
    atm_window: int | None = None


@dataclass(eq=False)
class Subscriber:
    indices: set[str]
    ask: Ask
    label: str  # who, for the log: the token's name and the transport
    queue: asyncio.Queue | None = None  # made by Hub.add, of the hub's size
    replaying: bool = True
    overflowed: bool = False
    closed: str | None = None  # why the hub dropped it
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    """The subscribers of one API process and the payloads built for them."""

    def __init__(self, redis, build, queue_size: int = 64) -> None:
        self.redis, self.build = redis, build  # build(index, ts, ask, ledger info) -> the /v1/chain document
        self.queue_size = queue_size  # events a subscriber may fall behind before it is dropped (API_PUSH_QUEUE)
        self.subscribers: set[Subscriber] = set()
        self.payloads: OrderedDict[tuple, asyncio.Task] = OrderedDict()
        self.dropped = 0  # since the process started (in /healthz)

    def publish(self, event: Event) -> None:
        """Hand an event to each subscriber of its index, never waiting: a full queue drops its subscriber."""
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

    def drop(self, sub: Subscriber, reason: str) -> None:
        sub.closed = reason
        self.subscribers.discard(sub)
        self.dropped += 1
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)
        sub.gone.set()
        log.warning("dropped a subscriber (%s): %s", sub.label, reason)

    def add(self, sub: Subscriber) -> None:
        sub.queue = asyncio.Queue(self.queue_size)
        self.subscribers.add(sub)

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def payload(self, event: Event, ask: Ask) -> bytes:
        """The event as JSON, built once (in a task of its own, so that a subscriber leaving meanwhile cancels
        nothing) for every subscriber that asked the same."""
        key = (event.id, event.index, ask)
        task = self.payloads.get(key)
        if task is None:
            task = self.payloads[key] = asyncio.create_task(self._build(event, ask))
            while len(self.payloads) > KEPT_PAYLOADS:
                self.payloads.popitem(last=False)
        if task.done():  # every subscriber after the first: no wrapper, no wake-up
            return task.result()
        return await asyncio.shield(task)

    async def _build(self, event: Event, ask: Ask) -> bytes:
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

    async def _replay(self, after: str) -> AsyncIterator[Event]:
        start = f"({after}"
        while True:
            chunk = await self.redis.xrange(EVENTS, min=start, max="+", count=REPLAY_CHUNK)
            for eid, raw in chunk:
                event = Event.of(eid.decode(), {k.decode(): v.decode() for k, v in raw.items()})
                if event is not None:
                    yield event
            if len(chunk) < REPLAY_CHUNK:
                return
            start = f"({chunk[-1][0].decode()}"

    async def batches(self, sub: Subscriber, after: str | None) -> AsyncIterator[list[tuple[Event | None, bytes]]]:
        """The subscriber's events with their payloads, in batches (what queued up while it was sending: one write
        for several): first those stored after `after` (from Redis), then live ones; each once, in order. A first
        (None, notice) when the stream no longer holds all of them. Ends when the hub drops the subscriber (which
        the caller has added to it)."""
        last = after
        if after is not None and (why := await lost_since(self.redis, after)) is not None:
            yield [(None, orjson.dumps({"type": "lost", "message": why}))]
        while last is not None:  # replay until one pass ends without the live queue overflowing
            sub.replaying, sub.overflowed = True, False
            async for event in self._replay(last):
                last = event.id
                if event.kind in PUSHED and event.index in sub.indices:
                    yield [(event, await self.payload(event, sub.ask))]
            if not sub.overflowed:
                break
            while not sub.queue.empty():
                sub.queue.get_nowait()
        sub.replaying = False
        while True:
            queued = [await sub.queue.get()]
            while not sub.queue.empty():
                queued.append(sub.queue.get_nowait())
            batch = []
            for event in queued:
                if event is None:
                    break
                if (last is not None and event_key(event.id) <= event_key(last)) or event.kind not in PUSHED \
                        or event.index not in sub.indices:
                    continue
                last = event.id
                batch.append((event, await self.payload(event, sub.ask)))
            if batch:
                yield batch
            if event is None:
                return


async def lost_since(redis, after: str) -> str | None:
    """Why events after `after` cannot all be given (the stream was trimmed past it), or None."""
    first = await redis.xrange(EVENTS, count=1)
    if first and event_key(after) < event_key(first[0][0].decode()) and await redis.xlen(EVENTS) >= EVENTS_KEPT * 0.9:
        return (f"events after {after} are no longer all kept (the oldest kept is {first[0][0].decode()}): read "
                "the range again without since= (/v1/summary, /v1/legs)")
    return None


def _head(event: Event) -> dict:
    return {"id": event.id, "type": event.kind, "index": event.index, "ts": event.ts.isoformat(),
            "stored_at": event.stored_at}


def _message(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return exc.message
    log.exception("cannot build a pushed event")
    return f"cannot build this event ({type(exc).__name__}); the server's log has the details"
