"""`optask demo`: an accelerated simulated session through the real broker, worker, tasks and stores.

A private Redis and data folder keep the demo apart from the operator's data: its worker writes
only under the demo's root, whatever CSV_DATA_ROOT, JSON_SNAPSHOTS_ROOT or INFLUXDB_URL say. The demo plays
beat itself: it sends `collect_minute(ts)` for each session minute at `speed` x real time,
waits until every (index, minute) is stored or recorded as missed, runs end of day, and
returns what landed where. With `--serve`, the API then serves what was collected (serve_demo).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from optask.core.calendar import get_calendar
from optask.core.clock import WallClock
from optask.core.config import Settings
from optask.infra.celery_client import celery_client
from optask.infra.events import EventStream
from optask.infra.ledger import Ledger
from optask.infra.procutil import die_with_parent
from optask.infra.queues import DEFAULT_QUEUE, TICK_EXPIRES_S
from optask.infra.redis_client import connect
from optask.infra.redis_server import RedisServer
from optask.ops.stack import Stack, wait_for_workers
from optask.storage.sinks import count_day_rows


@dataclass
class DemoSummary:
    day: dt.date
    minutes: int
    indices: list[str]
    stored: int = 0
    missed: int = 0
    legs: int = 0
    wall_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    completeness: dict = field(default_factory=dict)
    data_root: Path | None = None

    def latency_quantiles(self) -> tuple[float, float]:
        if not self.latency_ms:
            return (float("nan"), float("nan"))
        arr = np.asarray(self.latency_ms)
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def latest_session_day(settings: Settings) -> dt.date:
    """The most recent day with a session that has already closed (a whole day to replay)."""
    return get_calendar(settings.data.calendar_overrides).last_closed_session(WallClock().now())


def demo_env(indices: list[str]) -> dict[str, str]:
    """The worker's environment: simulated, and every store under the demo's own root, whatever the
    operator's environment or .env says (an empty root setting means "under BASE_DATA_DIR"; no InfluxDB)."""
    return {"OPTASK_PROVIDER": "simulated", "OPTASK_INDICES": ",".join(indices), "CSV_DATA_ROOT": "",
            "JSON_SNAPSHOTS_ROOT": "", "INFLUXDB_URL": "", "OPTASK_SIM_OUTAGE_FILE": "", "OPTASK_SIM_SLOW_S": "0"}


def run_demo(
    settings: Settings, data_root: Path, minutes: int | None = None, speed: float = 300.0,
    indices: list[str] | None = None, day: dt.date | None = None, workers: int | None = None,
    on_minute: Callable[[str, int, int], None] | None = None, timeout_s: float = 600.0,
    redis_url: str | None = None,
) -> DemoSummary:
    """Play the session; on a Redis of its own under the data root unless `redis_url` is given (a bench whose API
    follows the same ledger)."""
    indices = indices or list(settings.market.indices)
    day = day or latest_session_day(settings)
    all_minutes = get_calendar(settings.data.calendar_overrides).session_minutes(day)
    if len(all_minutes) == 0:
        raise ValueError(f"{day} has no session; pick a trading day")
    session_minutes = [m.isoformat() for m in all_minutes[: minutes or len(all_minutes)]]
    data_root.mkdir(parents=True, exist_ok=True)
    redis_server = None if redis_url else RedisServer(data_root / "redis").start()
    url = redis_url or redis_server.url
    stack = Stack(settings, url, data_root, extra_env=demo_env(indices))
    summary = DemoSummary(day=day, minutes=len(session_minutes), indices=indices, data_root=data_root)
    try:
        stack.start_worker(concurrency=workers or settings.service.processing_max_workers)
        client = celery_client(settings, url)
        wait_for_workers(client)
        ledger = Ledger(connect(url))
        expected = {(i, ts) for i in indices for ts in session_minutes}
        sent_at: dict[str, float] = {}
        t0 = time.time()
        last_id = "0"
        done: set[tuple[str, str]] = set()
        i = 0
        deadline = t0 + timeout_s
        while len(done) < len(expected) and time.time() < deadline:
            # Send every minute that is due on the accelerated clock.
            while i < len(session_minutes) and time.time() >= t0 + i * 60.0 / speed:
                ts = session_minutes[i]
                sent_at[ts] = time.time()
                client.send_task("tasks.collect_minute", args=(ts,), queue=DEFAULT_QUEUE, expires=TICK_EXPIRES_S)
                i += 1
            for event_id, ev in EventStream(ledger.redis).read(last_id, block_ms=50):
                last_id = event_id
                key = (ev["index"], ev["ts"])
                if key in expected and key not in done:
                    done.add(key)
                    summary.legs += int(ev["legs"])
                    summary.latency_ms.append((float(ev["stored_at"]) - sent_at.get(ev["ts"], t0)) * 1000)
                    if on_minute:
                        on_minute(ev["ts"], len(done), len(expected))
            if i >= len(session_minutes):  # all sent: stop once every minute is stored or recorded missed
                missed = sum(len(ledger.missed(idx, day)) for idx in indices)
                if len(done) + missed >= len(expected):
                    break
        summary.stored = len(done)
        summary.missed = sum(len(ledger.missed(idx, day)) for idx in indices)
        # a partial session is verified as it is, not repaired into a whole day behind the viewer's back
        result = client.send_task("tasks.end_of_day", args=(day.isoformat(), len(session_minutes) == len(all_minutes)))
        summary.completeness = result.get(timeout=300)
        summary.wall_s = time.time() - t0
        summary.rows = count_day_rows(data_root, indices, day)
    finally:
        stack.stop()
        if redis_server is not None:
            redis_server.stop()
    return summary



def serve_demo(settings: Settings, data_root: Path, indices: list[str], say: Callable[[str], None]) -> int:
    """`optask serve` on the demo's data and its own Redis (the demo's AOF: the minutes just stored), with a token
    made for the newcomer, until Ctrl-C or SIGTERM; returns the server's exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env |= demo_env(indices) | {"BASE_DATA_DIR": str(data_root)}
    cli = [sys.executable, "-m", "optask.cli"]
    made = subprocess.run([*cli, "api", "token", "create", f"demo-{int(time.time())}"], env=env, capture_output=True,
                          text=True, timeout=120)
    if made.returncode != 0:
        say(f"error: cannot make a token for the demo's API: {made.stderr.strip()[-300:]}")
        return 2
    api = settings.api
    say(f"Page:    http://{api.host}:{api.port}/   token (made for this demo): {made.stdout.strip().splitlines()[-1]}")
    server = subprocess.Popen([*cli, "serve"], env=env, preexec_fn=die_with_parent())
    previous = signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
    try:
        return server.wait()
    except KeyboardInterrupt:  # the server got the terminal's SIGINT too
        return server.wait(30)
    finally:
        signal.signal(signal.SIGTERM, previous)
