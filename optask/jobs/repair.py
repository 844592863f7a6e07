"""In-session self-repair: minutes not stored a few minutes after their time are rebuilt, a bounded number of
times, every attempt recorded in the ledger."""

from __future__ import annotations

import datetime as dt

from optask.core.calendar import get_calendar
from optask.core.config import Settings, get_settings
from optask.core.timeutils import IST
from optask.infra.ledger import ledger_for
from optask.jobs.arguments import checked_minute
from optask.jobs.batch import store_minutes

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
    now = checked_minute(ts)
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
