"""Can I trust this day? Per session day of an index: minutes each store holds, the gaps, the end-of-day
verdict and how many minutes were repaired, read from the stores and the day's verification report (the
ledger adds only what it alone knows: which minutes a repair or backfill wrote)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from optask.core.calendar import MarketCalendar
from optask.core.clock import WallClock
from optask.core.timeutils import IST
from optask.infra.ledger import Ledger
from optask.quality.report import load_verification, report_json
from optask.storage.sinks import present_minutes


def gaps_of(session: pd.DatetimeIndex, have: set[str]) -> list[list[str]]:
    """Runs of session minutes a store lacks, as [first, last] in IST (numpy on the minutes, a run at a time)."""
    if have:
        held = pd.to_datetime(list(have), utc=True, format="ISO8601").as_unit("ns").asi8
        session = session[~np.isin(session.as_unit("ns").asi8, held)]
    if not len(session):
        return []
    ns = session.as_unit("ns").asi8
    breaks = np.flatnonzero(np.diff(ns) != 60 * 10**9)
    ist = session.tz_convert(IST)
    return [[ist[a].isoformat(), ist[b].isoformat()] for a, b in zip(np.r_[0, breaks + 1], np.r_[breaks, len(ns) - 1],
                                                                      strict=True)]


def eod_of(settings, day: dt.date, index: str) -> dict | None:
    """The end-of-day verdict of the day's verification report, or None when end of day has not run; the report's
    path as it is under the data root (where the server keeps its data is nobody else's business)."""
    results = load_verification(settings, day)
    mine = results.indices.get(index) if results is not None else None
    if mine is None:
        return None
    before = results.before_repair.indices.get(index) if results.before_repair is not None else None
    return {"score": mine.score, "status": mine.status, "score_before_repair": before.score if before else None,
            "findings_by_kind": mine.findings_by_kind,
            "report": report_json(settings, day).with_name("report.html").relative_to(settings.data.root).as_posix()}


def day_coverage(settings, calendar: MarketCalendar, ledger: Ledger, index: str, day: dt.date) -> dict:
    session = calendar.session_minutes(day)
    session = session[session <= pd.Timestamp(WallClock().now())]  # today's minutes still to come are no gap
    present = present_minutes(index, day, settings)
    stored = ledger.stored(index, day)
    by_batch = sum(1 for info in stored.values() if info.get("live") is False)
    summary = present.get("parquet.summary", set())
    due = {t.isoformat() for t in session} if any(present.values()) else set()  # a day with nothing: no per-minute work
    return {
        "day": day.isoformat(), "session_minutes": len(calendar.session_minutes(day)), "minutes_due": len(session),
        "stored": {name: len(minutes & due) for name, minutes in present.items()},
        "complete": all(len(m) >= len(session) for m in present.values()) and bool(present),
        "gaps": gaps_of(session, summary),
        "gaps_by_store": {name: gaps_of(session, m) for name, m in present.items() if m != summary},
        "eod": eod_of(settings, day, index),
        "repaired": by_batch,
        "repair_attempts": len(ledger.repair_attempts(index, day)),
    }


def coverage(settings, calendar: MarketCalendar, ledger: Ledger, index: str, days: list[dt.date]) -> dict:
    sessions = [d for d in days if calendar.is_trading_day(d)]
    return {"index": index, "days": [day_coverage(settings, calendar, ledger, index, d) for d in sessions]}
