"""Backfill: rebuild the minutes the stores lack, from the shell (`optask backfill`) or Celery.

The work list comes from the stores, never the ledger: a session minute that any Parquet table or
CSV file of an index lacks is missing. Work is cut into chunks of one index and day
(`CHUNK_MINUTES` minutes at most, so one slow day never holds the rest back) and sent to the
`maintenance` queue, which `optask up` serves with a worker of its own so live minutes are never
starved. Each chunk is `optask.jobs.batch.store_minutes`: idempotent and resumable, so a second run finds
nothing to do and a complete day costs a few reads of minute lists.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from optask.core.calendar import get_calendar
from optask.core.clock import Clock, WallClock
from optask.core.config import Settings, get_settings
from optask.core.timeutils import IST, floor_minute
from optask.infra.queues import MAINTENANCE_QUEUE
from optask.jobs.batch import store_minutes
from optask.storage.sinks import compact_day, present_minutes

#: Minutes per backfill task: a chunk is a few seconds of work, so progress moves and a slow day doesn't block.
CHUNK_MINUTES = 75


class BackfillError(ValueError):
    """The request cannot be served (a day that is not a session, a future day); nothing was enqueued."""


@dataclass(frozen=True)
class Chunk:
    index: str
    day: dt.date
    minutes: tuple[str, ...]


@dataclass
class BackfillPlan:
    chunks: list[Chunk] = field(default_factory=list)
    days: list[dt.date] = field(default_factory=list)
    skipped_days: list[tuple[dt.date, str]] = field(default_factory=list)

    def minutes_by_index(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.chunks:
            out[c.index] = out.get(c.index, 0) + len(c.minutes)
        return out

    @property
    def total(self) -> int:
        return sum(len(c.minutes) for c in self.chunks)


def missing_from_stores(index: str, day: dt.date, settings: Settings | None = None) -> list[str]:
    """Session minutes (ISO, UTC) that at least one Parquet table or CSV file of the index lacks."""
    settings = settings or get_settings()
    expected = [m.isoformat() for m in get_calendar(settings.data.calendar_overrides).session_minutes(day)]
    stores = present_minutes(index, day, settings).values()
    return [m for m in expected if any(m not in have for have in stores)]


def plan_backfill(indices: list[str], start: dt.date, end: dt.date, only_missing: bool = False,
                  settings: Settings | None = None, now: dt.datetime | None = None,
                  clock: Clock | None = None) -> BackfillPlan:
    """The chunks to run for `indices` over [start, end]; raises BackfillError for a request that can't be served."""
    settings = settings or get_settings()
    calendar = get_calendar(settings.data.calendar_overrides)
    now = now or (clock or WallClock()).now()
    today = now.astimezone(IST).date()
    if end < start:
        raise BackfillError(f"--to {end} is before --from {start}")
    if end > today:
        raise BackfillError(f"{end} is in the future (today is {today} IST); nothing enqueued")
    plan = BackfillPlan()
    for offset in range((end - start).days + 1):
        day = start + dt.timedelta(days=offset)
        if calendar.session(day) is None:
            plan.skipped_days.append((day, "no market session (weekend or holiday)"))
            continue
        plan.days.append(day)
    if not plan.days:
        what = f"{start}" if start == end else f"{start} .. {end}"
        raise BackfillError(f"{what}: no market session (weekend or holiday); see `optask calendar`; nothing enqueued")
    last_done = floor_minute(now).isoformat()  # today: only minutes that have passed
    for day in plan.days:
        per_index = []
        for index in indices:
            minutes = (missing_from_stores(index, day, settings) if only_missing else
                       [m.isoformat() for m in calendar.session_minutes(day)])
            minutes = [m for m in minutes if m < last_done]
            per_index.append([Chunk(index, day, tuple(minutes[i:i + CHUNK_MINUTES]))
                              for i in range(0, len(minutes), CHUNK_MINUTES)])
        # one index after another, round after round: workers side by side write different files (no waiting on
        # each other's locks), and each index's minutes still arrive in order
        plan.chunks += [c for rnd in itertools.zip_longest(*per_index) for c in rnd if c is not None]
    return plan


def maintenance_workers(client, timeout: float = 1.0) -> list[str]:
    """Workers that consume the maintenance queue (Celery remote control), by hostname."""
    queues = client.control.inspect(timeout=timeout).active_queues() or {}
    return [host for host, qs in queues.items() if any(q.get("name") == MAINTENANCE_QUEUE for q in qs)]


Progress = Callable[[str, int], None]  # (index, minutes just finished)


def run_here(plan: BackfillPlan, settings: Settings | None = None, on_progress: Progress | None = None) -> list[dict]:
    """Run every chunk in this process (no worker consumes the maintenance queue, or `--here`)."""
    settings = settings or get_settings()
    results = []
    for chunk in plan.chunks:
        results.append(store_minutes(chunk.index, list(chunk.minutes), settings=settings))
        if on_progress:
            on_progress(chunk.index, len(chunk.minutes))
    return results


def enqueue(plan: BackfillPlan, client) -> list[tuple[Chunk, object]]:
    """Send every chunk as `tasks.backfill_minutes` to the maintenance queue; (chunk, AsyncResult) pairs."""
    return [(chunk, client.send_task("tasks.backfill_minutes", args=(chunk.index, list(chunk.minutes)),
                                     queue=MAINTENANCE_QUEUE)) for chunk in plan.chunks]


def wait(sent: list[tuple[Chunk, object]], on_progress: Progress | None = None, timeout_s: float = 3600.0,
         poll_s: float = 0.1) -> list[dict]:
    """Until every chunk has finished (or failed): results in order; a failed chunk is {"error": ...}."""
    pending = dict(enumerate(sent))
    results: dict[int, dict] = {}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for i, (chunk, res) in list(pending.items()):
            if not res.ready():
                continue
            try:
                results[i] = res.get(propagate=True, timeout=5)
            except Exception as exc:  # noqa: BLE001 - a failed chunk is reported, the others go on
                results[i] = {"index": chunk.index, "day": chunk.day.isoformat(), "error": f"{type(exc).__name__}: {exc}"}
            del pending[i]
            if on_progress:
                on_progress(chunk.index, len(chunk.minutes))
        if pending:
            time.sleep(poll_s)
    for i, (chunk, _) in pending.items():
        results[i] = {"index": chunk.index, "day": chunk.day.isoformat(), "error": f"not finished within {timeout_s:.0f}s"}
    return [results[i] for i in sorted(results)]


@dataclass
class BackfillOutcome:
    """What a backfill did, counted from its chunks' results: the line a person reads and the exit status."""

    results: list[dict]

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.results if "error" in r]

    def total(self, key: str) -> int:
        return sum(r.get(key, 0) for r in self.results)

    @property
    def exit_code(self) -> int:
        """2 a chunk failed, 1 minutes unavailable from every source, else 0."""
        return 2 if self.errors else (1 if self.total("unavailable") else 0)

    def line(self) -> str:
        return (f"stored {self.total('stored'):,} minutes ({self.total('from_archive'):,} from the raw archive, "
                f"{self.total('from_history'):,} from the provider's history); {self.total('unavailable'):,} "
                f"unavailable; {len(self.errors)} failed tasks")


def finish(plan: BackfillPlan, settings: Settings | None = None) -> None:
    """Fold the rebuilt minutes into their day files, as end of day does."""
    settings = settings or get_settings()
    for index, day in {(c.index, c.day) for c in plan.chunks}:
        compact_day(index, day, settings=settings)
