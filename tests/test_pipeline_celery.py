"""The Celery pipeline end to end: real Redis, real worker processes, real stores (DESIGN section 5)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import psutil
import pytest
import redis

from optask.calendar import MarketCalendar
from optask.config import get_settings, load_settings
from optask.ledger import Ledger
from optask.stack import Stack, celery_client, wait_for_workers

DAY = dt.date(2026, 11, 23)
MINUTES = [m.isoformat() for m in MarketCalendar().session_minutes(DAY)]
INDICES = ["NIFTY", "BANKNIFTY"]


@pytest.fixture
def pipeline_env(monkeypatch, isolated_settings, victoria_metrics):
    env = {
        "OPTASK_INDICES": ",".join(INDICES), "OPTASK_STRIKES_AROUND_ATM": "5", "OPTASK_PROVIDER": "simulated",
        "INFLUXDB_URL": victoria_metrics.url, "INFLUXDB_TOKEN": "test-token", "INFLUXDB_ORG": "optask",
        "INFLUXDB_BUCKET": "options",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    return env


def start_stack(redis_url, root, env, workers=1, **worker_env):
    settings = load_settings()
    stack = Stack(settings, redis_url, root, extra_env=env)
    stack.start_worker(concurrency=workers, **worker_env)
    client = celery_client(settings, redis_url)
    wait_for_workers(client)
    return stack, client


def wait_stored(ledger: Ledger, pairs, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(ledger.is_stored(i, ts) for i, ts in pairs):
            return
        time.sleep(0.2)
    missing = [(i, ts) for i, ts in pairs if not ledger.is_stored(i, ts)]
    raise AssertionError(f"not stored within {timeout}s: {missing[:5]} ...")


def expected_legs(settings, index, ts):
    from optask.pipeline import process_snapshot
    from optask.providers.simulated import SimulatedProvider
    from optask.timeutils import parse_minute

    snap = SimulatedProvider.from_settings(settings).snapshot(index, parse_minute(ts))
    return process_snapshot(snap).legs.num_rows


def store_rows(settings, index):
    from optask.storage.sinks import count_day_rows

    return count_day_rows(settings.data.root, [index], DAY, key_check=True)


def test_five_minutes_through_the_worker(redis_url, pipeline_env, isolated_settings, victoria_metrics):
    stack, client = start_stack(redis_url, isolated_settings, pipeline_env, workers=2)
    try:
        for ts in MINUTES[:5]:
            client.send_task("tasks.collect_minute", args=(ts,), queue="optask")
        ledger = Ledger(redis.Redis.from_url(redis_url))
        wait_stored(ledger, [(i, ts) for i in INDICES for ts in MINUTES[:5]])
    finally:
        stack.stop()
    settings = load_settings()
    for index in INDICES:
        want = sum(expected_legs(settings, index, ts) for ts in MINUTES[:5])
        rows = store_rows(settings, index)
        assert rows["parquet.legs"] == rows["csv.legs"] == want
        assert rows["parquet.summary"] == 5 * len(settings.market.expiry_kinds) or rows["parquet.summary"] > 0
        points = victoria_metrics.export(f'{{__name__=~"option_leg_.*",index="{index}"}}')
        ltp_points = sum(len(s["values"]) for s in points if s["metric"]["__name__"] == "option_leg_ltp")
        assert ltp_points == want


def test_retried_minute_changes_nothing(redis_url, pipeline_env, isolated_settings):
    from optask.collector import store_minute

    settings = load_settings()
    ts = MINUTES[10]
    store_minute("NIFTY", ts, settings=settings)
    before = store_rows(settings, "NIFTY")
    redis.Redis.from_url(redis_url).delete(f"optask:stored:NIFTY:{DAY}")  # forget it was stored: a redelivery
    store_minute("NIFTY", ts, settings=settings)
    assert store_rows(settings, "NIFTY") == before


def _busy_child(worker: psutil.Process, timeout=30.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in worker.children():
            if child.cpu_percent(0.05) > 0 or child.status() == psutil.STATUS_SLEEPING:
                return child
    raise AssertionError("no busy worker child")


def test_sigkill_worker_mid_minute(redis_url, pipeline_env, isolated_settings):
    """The pool child dies mid-minute: the task is requeued (reject_on_worker_lost) and completes once."""
    slow_env = {**pipeline_env, "OPTASK_SIM_SLOW_S": "3"}
    stack, client = start_stack(redis_url, isolated_settings, slow_env, workers=1)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    ts = MINUTES[20]
    try:
        client.send_task("tasks.process_index", args=("NIFTY", ts), queue="process.NIFTY")
        time.sleep(1.5)  # inside the slow snapshot
        worker = psutil.Process(stack.procs["worker"].pid)
        children = worker.children()
        assert children, "prefork pool has a child"
        for child in children:
            os.kill(child.pid, signal.SIGKILL)
        wait_stored(ledger, [("NIFTY", ts)], timeout=60)
    finally:
        stack.stop()
    settings = load_settings()
    assert store_rows(settings, "NIFTY")["parquet.legs"] == expected_legs(settings, "NIFTY", ts)


def test_worker_process_killed_whole(redis_url, pipeline_env, isolated_settings):
    """The whole worker is SIGKILLed mid-minute: after a restart the unacked minute is redelivered."""
    slow_env = {**pipeline_env, "OPTASK_SIM_SLOW_S": "3", "CELERY_VISIBILITY_TIMEOUT_S": "5"}
    stack, client = start_stack(redis_url, isolated_settings, slow_env, workers=1)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    ts = MINUTES[21]
    try:
        client.send_task("tasks.process_index", args=("NIFTY", ts), queue="process.NIFTY")
        time.sleep(1.5)
        os.killpg(stack.procs["worker"].pid, signal.SIGKILL)
        stack.procs["worker"].wait(10)
        assert not ledger.is_stored("NIFTY", ts)
        stack.procs.clear()
        stack.start_worker(concurrency=1)
        wait_stored(ledger, [("NIFTY", ts)], timeout=60)
    finally:
        stack.stop()
    settings = load_settings()
    assert store_rows(settings, "NIFTY")["parquet.legs"] == expected_legs(settings, "NIFTY", ts)
