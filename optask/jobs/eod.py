"""The end of a day: compact, verify, repair what the stores lack, verify again, report, retire raw days."""

from __future__ import annotations

import datetime as dt

from optask.core.calendar import get_calendar
from optask.core.config import Settings, get_settings
from optask.core.timeutils import IST
from optask.infra.coordination import writer_lock
from optask.infra.fsutil import sweep_temp_files
from optask.infra.ledger import Ledger, ledger_for
from optask.infra.queues import EOD_HARD_LIMIT_S
from optask.infra.retention import prune
from optask.infra.session_clock import get_clock
from optask.jobs.arguments import checked_day
from optask.jobs.backfill import CHUNK_MINUTES
from optask.jobs.batch import store_minutes
from optask.quality.report import load_verification
from optask.quality.verify import DayVerifier, release_memory
from optask.storage.archive import maintain
from optask.storage.sinks import compact_day, resend_influx, stored_days

#: A day's close is claimed this long: past it, a close that never recorded its end of day (failed, lost) is tried
#: again by a later tick.
CLOSE_CLAIM_S = EOD_HARD_LIMIT_S + 300


def end_of_day(day: str, settings: Settings | None = None, repair: bool = True) -> dict:
    """Close a day: compact, verify, repair what the stores lack, verify again, write the report.

    The repair reads the gap list from the stores (a minute the ledger calls stored but a store lacks
    is repaired too): Parquet and CSV minutes are rebuilt with `store_minutes` (raw archive first,
    then the provider's history); minutes only InfluxDB lacks are re-sent from Parquet. The report
    shows the score before and after. Returns a small summary (the full results are in the report).
    `repair=False` only verifies (a demo that played part of a session).
    """
    settings = settings or get_settings()
    d = checked_day(day)
    if not get_calendar(settings.data.calendar_overrides).is_trading_day(d):
        return {"day": day, "session": False}
    indices = list(settings.market.indices)
    for index in indices:
        compact_day(index, d, settings=settings)
        release_memory()  # a worker child lives for days: what one index's compaction freed goes back now
    verifier = DayVerifier(settings)
    before = verifier.verify(d, indices=indices)
    repaired: dict[str, dict] = {}
    for index in indices:
        todo = before.missing_minutes(index) if repair else []
        if not todo:
            continue
        done = {"asked": len(todo), "stored": 0, "unavailable": 0, "influx_resent": 0}
        for i in range(0, len(todo), CHUNK_MINUTES):
            r = store_minutes(index, todo[i:i + CHUNK_MINUTES], settings=settings)
            done["stored"] += r["stored"]
            done["unavailable"] += r["unavailable"]
        influx_only = sorted(set(todo) & set(before.indices[index].missing_minutes("influx")))
        if influx_only:
            done["influx_resent"] = resend_influx(index, d, influx_only, settings)
        compact_day(index, d, settings=settings)
        repaired[index] = done
    after = verifier.verify(d, indices=indices) if repaired else before
    report_path = str(verifier.save(after, before=before if repaired else None))
    ledger_for(settings).record_eod(day, {"before": before.score, "after": after.score,
                                          "status": after.overall_status, "report": report_path,
                                          "repaired": sum(r["stored"] for r in repaired.values())})
    client = ledger_for(settings).redis
    retention = maintain(settings.data.raw_root, d, settings.data.raw_retention_days, settings.data.compression_enabled,
                         verified=lambda index, day: day_verified(index, day, settings),
                         lock=lambda name: writer_lock(client, name, timeout_s=60.0, wait_s=EOD_HARD_LIMIT_S))
    today = get_clock(settings).now().astimezone(IST).date()  # the clock's day: a replayed month prunes as it goes
    return {
        "day": day, "session": True, "report": report_path, "repaired": repaired, "raw_retention": retention,
        "temp_files_swept": sweep_temp_files(settings.data.root),  # left by writers killed mid-write
        "redis_retention": prune(client, today, settings.data.ledger_retention_days),
        "before": {"score": before.score, "status": before.overall_status},
        "after": {"score": after.score, "status": after.overall_status},
        "indices": {i: {"expected": r.expected, "stored": r.stored, "score": r.score, "status": r.status}
                    for i, r in after.indices.items()},
    }


def unclosed_days(settings: Settings, ledger: Ledger, through: dt.date) -> list[dt.date]:
    """Sessions up to `through` with minutes in the stores and no end-of-day record, oldest first: days left
    unclosed by an outage over their close. Only within the ledger's retention (LEDGER_RETENTION_DAYS), where its
    end-of-day records are kept; older days were closed, or are older than anything it remembers."""
    since = through - dt.timedelta(days=ledger.keep_days - 1)
    closed = ledger.eod_days()
    calendar = get_calendar(settings.data.calendar_overrides)
    days = stored_days(list(settings.market.indices), settings)
    return [d for d in days if since <= d <= through and d.isoformat() not in closed and calendar.is_trading_day(d)]


def day_verified(index: str, day: dt.date, settings: Settings | None = None) -> bool:
    """Whether the day's verification found every minute of the index in every store (raw retention asks)."""
    results = load_verification(settings or get_settings(), day)
    return results is not None and index in results.indices and results.indices[index].fully_stored
