"""Where a backfill's time goes, stage by stage: a full-universe day rebuilt from the raw archive in this one
process (`run_here`), then compacted and verified. Not part of `make bench` (no goal): a profile to read
before and after a change to the batch path.

Each stage is timed by wrapping the function that does it (a thread-safe sum, so the two store writers of a
batch, which run side by side, are each counted in full): reading the archive (file, gunzip, envelope),
decoding payloads, processing, each store's write, the ledger, the stores' own view of what they hold.

Run: .venv/bin/python bench/stages.py            (builds the day's raw archive first, about 15 s)
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DAY, FULL_ATM, INDICES, machine  # noqa: E402

SPENT: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
_LOCK = threading.Lock()


def timed(stage: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _LOCK:
                SPENT[stage] += time.perf_counter() - start
                CALLS[stage] += 1
    return wrapper


def wrap(owner, name: str, stage: str) -> None:
    if hasattr(owner, name):
        setattr(owner, name, timed(stage, getattr(owner, name)))


def instrument() -> None:
    from optask.infra.ledger import Ledger
    from optask.jobs import batch
    from optask.providers import replay
    from optask.storage.csv import CsvStore
    from optask.storage.parquet import ParquetStore

    wrap(replay, "read_raw", "read archive (file, gunzip, envelope)")
    wrap(replay, "parse_record", "decode payloads")
    wrap(batch, "process_snapshots", "process")
    wrap(batch, "process_snapshot", "process")
    wrap(ParquetStore, "write_minutes", "write Parquet")
    original = CsvStore.append_minutes
    CsvStore.append_minutes = CsvStore.write_minutes = timed("write CSV", original)
    for name in ("mark_stored", "mark_stored_many", "stored_minutes"):
        wrap(Ledger, name, "ledger (Redis)")
    wrap(batch, "present_minutes", "what the stores hold")


def main() -> None:
    from optask.infra.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="optask-stages-"))
    server = RedisServer(work / "redis").start()
    os.environ.update(BASE_DATA_DIR=str(work / "data"), REDIS_URL=server.url, OPTASK_STRIKES_AROUND_ATM=str(FULL_ATM),
                      OPTASK_INDICES=",".join(INDICES), LEDGER_RETENTION_DAYS="3650")
    try:
        from optask.core.calendar import MarketCalendar
        from optask.core.config import get_settings
        from optask.providers.simulated import SimulatedProvider
        from optask.storage.archive import write_raw

        settings = get_settings()
        venue = SimulatedProvider(strikes_around_atm=FULL_ATM)
        for m in MarketCalendar().session_minutes(DAY):
            for index in INDICES:
                snap = venue.snapshot(index, m.to_pydatetime())
                write_raw(settings.data.raw_root, index, snap.ts, snap.provider, snap.raw)
        from optask.jobs.backfill import plan_backfill, run_here
        from optask.quality.verify import verify_day
        from optask.storage.sinks import compact_day

        instrument()
        plan = plan_backfill(list(INDICES), DAY, DAY, settings=settings)
        start = time.perf_counter()
        run_here(plan, settings)
        wall = time.perf_counter() - start
        t = time.perf_counter()
        for index in INDICES:
            compact_day(index, DAY, settings)
        SPENT["compaction (after)"], CALLS["compaction (after)"] = time.perf_counter() - t, len(INDICES)
        t = time.perf_counter()
        verify_day(DAY, settings=settings)
        SPENT["verification (after)"], CALLS["verification (after)"] = time.perf_counter() - t, 1
        print(f"machine: {machine()}; backfill of a full-universe day, one process: {wall:.2f} s wall "
              f"({plan.total:,} index-minutes in {len(plan.chunks)} chunks)")
        print("| stage | seconds | share of the backfill's wall time | calls |\n|---|---|---|---|")
        for stage, spent in SPENT.items():
            share = f"{spent / wall:.0%}" if "(after)" not in stage else "-"
            print(f"| {stage} | {spent:.2f} | {share} | {CALLS[stage]:,} |")
        inside = sum(v for k, v in SPENT.items() if "(after)" not in k)
        print(f"| rest (plans, splitting, threads, Python) | {max(wall - inside, 0):.2f} | "
              f"{max(wall - inside, 0) / wall:.0%} | - |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
