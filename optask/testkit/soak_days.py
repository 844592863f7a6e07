"""The multi-day soak: N consecutive calendar days through `optask up` at an accelerated clock (sessions, weekends,
exchange holidays and one from the overrides file alike), the one-day soak's faults spread over the sessions, and
one row per day of what an operator would watch over weeks: minutes stored and the end-of-day score per index,
expiries rolled, Redis memory and keys, disk per folder, RSS per process, alerts. The last row says whether
anything grew that should not have: a month unattended, played in an hour.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from optask.core.calendar import get_calendar
from optask.core.clock import SessionReplayClock
from optask.testkit.chaos import Drill
from optask.testkit.soak import MemoryWatch, default_schedule

#: Sat 2026-11-21 to Mon 2026-11-30: two weekends, the NSE holiday of the 24th (NIFTY's weekly and the NFO monthly
#: expiries move to Monday the 23rd), SENSEX's weekly and BANKEX's monthly expiry on Thursday the 26th, and Friday
#: the 27th declared a holiday in the overrides file.
START = dt.date(2026, 11, 21)
HOLIDAY = dt.date(2026, 11, 27)
FOLDERS = ("parquet", "csv_data", "raw_snapshots", "logs", "reports", "redis")


@dataclass
class DayRow:
    day: dt.date
    kind: str  # session | day off | holiday (overrides)
    stored: dict[str, int] = field(default_factory=dict)
    expected: int = 0
    scores: dict[str, float] = field(default_factory=dict)
    near_expiry: dict[str, str] = field(default_factory=dict)
    rolled: list[str] = field(default_factory=list)
    redis_mb: float = 0.0
    redis_keys: int = 0  # per-day, capped and configured keys: what the retention bounds
    redis_expiring: int = 0  # keys bounded by a wall-clock TTL (an accelerated clock outruns them)
    redis_days: list[str] = field(default_factory=list)  # the days that per-day keys (and fields) name
    redis_other: int = 0  # capped and configured keys: flat whatever the days
    disk_mb: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    duplicates: int = 0  # duplicated keys in the stores (counted apart from the verification) and unreadable files
    unreadable: int = 0

    def cells(self) -> list[str]:
        scores = ", ".join(f"{i} {s:g}" for i, s in self.scores.items()) or "-"
        stored = ", ".join(f"{i} {n}/{self.expected}" for i, n in self.stored.items()) if self.expected else "-"
        return [f"{self.day:%a %Y-%m-%d}", self.kind, stored, scores, ", ".join(self.rolled) or "-",
                f"{self.redis_mb:.1f} MB, {self.redis_keys} keys ({self.redis_other} not per day; days "
                f"{', '.join(d[5:] for d in self.redis_days) or '-'}) + {self.redis_expiring} expiring",
                ", ".join(f"{k} {v:.0f}" for k, v in self.disk_mb.items()),
                ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.rss_mb.items())),
                f"{len(self.alerts)}/{len(self.resolved)}", "; ".join(self.faults) or "-"]


COLUMNS = ["day", "kind", "minutes stored", "end-of-day score", "expiries rolled", "Redis", "disk MB",
           "max RSS MB per process", "alerts raised/resolved", "faults"]


@dataclass
class SoakDays:
    rows: list[DayRow]
    verdict: dict[str, str]  # what grew, what did not: measure -> finding
    wall_s: float
    ok: bool

    def markdown(self, title: str) -> str:
        lines = [title, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in self.rows]
        lines += ["", "| growth | finding |", "|---|---|"] + [f"| {k} | {v} |" for k, v in self.verdict.items()]
        return "\n".join(lines)


def _disk_mb(data: Path) -> dict[str, float]:
    out = {}
    for name in FOLDERS:
        root = data / name
        out[name] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20 if root.exists() else 0.0
    return out


def _key_counts(client, row: DayRow) -> None:
    """optask's keys bounded by the retention (per day: which days they name) or by what is configured, and
    those bounded by a TTL."""
    from optask.infra.retention import DAY_FIELDS, day_of, family_of

    days: set[str] = set()
    for raw in client.scan_iter("optask:*", count=1000):
        key = raw.decode()
        family = family_of(key)
        if family is not None and family.bound == "expiring":
            row.redis_expiring += 1
            continue
        row.redis_keys += 1
        if family is not None and family.by_day and (day := day_of(key)) is not None:
            days.add(day.isoformat())
        elif key not in DAY_FIELDS:
            row.redis_other += 1
    for key in DAY_FIELDS:
        days |= {d.isoformat() for f in client.hkeys(key) if (d := day_of(f.decode())) is not None}
    row.redis_days = sorted(days)


def _near_expiries(data: Path, indices: tuple[str, ...], day: dt.date) -> dict[str, str]:
    """The nearest expiry each index collected on `day` (from the stored summary)."""
    from optask.storage.parquet import ParquetStore

    store, out = ParquetStore(data / "parquet"), {}
    for index in indices:
        t = store.read_table("summary", index, day, columns=["expiry"])
        if t.num_rows:
            out[index] = str(pc.min(t["expiry"]).as_py())
    return out


def _plan(clock: SessionReplayClock, minutes_of, with_faults: bool) -> dict[dt.date, list]:
    """The one-day soak's faults, one after another over the sessions, each at its share of its session."""
    sessions = [s for s in clock.segments() if s.session is not None]
    plan: dict[dt.date, list] = {}
    for i in range(len(default_schedule(375)) if with_faults and sessions else 0):
        seg = sessions[i % len(sessions)]
        fault = default_schedule(minutes_of(seg.day))[i]
        fault.at = clock.position_of(seg.day, fault.at)
        plan.setdefault(seg.day, []).append(fault)
    return plan


def run_soak_days(root: Path, days: int = 10, start: dt.date = START, holidays: tuple[dt.date, ...] = (HOLIDAY,),
                  speed: float = 60.0, strikes: int = 50, indices: tuple[str, ...] | None = None,
                  sessions: list[dict] | None = None, retention_days: int = 3, with_faults: bool = True,
                  echo=print) -> SoakDays:
    """Play `days` calendar days from `start`; `sessions` (override entries) replace the exchange's hours."""
    from optask.core.schema import INDICES
    from optask.infra.retention import unbounded_keys

    indices = tuple(indices or INDICES)
    drill = Drill(root, minutes=375, speed=speed, indices=indices, strikes=strikes, day=start, days=days,
                  env={"LEDGER_RETENTION_DAYS": str(retention_days)})
    drill.write_calendar(sessions=sessions or [], holidays=[d.isoformat() for d in holidays])
    calendar = get_calendar(drill.data / "calendar_overrides.json")
    clock = SessionReplayClock(start, calendar, speed, days=days)
    plan = _plan(clock, lambda d: len(calendar.session_minutes(d)), with_faults)
    rows: list[DayRow] = []
    started = time.monotonic()
    try:
        with MemoryWatch(drill) as watch:
            drill.start()
            echo(f"optask up running on {drill.data}; {days} days from {start} at {speed:g}x")
            seen_alerts = 0
            for seg in clock.segments():
                kind = ("session" if seg.session is not None else "holiday (overrides)" if seg.day in holidays
                        else "weekend" if seg.day.weekday() >= 5 else "holiday (exchange)")
                row = DayRow(seg.day, kind)
                for fault in plan.get(seg.day, []):
                    drill.wait_position(fault.at, timeout=3 * 375 * 60 / speed + 300)
                    echo(f"{seg.day} minute {fault.at - seg.start}: {fault.name}")
                    fault.inject(drill)
                    row.faults.append(fault.name)
                drill.wait_position(seg.start + seg.length - 1, timeout=3 * seg.length * 60 / speed + 600)
                if seg.session is not None:
                    drill.wait_eod(timeout=900, day=seg.day)
                    v = drill.verdict(seg.day)
                    row.stored, row.expected, row.scores = v.stored, v.expected, v.scores
                    row.duplicates, row.unreadable = v.duplicate_keys, v.unreadable_files
                    row.near_expiry = _near_expiries(drill.data, indices, seg.day)
                    before = next((r.near_expiry for r in reversed(rows) if r.near_expiry), {})
                    row.rolled = [f"{i} -> {e}" for i, e in row.near_expiry.items() if before.get(i) not in (None, e)]
                client = drill.redis()
                row.redis_mb = client.info("memory")["used_memory"] / 2**20
                _key_counts(client, row)
                row.disk_mb = _disk_mb(drill.data)
                watch.sample()
                row.rss_mb, watch.current = dict(watch.current), {}
                history = [json.loads(x) for x in reversed(client.lrange("optask:alerts:history", 0, -1))]
                new, seen_alerts = history[seen_alerts:], len(history)
                row.alerts = [a["name"] for a in new if a["kind"] == "firing"]
                row.resolved = [a["name"] for a in new if a["kind"] == "resolved"]
                rows.append(row)
                echo("  ".join(row.cells()))
            unbounded = unbounded_keys(drill.redis())
    finally:
        drill.stop()
    return judge_days(rows, unbounded, retention_days, time.monotonic() - started)


def judge_days(rows: list[DayRow], unbounded: list[str], retention_days: int, wall_s: float) -> SoakDays:
    """Every session 100 on every index with every minute; Redis flat once its window is full; RSS flat."""
    sessions = [r for r in rows if r.kind == "session"]
    verdict: dict[str, str] = {}
    bad = [f"{r.day} {i} {s:g}" for r in sessions for i, s in r.scores.items() if s != 100]
    short = [f"{r.day} {i} {n}/{r.expected}" for r in sessions for i, n in r.stored.items() if n != r.expected]
    broken = [f"{r.day}: {r.duplicates} duplicated keys, {r.unreadable} unreadable files" for r in sessions
              if r.duplicates or r.unreadable]
    verdict["end-of-day score"] = f"100 on every index, every session ({len(sessions)})" if not bad else \
        "below 100: " + ", ".join(bad)
    verdict["minutes stored"] = "every minute of every session" if not short else "short: " + ", ".join(short)
    verdict["duplicated keys, unreadable files"] = "none" if not broken else "; ".join(broken)
    # end of day prunes: from each session's close on, its window holds (a day off prunes nothing)
    last_close = {r.day: max((x.day for x in sessions if x.day <= r.day), default=r.day) for r in rows}
    stale = [f"{r.day}: {d}" for r in rows for d in r.redis_days
             if (last_close[r.day] - dt.date.fromisoformat(d)).days >= retention_days]
    verdict["per-day keys past the retention"] = "none" if not stale else ", ".join(stale[:5])
    other = [r.redis_other for r in rows[rows.index(sessions[0]):]] if sessions else [0]  # from the first session
    grew_keys = bool(stale) or max(other) > 1.10 * other[0] + 5
    verdict["other keys (capped, configured)"] = f"{min(other)}-{max(other)}" + \
        (" (grew)" if max(other) > 1.10 * other[0] + 5 else " (flat)")
    verdict["unbounded Redis keys"] = ", ".join(unbounded[:5]) or "none"
    growth = {}
    for role in sessions[0].rss_mb if sessions else {}:
        first = sessions[min(1, len(sessions) - 1)].rss_mb.get(role)  # the first session warms up imports and caches
        last = sessions[-1].rss_mb.get(role)
        if first and last:
            growth[role] = last / first - 1
    grown = {k: v for k, v in growth.items() if v > 0.05}
    verdict["RSS, second session to last"] = ", ".join(f"{k} {v:+.0%}" for k, v in sorted(growth.items())) + \
        (f" (over 5%: {', '.join(grown)})" if grown else " (flat within 5%)")
    ok = not bad and not short and not broken and not unbounded and not grew_keys
    verdict["wall time"] = f"{wall_s / 60:.1f} min"
    return SoakDays(rows, verdict, wall_s, ok)
