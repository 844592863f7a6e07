"""The Celery pipeline: tick-to-stored latency (p50, p99) for the full universe with 2 worker processes,
and replay throughput through the real broker and worker in full-universe minutes per second.

Goals: p99 < 2 s; replay >= 20 full-universe minutes/s.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).parent))
from _common import DAY, FULL_ATM, INDICES, machine  # noqa: E402

LIVE_MINUTES = int(os.environ.get("BENCH_MINUTES", "30"))


def main() -> None:
    os.environ["OPTASK_STRIKES_AROUND_ATM"] = str(FULL_ATM)
    from optask.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    from optask.demo import run_demo
    from optask.ledger import Ledger
    from optask.services import RedisServer
    from optask.stack import Stack, celery_client, wait_for_workers

    work = Path(tempfile.mkdtemp(prefix="optask-bench-pipeline-"))
    print(f"machine: {machine()}")
    # 1. live-like: one minute per second of wall time, so the workers are never behind by design
    summary = run_demo(settings, work / "live", minutes=LIVE_MINUTES, speed=60.0, indices=list(INDICES), day=DAY,
                       workers=2)
    p50, p99 = summary.latency_quantiles()
    print(f"tick -> stored, full universe ({len(INDICES)} indices, ATM +/- {FULL_ATM}, {summary.legs:,} legs in "
          f"{summary.minutes} minutes), 2 worker processes: p50 {p50:.0f} ms, p99 {p99:.0f} ms (goal p99 < 2000 ms); "
          f"stored {summary.stored}, missed {summary.missed}")
    # 2. replay the archived minutes through the broker and worker as fast as they go
    server = RedisServer(work / "replay-redis").start()
    stack = Stack(settings, server.url, work / "replay", extra_env={
        "OPTASK_PROVIDER": "replay", "JSON_SNAPSHOTS_ROOT": str(work / "live" / "raw_snapshots"),
        "OPTASK_INDICES": ",".join(INDICES)})
    try:
        stack.start_worker(concurrency=2)
        client = celery_client(settings, server.url)
        wait_for_workers(client)
        from optask.calendar import MarketCalendar

        mins = [m.isoformat() for m in MarketCalendar().session_minutes(DAY)[:LIVE_MINUTES]]
        ledger = Ledger(redis.Redis.from_url(server.url))
        start = time.perf_counter()
        for ts in mins:
            client.send_task("tasks.collect_minute", args=(ts,), queue="optask")
        want = {(i, ts) for i in INDICES for ts in mins}
        hashes = [f"optask:stored:{i}:{DAY.isoformat()}" for i in INDICES]

        def stored() -> int:  # one cheap round trip, so the bench steals little CPU from the workers
            pipe = ledger.redis.pipeline()
            for h in hashes:
                pipe.hlen(h)
            return sum(pipe.execute())

        while time.perf_counter() - start < 600 and stored() < len(want):
            time.sleep(0.1)
        took = time.perf_counter() - start
        done = sum(ledger.is_stored(i, ts) for i, ts in want)
        print(f"replay through broker + 2 workers: {len(mins)} full-universe minutes in {took:.1f} s = "
              f"{len(mins) / took:.2f} minutes/s (goal >= 20); {done}/{len(want)} index-minutes stored")
    finally:
        stack.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
