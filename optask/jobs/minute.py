"""One minute of one index, end to end, and the end of a day: what the Celery tasks call.

    snapshot -> raw archive -> process_snapshot -> Parquet, CSV, InfluxDB -> ledger

The raw payload is archived before anything else, so a later failure can be replayed.
Every step is idempotent: a retried or duplicated minute replaces what it wrote. Minutes
that cannot be stored (retries exhausted, expired in the queue) are recorded in the ledger
for backfill, so none goes silently missing.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import asdict, dataclass, field

import orjson

from optask.calendar import get_calendar
from optask.config import Settings, get_settings
from optask.ledger import Ledger
from optask.timeutils import IST, parse_minute


@dataclass
class MinutePlan:
    ts: str
    day: str
    indices: list[str]
    reason: str = ""  # why nothing is dispatched (outside session, already claimed)
    last_of_session: bool = False

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


def plan_minute(ts: str, settings: Settings | None = None, ledger: Ledger | None = None) -> MinutePlan:
    """Which indices to collect for this minute: none outside a session, none if another beat claimed it."""
    settings = settings or get_settings()
    minute = parse_minute(ts)
    calendar = get_calendar(settings.data.calendar_overrides)
    day = minute.astimezone(IST).date()
    session = calendar.session(day)
    plan = MinutePlan(ts=minute.isoformat(), day=day.isoformat(), indices=[])
    if session is None or not (session.open <= minute < session.close):
        plan.reason = "outside session"
        return plan
    ledger = ledger or ledger_for(settings)
    if not ledger.claim("collect_minute", plan.ts):
        plan.reason = "already claimed (duplicate tick)"
        return plan
    plan.indices = list(settings.market.indices)
    plan.last_of_session = minute + dt.timedelta(minutes=1) >= session.close
    return plan


def should_close_day(ts: str, settings: Settings | None = None, ledger: Ledger | None = None) -> str | None:
    """The day to close when `ts` is its session's last minute and the day is not closed yet (once per day,
    even if the last minute's own tick was lost and the minute comes round again)."""
    settings = settings or get_settings()
    minute = parse_minute(ts)
    day = minute.astimezone(IST).date()
    session = get_calendar(settings.data.calendar_overrides).session(day)
    if session is None or minute + dt.timedelta(minutes=1) < session.close or minute >= session.close:
        return None
    ledger = ledger or ledger_for(settings)
    if ledger.eod(day.isoformat()) or not ledger.claim("close_day", day.isoformat(), ttl_s=int(close_delay_s(settings)) + 120):
        return None
    return day.isoformat()


def close_delay_s(settings: Settings | None = None) -> float:
    """How long after a session's last minute its day is closed: 90 s, scaled in an accelerated session."""
    market = (settings or get_settings()).market
    speed = market.simulated_session_speed if market.simulated_session_day is not None else 1.0
    return max(5.0, 90.0 / speed)


@functools.lru_cache(maxsize=4)
def _provider(name: str):
    """One provider per worker process: instrument caches and HTTP sessions are reused across minutes."""
    from optask.providers.base import get_provider

    return get_provider(name)


def _parquet(settings: Settings):
    from optask.storage.parquet import ParquetStore

    return ParquetStore(settings.data.parquet_root)


@functools.lru_cache(maxsize=4)
def _ledger(redis_url: str) -> Ledger:
    """One Redis connection pool per worker process, not one per minute."""
    from optask.coordination import connect

    return Ledger(connect(redis_url))


def ledger_for(settings: Settings) -> Ledger:
    from optask.services import ensure_redis

    url = settings.redis.effective_url()
    return _ledger(url) if url else _ledger(ensure_redis(settings))


def store_minute(index: str, ts: str, settings: Settings | None = None, ledger: Ledger | None = None,
                 provider=None) -> MinuteResult:
    """Collect, archive, process and store one (index, minute). Safe to run any number of times."""
    from optask.pipeline import process_snapshot
    from optask.storage.archive import write_raw
    from optask.storage.sinks import write_minute

    settings = settings or get_settings()
    ledger = ledger or ledger_for(settings)
    minute = parse_minute(ts)
    result = MinuteResult(index=index, ts=minute.isoformat())
    if ledger.is_stored(index, result.ts) and _parquet(settings).has_minute("summary", index, minute):
        # the ledger is a cache of the stores: a redelivered minute is skipped only if its files are there
        result.skipped = "already stored"
        return result
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.stages_ms[stage] = round((now - clock) * 1000, 2)
        clock = now

    from optask import metrics

    provider = provider or _provider(settings.market.provider)
    archived = _archived(settings, index, minute)
    if archived is not None:  # fetched with the whole minute (`fetch_minute`), or by an earlier try: archive first
        from optask.providers.replay import record_snapshot

        snapshot = record_snapshot(archived, source=getattr(provider, "source", "live"))  # as the provider labels it
        lap("snapshot")
    else:
        snapshot = provider.snapshot(index, minute)
        if settings.market.provider == "kite" and settings.kite.fetch == "ticker":  # neither cut nor fallback came
            snapshot = _relabel(snapshot, "rest_fallback")
        metrics.record_provider_ok(ledger.redis, provider.name)
        lap("snapshot")
        if settings.market.provider != "replay":  # a replayed payload is already in the archive
            write_raw(settings.data.raw_root, index, minute, snapshot.provider, snapshot.raw)
    lap("archive")
    processed = process_snapshot(snapshot)
    lap("process")
    write_minute(processed, settings=settings, redis_client=ledger.redis)
    lap("store")
    result.legs, result.merged, result.summary = (
        processed.legs.num_rows, processed.merged.num_rows, processed.summary.num_rows,
    )
    result.dropped = {**snapshot.issues, **processed.report.removed}
    result.sample_span_ms, result.spot_offset_ms = snapshot.sample_span_ms, snapshot.spot_offset_ms
    ledger.mark_stored(index, result.ts, legs=result.legs, stages_ms=result.stages_ms)
    dispatched = ledger.claimed_at("collect_minute", result.ts)
    if dispatched:
        metrics.record_latency(ledger.redis, index, time.time() - dispatched)
    if snapshot.sample_span_ms is not None:
        metrics.record_sampling(ledger.redis, index, snapshot.sample_span_ms, snapshot.spot_offset_ms)
    return result


def _relabel(snapshot, source: str):
    import dataclasses

    import pyarrow as pa

    t = snapshot.table
    return dataclasses.replace(snapshot, table=t.set_column(t.schema.get_field_index("source"), "source",
                                                            pa.array([source] * t.num_rows, pa.string())))


def _archived(settings: Settings, index: str, minute: dt.datetime):
    """The minute's raw record when the archive already holds it (any provider but replay, which reads it anyway)."""
    if settings.market.provider == "replay":
        return None
    from optask.storage.archive import raw_path, read_raw

    path = raw_path(settings.data.raw_root, index, minute)
    if not path.exists():
        return None
    try:
        return read_raw(path)
    except Exception:  # noqa: BLE001 - an unreadable archive file is fetched anew (and rewritten)
        return None


def fetch_minute(ts: str, indices: list[str], settings: Settings | None = None) -> dict:
    """The whole minute in one fetch where the provider can, archived per index before any processing task is
    sent, so payloads stay off the broker and each process_index reads its index from the archive.

    Kite with KITE_FETCH=minute: every index's quotes in the fewest calls. KITE_FETCH=ticker: the minute is
    cut by `optask ticker`; this waits for its archive while the ticker reports itself healthy (at most
    KITE_TICKER_WAIT_S), and fetches what is still missing over REST, archived as a `rest_fallback`
    minute and counted. A failed fetch is logged and left to process_index, which fetches on its own.
    """
    import logging

    from optask.storage.archive import raw_path, write_raw, write_raw_once

    settings = settings or get_settings()
    fetch = settings.kite.fetch
    if not indices or settings.market.provider != "kite" or fetch == "index":
        return {}
    minute = parse_minute(ts)
    todo = list(indices)
    fallback = ""
    if fetch == "ticker":
        from optask import metrics
        from optask.ticker import ticker_healthy

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
        logging.getLogger(__name__).warning("%s: %s for %s; fetching them over REST", ts, fallback, ", ".join(todo))
        for index in todo:
            metrics.count(client, "ticker_fallback", index)
    provider = _provider("kite")
    try:
        snaps = provider.fetch_minute(todo, minute)
    except Exception as exc:  # noqa: BLE001 - the per-index path (with its retries) still collects the minute
        logging.getLogger(__name__).warning("one fetch for %s failed (%s: %s); each index fetches on its own",
                                            ts, type(exc).__name__, exc)
        record_fault(exc, "retries", settings)
        return {"error": f"{type(exc).__name__}: {exc}"}
    for index, snap in snaps.items():
        if fallback:  # marked in the payload, so the minute's rows say `rest_fallback`, even when replayed
            raw = orjson.dumps({**orjson.loads(snap.raw), "fallback": fallback})
            write_raw_once(settings.data.raw_root, index, minute, snap.provider, raw)
        else:
            write_raw(settings.data.raw_root, index, minute, snap.provider, snap.raw)
    return {i: {"legs": s.table.num_rows, "sample_span_ms": s.sample_span_ms, "spot_offset_ms": s.spot_offset_ms,
                "source": "rest_fallback" if fallback else "live"} for i, s in snaps.items()}


def store_minutes(index: str, minutes: list[str], provider_name: str | None = None,
                  settings: Settings | None = None) -> dict:
    """Backfill, repair or replay a batch of one index's minutes of one day: one processing pass, one write per store.

    What to write is decided from the stores themselves (`present_minutes`), never from the ledger:
    a minute the ledger calls stored but a store lacks is written to that store, and a minute every
    store holds costs nothing. Sources, in order: the raw archive (an exact replay of what was
    received), then the provider's `history()` (Kite minute candles, the deterministic simulator).
    `provider_name="replay"` uses the archive only.
    """
    import pyarrow as pa

    from optask.pipeline import process_snapshot
    from optask.storage.archive import archived_minutes, write_raw
    from optask.storage.sinks import present_minutes, write_minute

    settings = settings or get_settings()
    ledger = ledger_for(settings)
    todo = sorted({parse_minute(ts) for ts in minutes})
    days = {ts.astimezone(IST).date() for ts in todo}
    if len(days) != 1:
        raise ValueError(f"a batch covers one day; got {sorted(days) or 'no minutes'}")
    day = days.pop()
    present = present_minutes(index, day, settings)
    everywhere = [ts for ts in todo if all(ts.isoformat() in have for have in present.values())]
    todo = [ts for ts in todo if ts not in everywhere]
    out = {"index": index, "day": day.isoformat(), "asked": len(minutes), "stored": 0, "from_archive": 0,
           "from_history": 0, "unavailable": 0}
    stored = ledger.stored_minutes(index, day)
    for ts in everywhere:  # the ledger is a cache of the stores: a minute they hold is stored
        if ts.isoformat() not in stored:
            ledger.mark_stored(index, ts.isoformat(), legs=0, stages_ms={}, live=False)
    if not todo:
        return out
    name = provider_name or settings.market.provider
    archived = set(archived_minutes(settings.data.raw_root, index, day))
    from_archive = [ts for ts in todo if ts in archived or name == "replay"]
    from_history = [ts for ts in todo if ts not in archived and name != "replay"]
    snaps = list(_provider("replay").history(index, day, from_archive)) if from_archive else []
    out["from_archive"] = len(snaps)
    if from_history:
        fresh = list(_provider(name).history(index, day, from_history))
        for snap in fresh:
            if snap.provider == "simulated":  # the venue's exact payload: archive it like a live one
                write_raw(settings.data.raw_root, index, snap.ts, snap.provider, snap.raw)
        out["from_history"] = len(fresh)
        snaps += fresh
    out["unavailable"] = len(todo) - len(snaps)
    if not snaps:
        return out
    processed = process_snapshot(pa.concat_tables([s.table for s in snaps], promote_options="default"))
    write_minute(processed, settings=settings, redis_client=ledger.redis, present=present)
    counts = processed.legs.group_by("ts").aggregate([("ts", "count")]).to_pydict()
    legs_by_minute = dict(zip(counts["ts"], counts["ts_count"], strict=True))
    for snap in snaps:
        ledger.mark_stored(index, snap.ts.isoformat(), legs=int(legs_by_minute.get(snap.ts, 0)), stages_ms={},
                           live=False)
    out["stored"] = len(snaps)
    return out


#: In-session repair: leave a minute this many minutes to its own retries, then try at most REPAIR_ATTEMPTS times.
REPAIR_AFTER_MINUTES = 3
REPAIR_ATTEMPTS = 5


def repair_missed(ts: str, settings: Settings | None = None) -> dict:
    """Rebuild today's minutes that are not stored REPAIR_AFTER_MINUTES after their time (expired in a queue,
    retries exhausted, or never run because an index's worker was down), from the archive or the provider's
    history, at most REPAIR_ATTEMPTS times per minute; every attempt and its outcome is recorded in the ledger.

    `ts` is the clock's current minute (from beat), so this runs the same in a replayed session.
    """
    settings = settings or get_settings()
    now = parse_minute(ts)
    day = now.astimezone(IST).date()
    minutes = get_calendar(settings.data.calendar_overrides).session_minutes(day)
    due = [m.isoformat() for m in minutes if m <= now - dt.timedelta(minutes=REPAIR_AFTER_MINUTES)]
    ledger = ledger_for(settings)
    report: dict = {"ts": now.isoformat(), "indices": {}}
    for index in settings.market.indices:
        stored = ledger.stored_minutes(index, day)
        tried = ledger.repair_attempts(index, day)
        todo = [m for m in due if m not in stored and tried.get(m, {}).get("attempts", 0) < REPAIR_ATTEMPTS]
        if not todo:
            continue
        try:
            result = store_minutes(index, todo, settings=settings)
            outcome = "stored" if result["stored"] == len(todo) else f"{result['unavailable']} unavailable from the source"
        except Exception as exc:  # noqa: BLE001 - recorded per minute and tried again next time, up to the limit
            result, outcome = {"error": f"{type(exc).__name__}: {exc}"}, f"failed: {type(exc).__name__}: {exc}"
        stored_now = ledger.stored_minutes(index, day)
        for m in todo:
            ledger.record_repair(index, m, tried.get(m, {}).get("attempts", 0) + 1,
                                 "stored" if m in stored_now else outcome)
        report["indices"][index] = {"tried": len(todo), "stored": len([m for m in todo if m in stored_now]),
                                    "result": result}
    return report


def record_fault(exc: BaseException, family: str, settings: Settings | None = None) -> None:
    """Count a task's retry or failure by exception kind; a provider fault also becomes the provider's last error."""
    import redis

    from optask import metrics
    from optask.providers.base import PermanentProviderError, ProviderError

    try:
        client = ledger_for(settings or get_settings()).redis
        metrics.count(client, family, type(exc).__name__)
        if isinstance(exc, ProviderError):
            metrics.record_provider_error(client, (settings or get_settings()).market.provider, exc,
                                          permanent=isinstance(exc, PermanentProviderError))
    except (redis.RedisError, OSError):
        pass  # Redis down is its own health check; counting must not hide the task's real error


def record_missed(index: str, ts: str, reason: str, settings: Settings | None = None) -> None:
    ledger_for(settings or get_settings()).mark_missed(index, ts, reason)


def end_of_day(day: str, settings: Settings | None = None, repair: bool = True) -> dict:
    """Close a day: compact, verify, repair what the stores lack, verify again, write the report.

    The repair reads the gap list from the stores (a minute the ledger calls stored but a store lacks
    is repaired too): Parquet and CSV minutes are rebuilt with `store_minutes` (raw archive first,
    then the provider's history); minutes only InfluxDB lacks are re-sent from Parquet. The report
    shows the score before and after. Returns a small summary (the full results are in the report).
    `repair=False` only verifies (a demo that played part of a session).
    """
    from optask.backfill import CHUNK_MINUTES
    from optask.storage.sinks import compact_day, resend_influx
    from optask.verify import EODDataVerificationSystem, missing_minutes

    settings = settings or get_settings()
    d = dt.date.fromisoformat(day)
    if not get_calendar(settings.data.calendar_overrides).is_trading_day(d):
        return {"day": day, "session": False}
    indices = list(settings.market.indices)
    for index in indices:
        compact_day(index, d, settings=settings)
    system = EODDataVerificationSystem(settings)
    before = system.run_eod_verification(d, indices=indices)
    repaired: dict[str, dict] = {}
    for index in indices:
        todo = missing_minutes(before, index) if repair else []
        if not todo:
            continue
        done = {"asked": len(todo), "stored": 0, "unavailable": 0, "influx_resent": 0}
        for i in range(0, len(todo), CHUNK_MINUTES):
            r = store_minutes(index, todo[i:i + CHUNK_MINUTES], settings=settings)
            done["stored"] += r["stored"]
            done["unavailable"] += r["unavailable"]
        influx_only = sorted(set(todo) & {m for k, c in before["indices"][index]["completeness"].items()
                                          if k.startswith("influx.") for m in c["missing"]})
        if influx_only:
            done["influx_resent"] = resend_influx(index, d, influx_only, settings)
        compact_day(index, d, settings=settings)
        repaired[index] = done
    after = system.run_eod_verification(d, indices=indices) if repaired else before
    report_path = system.save_verification_report(after, before=before if repaired else None)
    ledger_for(settings).record_eod(day, {"before": before["summary"]["data_quality_score"],
                                          "after": after["summary"]["data_quality_score"],
                                          "status": after["overall_status"], "report": report_path,
                                          "repaired": sum(r["stored"] for r in repaired.values())})
    from optask.storage.archive import maintain

    retention = maintain(settings.data.raw_root, d, settings.data.raw_retention_days, settings.data.compression_enabled,
                         verified=lambda index, day: day_verified(index, day, settings))
    return {
        "day": day, "session": True, "report": report_path, "repaired": repaired, "raw_retention": retention,
        "before": {"score": before["summary"]["data_quality_score"], "status": before["overall_status"]},
        "after": {"score": after["summary"]["data_quality_score"], "status": after["overall_status"]},
        "indices": {i: {"expected": max((c["expected"] for c in r["completeness"].values()), default=0),
                        "stored": min((c["present"] for c in r["completeness"].values()), default=0),
                        "score": r["score"], "status": r["status"]} for i, r in after["indices"].items()},
    }


def day_verified(index: str, day: dt.date, settings: Settings | None = None) -> bool:
    """Whether the day's verification found every minute of the index in every store (raw retention asks)."""
    import json

    settings = settings or get_settings()
    path = settings.data.reports_root / "eod" / day.isoformat() / "verification.json"
    try:
        r = json.loads(path.read_text())["indices"][index]
    except (OSError, KeyError, ValueError):
        return False
    return all(not c["missing"] for c in r["completeness"].values())
