"""The stored-minute event stream has one owner, `optask.infra.events`: its key, its fields and its readers (sync and
async, paged) are there and nowhere else; the readers read what the ledger writes, against a real Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import pytest
import redis

from optask.infra import events
from optask.infra.events import NONE, AsyncEventStream, Event, EventStream, event_key
from optask.infra.ledger import Ledger
from optask.infra.redis_client import connect_async

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "optask" / "infra" / "events.py"
#: Redis's stream commands, as redis-py methods or in Lua: only the owner reads or writes a stream.
STREAM_COMMANDS = re.compile(r"\b(xadd|xread|xreadgroup|xrange|xrevrange|xlen|xtrim|xdel|xinfo_stream)\b", re.I)
KEY_NAME = re.compile(r"(optask|PREFIX\})?:events\b")
MINUTES = [(dt.datetime(2026, 11, 23, 3, 45, tzinfo=dt.UTC) + dt.timedelta(minutes=i)).isoformat() for i in range(30)]


def code_files() -> list[Path]:
    """Everything that could talk to Redis: optask (its test kit too), the Celery app, the beat schedule, the
    benchmarks."""
    return sorted([*(ROOT / "optask").rglob("*.py"), *(ROOT / "tasks").rglob("*.py"), ROOT / "beat_schedule.py",
                   *(ROOT / "bench").rglob("*.py")])


def lines_matching(pattern: re.Pattern) -> dict[str, str]:
    return {f"{p.relative_to(ROOT)}:{i}": line.strip() for p in code_files() if p != OWNER
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line) and not line.lstrip().startswith("#")}


def test_no_code_but_the_owner_names_the_stream_or_reads_it():
    assert not lines_matching(STREAM_COMMANDS), "read the stored-minute events through optask.infra.events"
    assert not lines_matching(KEY_NAME), "the stream's key is optask.infra.events.STREAM"


def test_only_its_writer_and_the_key_registry_take_the_key_itself():
    """The ledger appends (its script needs the key) and retention lists every key family; the rest read through
    EventStream and AsyncEventStream."""
    uses = {k.split(":")[0] for k in lines_matching(re.compile(r"\bevents\.(STREAM|KEPT)\b|import .*\bSTREAM\b"))}
    assert uses == {"optask/infra/ledger.py", "optask/infra/retention.py"}, uses


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def stored(client, minutes: list[str], index: str = "NIFTY") -> list[str]:
    """Record `minutes` stored (a batch, as a repair does); the ids of their events."""
    before = EventStream(client).last_id()
    Ledger(client).mark_stored_many(index, {ts: 7 for ts in minutes})
    return [eid for eid, _ in EventStream(client).entries_after(before)]


def test_the_ledger_writes_the_fields_the_readers_know(client):
    ledger = Ledger(client)
    ledger.mark_stored("NIFTY", MINUTES[0], legs=5, stages_ms={})
    ledger.mark_stored("NIFTY", MINUTES[0], legs=5, stages_ms={})  # a redelivery
    ledger.mark_stored_many("NIFTY", {MINUTES[1]: 5})
    got = EventStream(client).read(NONE, block_ms=10)
    assert [tuple(f) for _, f in got] == [events.FIELDS] * 3
    assert [f["kind"] for _, f in got] == ["minute", "again", "repaired"]
    assert {f["kind"] for _, f in got} <= set(events.KINDS)
    event = Event.of(*got[0])
    assert (event.index, event.ts.isoformat(), event.kind) == ("NIFTY", MINUTES[0], "minute")


def test_event_of_a_malformed_entry_is_none_and_old_entries_are_live_minutes():
    assert Event.of("1-0", {"index": "NIFTY", "ts": "yesterday", "stored_at": "1"}) is None
    assert Event.of("1-0", {"ts": MINUTES[0], "stored_at": "1"}) is None
    assert Event.of("1-0", {"index": "NIFTY", "ts": MINUTES[0], "stored_at": "1.5"}).kind == "minute"
    assert event_key("10-0") > event_key("9-5")


def test_the_sync_reader_pages_through_every_event_in_order(client):
    assert EventStream(client).last_id() == NONE
    ids = stored(client, MINUTES)
    stream = EventStream(client)
    assert stream.last_id() == ids[-1] and stream.length() == 30
    assert [eid for eid, _ in stream.entries_after(NONE, page=7)] == ids  # 7, 7, 7, 7, 2
    assert [eid for eid, _ in stream.entries_after(ids[9], page=10)] == ids[10:]  # full pages, then an empty one
    assert [eid for eid, _ in stream.entries_after(ids[9], inclusive=True, page=4)] == ids[9:]
    assert [f["ts"] for _, f in stream.read(ids[27], block_ms=10)] == MINUTES[28:]
    assert stream.read("$", block_ms=10) == []  # only new ones: none came
    stored(client, MINUTES[:3], index="SENSEX")
    assert stream.minutes_after(ids[19], "NIFTY", page=4) == MINUTES[20:]
    assert stream.minutes_after(NONE, "SENSEX", page=4) == MINUTES[:3]


def test_the_async_reader_gives_what_the_sync_reader_gives(client, redis_url):
    ids = stored(client, MINUTES)

    async def read() -> tuple:
        aclient = connect_async(redis_url)
        stream = AsyncEventStream(aclient)
        try:
            paged = [e async for e in stream.entries_after(ids[3], page=4)]
            return await stream.last_id(), paged, await stream.read(ids[25], block_ms=10)
        finally:
            await aclient.aclose()

    last, paged, tail = asyncio.run(read())
    assert last == ids[-1]
    assert paged == list(EventStream(client).entries_after(ids[3]))
    assert tail == EventStream(client).read(ids[25], block_ms=10) and len(tail) == 4


def test_the_window_of_the_newest_and_what_the_cap_trimmed(client, redis_url, monkeypatch):
    ids = stored(client, MINUTES)

    async def ask(*calls):
        aclient = connect_async(redis_url)
        try:
            return [await call(AsyncEventStream(aclient)) for call in calls]
        finally:
            await aclient.aclose()

    window, whole, trimmed = asyncio.run(ask(lambda s: s.newest_window(ids[4], 10),
                                             lambda s: s.newest_window(ids[4], 25), lambda s: s.trimmed_past(NONE)))
    assert window == (ids[20], MINUTES[5], MINUTES[19])  # the newest 10 from ids[20]; 5..19 left out
    assert whole is None and trimmed is None  # 25 follow: all; nothing trimmed yet
    monkeypatch.setattr(events, "KEPT", 5)  # the cap, small: the ledger trims as it appends (by Redis's nodes)
    stored(client, [(dt.datetime(2026, 11, 24, 3, 45, tzinfo=dt.UTC) + dt.timedelta(minutes=i)).isoformat()
                    for i in range(300)])
    oldest = EventStream(client).entries_after(NONE, inclusive=True, page=1)
    first_kept = next(oldest)[0]
    assert event_key(first_kept) > event_key(ids[-1])  # the first batch is gone
    assert asyncio.run(ask(lambda s: s.trimmed_past(ids[0]), lambda s: s.trimmed_past(first_kept))) == [first_kept,
                                                                                                         None]
