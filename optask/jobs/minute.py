"""One minute, end to end: what `collect_minute` and `process_index` call.

    snapshot -> raw archive -> process_snapshot -> Parquet, CSV, InfluxDB -> ledger

The raw payload is archived before anything else, so a later failure can be replayed. Every step is
idempotent: a retried or duplicated minute replaces what it wrote. Minutes that cannot be stored
(retries exhausted, expired in the queue) are recorded in the ledger for backfill, so none goes
silently missing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field

import orjson
import pyarrow as pa
import redis

from optask.core.calendar import get_calendar
from optask.core.clock import clock_speed
from optask.core.config import Settings, get_settings
from optask.core.timeutils import IST, parse_minute
from optask.infra import counters
from optask.infra.ledger import Ledger, ledger_for
from optask.jobs.arguments import checked_index, checked_minute
from optask.jobs.context import provider_for
from optask.jobs.eod import CLOSE_CLAIM_S, unclosed_days
from optask.jobs.ticker import ticker_healthy
from optask.pipeline import process_snapshot
from optask.providers.base import PermanentProviderError, ProviderError
from optask.providers.replay import record_snapshot
from optask.storage.archive import raw_path, read_raw, set_aside, write_raw_once
from optask.storage.parquet import ParquetStore
from optask.storage.sinks import write_minute

log = logging.getLogger(__name__)


@dataclass
class MinutePlan:
    ts: str
    day: str
    indices: list[str]
    reason: str = ""  # why nothing is dispatched (outside session, already claimed)
    last_of_session: bool = False
    resumed: bool = False  # a redelivery or retry finishing the fan-out its first delivery claimed

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class MinuteResult:
    index: str
    ts: str
    legs: int = 0
    merged: int = 0
    summary: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: str = ""
    stages_ms: dict[str, float] = field(default_factory=dict)
    sample_span_ms: float | None = None
    spot_offset_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def plan_minute(ts: str, settings: Settings | None = None, ledger: Ledger | None = None,
                owner: str | None = None) -> MinutePlan:
    """Which indices to collect for this minute: none outside a session, none if another beat's tick claimed it
    or its fan-out is done. `owner` (the collect_minute task's id) makes a redelivery or a retry of the task
    that claimed the minute, killed or failed before its fan-out, finish it: the minute comes from the live
    fetch, not minutes later from repair's history candles."""
    settings = settings or get_settings()
    minute = checked_minute(ts)
    calendar = get_calendar(settings.data.calendar_overrides)
    day = minute.astimezone(IST).date()
    session = calendar.session(day)
    plan = MinutePlan(ts=minute.isoformat(), day=day.isoformat(), indices=[])
    if session is None or not (session.open <= minute < session.close):
        plan.reason = "outside session"
        return plan
    ledger = ledger or ledger_for(settings)
    claim = ledger.claim_progress("collect_minute", plan.ts, owner or f"untracked-{time.time_ns()}")
    if claim in ("taken", "dispatched"):
        plan.reason = "already claimed (duplicate tick)" if claim == "taken" else "already dispatched"
        return plan
    plan.resumed = claim == "resume"
    plan.indices = list(settings.market.indices)
    plan.last_of_session = minute + dt.timedelta(minutes=1) >= session.close
    return plan


def mark_dispatched(ts: str, settings: Settings | None = None) -> None:
    """collect_minute's fan-out is done: a later delivery of it does nothing."""
    ledger_for(settings or get_settings()).mark_dispatched("collect_minute", checked_minute(ts).isoformat())


def should_close_day(ts: str, settings: Settings | None = None, ledger: Ledger | None = None) -> str | None:
    """The day to close now, if any: `ts`'s own when it is its session's last minute; else the oldest closed
    session with stored minutes and no end-of-day record (the stack was down over its close, so its last minute's
    tick never came), one at a time: none while another such close is under way. Each is claimed once (for as
    long as an end of day may run: one that failed is tried again after that)."""
    settings = settings or get_settings()
    minute = parse_minute(ts)
    calendar = get_calendar(settings.data.calendar_overrides)
    day = minute.astimezone(IST).date()
    session = calendar.session(day)
    ledger = ledger or ledger_for(settings)
    if session is not None and session.open <= minute < session.close:
        if minute + dt.timedelta(minutes=1) < session.close or ledger.eod(day.isoformat()):
            return None
        return day.isoformat() if ledger.claim("close_day", day.isoformat(), CLOSE_CLAIM_S) else None
    todo = unclosed_days(settings, ledger, calendar.last_closed_session(minute))
    if not todo or any(ledger.claimed_at("close_day", d.isoformat()) for d in todo):
        return None  # nothing to close, or a close under way: one at a time
    if not ledger.claim("close_day", todo[0].isoformat(), CLOSE_CLAIM_S):
        return None
    log.warning("closing %s, a day with stored minutes without an end-of-day record (the stack was down over its "
                "close)%s", todo[0], f"; {len(todo) - 1} more such day(s) after it, one at a time" if len(todo) > 1 else "")
    return todo[0].isoformat()


def close_delay_s(settings: Settings | None = None) -> float:
    """How long after a session's last minute its day is closed: 90 s, scaled in an accelerated session."""
    return max(5.0, 90.0 / clock_speed(settings or get_settings()))


def store_minute(index: str, ts: str, settings: Settings | None = None, ledger: Ledger | None = None,
                 provider=None) -> MinuteResult:
    """Collect, archive, process and store one (index, minute). Safe to run any number of times."""
    settings = settings or get_settings()
    index, minute = checked_index(index, settings), checked_minute(ts)
    ledger = ledger or ledger_for(settings)
    result = MinuteResult(index=index, ts=minute.isoformat())
    if ledger.is_stored(index, result.ts) and ParquetStore.from_settings(settings).has_minute("summary", index, minute):
        # the ledger is a cache of the stores: a redelivered minute is skipped only if its files are there
        result.skipped = "already stored"
        return result
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.stages_ms[stage] = round((now - clock) * 1000, 2)
        clock = now

    provider = provider or provider_for(settings.market.provider)
    source = getattr(provider, "source", "live")  # as the provider labels what it fetches
    archived = _archived(settings, index, minute)
    if archived is not None:  # fetched with the whole minute (`fetch_minute`), or by an earlier try: archive first
        snapshot = record_snapshot(archived, source=source)
        lap("snapshot")
    else:
        snapshot = provider.snapshot(index, minute)
        if settings.market.provider == "kite" and settings.kite.fetch == "ticker":  # neither cut nor fallback came
            snapshot = _relabel(snapshot, "rest_fallback")
        counters.record_provider_ok(ledger.redis, provider.name)
        lap("snapshot")
        if settings.market.provider != "replay" and not write_raw_once(  # a replayed payload is archived already
                settings.data.raw_root, index, minute, snapshot.provider, snapshot.raw):
            # archived meanwhile (the ticker's cut, another delivery): the first payload of a minute wins
            snapshot = record_snapshot(read_raw(raw_path(settings.data.raw_root, index, minute)), source=source)
    lap("archive")
    processed = process_snapshot(snapshot)
    lap("process")
    written = write_minute(processed, settings=settings, redis_client=ledger.redis)
    lap("store")
    if not written.minutes and ledger.is_stored(index, result.ts):
        result.skipped = "stored meanwhile by another writer"  # which recorded it: its record stays
        return result
    result.legs, result.merged, result.summary = (
        processed.legs.num_rows, processed.merged.num_rows, processed.summary.num_rows,
    )
    result.dropped = {**snapshot.issues, **processed.report.removed}
    result.sample_span_ms, result.spot_offset_ms = snapshot.sample_span_ms, snapshot.spot_offset_ms
    ledger.mark_stored(index, result.ts, legs=result.legs, stages_ms=result.stages_ms)
    dispatched = ledger.claimed_at("collect_minute", result.ts)
    if dispatched:
        counters.record_latency(ledger.redis, index, time.time() - dispatched)
    if snapshot.sample_span_ms is not None:
        counters.record_sampling(ledger.redis, index, snapshot.sample_span_ms, snapshot.spot_offset_ms)
    return result


def _relabel(snapshot, source: str):
    t = snapshot.table
    return dataclasses.replace(snapshot, table=t.set_column(t.schema.get_field_index("source"), "source",
                                                            pa.array([source] * t.num_rows, pa.string())))


def _archived(settings: Settings, index: str, minute: dt.datetime):
    """The minute's raw record when the archive already holds it (any provider but replay, which reads it anyway).
    A file that cannot be read is set aside (kept) and the minute fetched anew."""
    if settings.market.provider == "replay":
        return None
    path = raw_path(settings.data.raw_root, index, minute)
    if not path.exists():
        return None
    try:
        return read_raw(path)
    except Exception:  # noqa: BLE001 - any decoding error: the file is kept aside, never overwritten
        set_aside(path)
        return None


def fetch_minute(ts: str, indices: list[str], settings: Settings | None = None) -> dict:
    """The whole minute in one fetch where the provider can, archived per index before any processing task is
    sent, so payloads stay off the broker and each process_index reads its index from the archive.

    Kite with KITE_FETCH=minute: every index's quotes in the fewest calls. KITE_FETCH=ticker: the minute is
    cut by `optask ticker`; this waits for its archive while the ticker reports itself healthy (at most
    KITE_TICKER_WAIT_S), and fetches what is still missing over REST, archived as a `rest_fallback`
    minute and counted. A failed fetch is logged and left to process_index, which fetches on its own.
    """
    settings = settings or get_settings()
    fetch = settings.kite.fetch
    if not indices or settings.market.provider != "kite" or fetch == "index":
        return {}
    minute = checked_minute(ts)
    todo = [checked_index(i, settings) for i in indices]
    fallback = ""
    if fetch == "ticker":
        client = ledger_for(settings).redis
        deadline = time.time() + settings.kite.ticker_wait_s
        while True:
            todo = [i for i in indices if not raw_path(settings.data.raw_root, i, minute).exists()]
            if not todo:
                return {i: {"source": "stream"} for i in indices}
            healthy = ticker_healthy(client)
            if not healthy or time.time() >= deadline:
                break
            time.sleep(0.02)
        fallback = "ticker down or stale" if not healthy else f"no cut within {settings.kite.ticker_wait_s:g} s"
        log.warning("%s: %s for %s; fetching them over REST", ts, fallback, ", ".join(todo))
        for index in todo:
            counters.count(client, "ticker_fallback", index)
    provider = provider_for("kite")
    try:
        snaps = provider.fetch_minute(todo, minute)
    except Exception as exc:  # noqa: BLE001 - the per-index path (with its retries) still collects the minute
        log.warning("one fetch for %s failed (%s: %s); each index fetches on its own",
                                            ts, type(exc).__name__, exc)
        record_fault(exc, "retries", settings)
        return {"error": f"{type(exc).__name__}: {exc}"}
    for index, snap in snaps.items():  # the first payload of a minute wins: a resumed task keeps what it archived
        # a fallback is marked in the payload, so the minute's rows say `rest_fallback`, even when replayed
        raw = orjson.dumps({**orjson.loads(snap.raw), "fallback": fallback}) if fallback else snap.raw
        write_raw_once(settings.data.raw_root, index, minute, snap.provider, raw)
    return {i: {"legs": s.table.num_rows, "sample_span_ms": s.sample_span_ms, "spot_offset_ms": s.spot_offset_ms,
                "source": "rest_fallback" if fallback else "live"} for i, s in snaps.items()}


def record_fault(exc: BaseException, family: str, settings: Settings | None = None) -> None:
    """Count a task's retry or failure by exception kind; a provider fault also becomes the provider's last error."""
    try:
        client = ledger_for(settings or get_settings()).redis
        counters.count(client, family, type(exc).__name__)
        if isinstance(exc, ProviderError):
            counters.record_provider_error(client, (settings or get_settings()).market.provider, exc,
                                          permanent=isinstance(exc, PermanentProviderError))
    except (redis.RedisError, OSError):
        pass  # Redis down is its own health check; counting must not hide the task's real error


def record_missed(index: str, ts: str, reason: str, settings: Settings | None = None) -> None:
    ledger_for(settings or get_settings()).mark_missed(index, ts, reason)
