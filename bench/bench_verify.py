"""End-of-day verification and backfill on a full-universe day (6 indices, ATM +/- 50, every expiry kind,
375 minutes), through the real stores.

1. verify_day of the compacted day: median and min-max of REPEATS runs (goal < 3 s), and its peak RSS in a
   fresh process (VmHWM, the imports included; goal < 300 MB).
2. Backfill of the whole day from the raw archive with 2 worker processes on the maintenance queue, the
   stores emptied first (goal < 10 s); against it, the same work in this one process (`--here`).

Run: .venv/bin/python bench/bench_verify.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import DAY, FULL_ATM, INDICES, REPEATS, machine, record  # noqa: E402


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


PEAK_PROBE = """
import datetime as dt, sys
from optask.core.config import get_settings
from optask.quality.verify import verify_day
hwm = lambda: next(int(x.split()[1]) / 1024 for x in open("/proc/self/status") if x.startswith("VmHWM"))
base = hwm()
verify_day(dt.date.fromisoformat(sys.argv[1]), settings=get_settings())
print(base, hwm())
"""


def verify_peak_mb() -> tuple[float, float]:
    """(after imports, peak) RSS of a fresh process verifying the day, MB: what a worker child adds."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, DAY.isoformat()], capture_output=True, text=True,
                         check=True, env=os.environ)
    base, peak = map(float, out.stdout.split())
    return base, peak


def empty_stores(root: Path, client) -> None:
    """Everything but the raw archive: the backfill must rebuild it all."""
    for sub in ("parquet", "csv_data", "reports"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for key in client.scan_iter("optask:*"):
        client.delete(key)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="optask-bench-verify-"))
    from optask.infra.redis_server import RedisServer

    server = RedisServer(work / "redis").start()
    os.environ.update(BASE_DATA_DIR=str(work / "data"), REDIS_URL=server.url, OPTASK_STRIKES_AROUND_ATM=str(FULL_ATM),
                      OPTASK_INDICES=",".join(INDICES))
    from optask.core.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    import redis

    from optask.infra.celery_client import celery_client
    from optask.jobs.backfill import plan_backfill, run_here
    from optask.jobs.batch import store_minutes
    from optask.ops.stack import Stack, wait_for_workers
    from optask.quality.verify import verify_day
    from optask.storage.sinks import compact_day

    client = redis.Redis.from_url(server.url)
    print(f"machine: {machine()}")
    try:
        minutes = None
        t0 = time.perf_counter()
        for index in INDICES:  # build the day once: simulated venue -> raw archive -> Parquet and CSV
            from optask.core.calendar import MarketCalendar

            minutes = [m.isoformat() for m in MarketCalendar().session_minutes(DAY)]
            store_minutes(index, minutes, settings=settings)
            compact_day(index, DAY, settings, client)
        print(f"built the day in {time.perf_counter() - t0:.1f} s")
        runs, rows = [], 0
        for _ in range(REPEATS):
            t = time.perf_counter()
            r = verify_day(DAY, settings=settings)
            runs.append(time.perf_counter() - t)
        peaks = [verify_peak_mb() for _ in range(REPEATS)]
        print(f"verify_day peak RSS in a fresh process: median {statistics.median(p for _, p in peaks):.0f} MB "
              f"(min {min(p for _, p in peaks):.0f}, max {max(p for _, p in peaks):.0f}; the imports alone "
              f"{statistics.median(b for b, _ in peaks):.0f} MB); goal < 300 MB")
        legs = sum(i.completeness["parquet.legs"].present for i in r.indices.values())
        rows = sum(len(i.legs_per_minute) and sum(i.legs_per_minute.values()) for i in r.indices.values())
        print(f"verify_day, full universe ({rows:,} legs per store in {legs:,} index-minutes), {r.overall_status} "
              f"{r.score}: {spread(runs)}; {2 * rows / statistics.median(runs) / 1e6:.2f}M "
              f"leg rows/s (Parquet + CSV); goal < 3 s: {statistics.median(runs) / 3:.2f}x of the budget")

        plan = plan_backfill(list(INDICES), DAY, DAY, settings=settings)
        here_runs, worker_runs = [], []
        for _ in range(REPEATS):
            empty_stores(settings.data.root, client)
            t = time.perf_counter()
            run_here(plan, settings)
            here_runs.append(time.perf_counter() - t)
        stack = Stack(settings, server.url, settings.data.root)
        try:
            stack.start_worker("worker-maintenance", concurrency=2, queues=["maintenance"])
            app = celery_client(settings, server.url)
            wait_for_workers(app)
            from optask.jobs.backfill import enqueue, wait

            for _ in range(REPEATS):
                empty_stores(settings.data.root, client)
                t = time.perf_counter()
                results = wait(enqueue(plan, app))
                worker_runs.append(time.perf_counter() - t)
                assert all("error" not in x for x in results), results
                assert sum(x["stored"] for x in results) == len(INDICES) * len(minutes)
            app.close()
        finally:
            stack.stop()
        for index in INDICES:
            compact_day(index, DAY, settings, client)
        check = verify_day(DAY, settings=settings)
        total = len(INDICES) * len(minutes)
        print(f"backfill of the day from the raw archive ({total:,} index-minutes, {len(plan.chunks)} chunks):")
        print(f"  2 worker processes on the maintenance queue: {spread(worker_runs)}; "
              f"{total / statistics.median(worker_runs):.0f} index-minutes/s; goal < 10 s")
        print(f"  baseline, one process here (--here): {spread(here_runs)}; "
              f"speed-up {statistics.median(here_runs) / statistics.median(worker_runs):.2f}x")
        print(f"  after the backfill: {check.overall_status} {check.score}")
        record("verify_day, a full-universe day (Parquet + CSV)", "s", runs, goal=("ours", "<", 3.0))
        record("verify_day peak RSS, a full-universe day, fresh process", "MB", [p for _, p in peaks],
               goal=("ours", "<", 300.0), note="imports included")
        record("backfill of a full-universe day, 2 maintenance workers", "s", worker_runs, goal=("ours", "<", 10.0),
               baseline=here_runs, baseline_name="the same work in one process (--here)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
