"""Celery configuration, routing, beat schedule and the minute plan (real Redis)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from optask.core.config import load_settings
from optask.infra.events import EventStream
from optask.infra.ledger import Ledger
from optask.jobs.minute import plan_minute
from tasks.celeryconfig import celery_config, route_task


def test_reliability_settings(redis_url):
    conf = celery_config(load_settings(), redis_url)
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    vt = conf["broker_transport_options"]["visibility_timeout"]
    assert vt == conf["result_backend_transport_options"]["visibility_timeout"]
    from tasks.celeryconfig import EOD_HARD_LIMIT_S

    assert vt > EOD_HARD_LIMIT_S > conf["task_time_limit"] > conf["task_soft_time_limit"]
    assert conf["worker_max_memory_per_child"] == load_settings().service.max_memory_usage_mb * 1024
    assert conf["broker_connection_retry_on_startup"]
    queues = {q.name for q in conf["task_queues"]}
    assert {"optask", "maintenance", "process.NIFTY", "process.BANKEX"} <= queues


def test_routing_per_index():
    assert route_task("tasks.process_index", ("BANKNIFTY", "2026-11-23T03:45:00+00:00"), {}, {}) == {
        "queue": "process.BANKNIFTY"}
    assert route_task("tasks.process_index", (), {"index": "SENSEX", "ts": "x"}, {}) == {"queue": "process.SENSEX"}
    assert route_task("tasks.collect_minute", ("x",), {}, {}) is None
    # catch-up work never waits behind (or in front of) live minutes
    assert route_task("tasks.backfill_minutes", ("NIFTY", ["x"]), {}, {}) == {"queue": "maintenance"}
    assert route_task("tasks.end_of_day", ("2026-11-23",), {}, {}) == {"queue": "maintenance"}


def test_app_uses_json_and_registers_tasks(redis_url):
    from tasks import app

    assert app.conf.task_serializer == "json"
    assert {"tasks.collect_minute", "tasks.process_index", "tasks.end_of_day"} <= set(app.tasks)
    assert app.tasks["tasks.process_index"].acks_late


def test_a_pool_process_takes_jemalloc_and_warms_up_before_its_first_task(redis_url):
    """What worker_process_init runs in each new pool process, in a process of its own (the pool is global)."""
    code = ("import pyarrow as pa\nfrom tasks.application import warm_up_process\nwarm_up_process()\n"
            "print(pa.default_memory_pool().backend_name, pa.default_memory_pool().max_memory())")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert "warm-up failed" not in done.stderr
    pool, peak = done.stdout.split()
    assert pool == ("jemalloc" if "jemalloc" in pa.supported_memory_backends() else pa.default_memory_pool().backend_name)
    assert int(peak) > 0  # the warm-up ran through the pool it took


def test_beat_schedule_fires_every_minute_with_expiry():
    import beat_schedule

    entry = beat_schedule.BEAT_SCHEDULE["collect-minute"]
    assert entry["options"]["expires"] < 60
    # a crontab every minute of every day: the calendar, not mon-fri, decides
    sched = entry["schedule"]
    assert sched.day_of_week == set(range(7)) and len(sched.minute) == 60 and len(sched.hour) == 24
    assert beat_schedule.TIMEZONE == "Asia/Kolkata"


def test_beat_stamps_the_minute(monkeypatch):
    from optask.infra.session_clock import current_minute_iso

    monkeypatch.setenv("OPTASK_SIMULATED_SESSION_DAY", "2025-10-21")
    from optask.core.config import get_settings

    get_settings.cache_clear()
    assert current_minute_iso() == "2025-10-21T08:15:00+00:00"  # Muhurat open, 13:45 IST


@pytest.mark.parametrize(
    ("ts", "reason"),
    [("2026-01-26T05:00:00+00:00", "outside session"),  # Republic Day
     ("2026-11-23T02:00:00+00:00", "outside session"),  # before the open
     ("2026-11-22T05:00:00+00:00", "outside session")],  # Sunday
)
def test_plan_outside_session(redis_url, ts, reason):
    plan = plan_minute(ts, settings=load_settings())
    assert plan.indices == [] and plan.reason == reason


def test_plan_claims_each_minute_once(redis_url):
    settings = load_settings()
    ts = "2026-11-23T03:45:00+00:00"
    first = plan_minute(ts, settings=settings)
    second = plan_minute(ts, settings=settings)
    assert first.indices == list(settings.market.indices)
    assert second.indices == [] and "already claimed" in second.reason
    last = plan_minute("2026-11-23T09:59:00+00:00", settings=settings)
    assert last.last_of_session and not first.last_of_session


def test_a_redelivered_collect_minute_finishes_what_its_first_delivery_claimed(redis_url):
    """Before: the claim was taken before the fetch and fan-out, so a redelivery (the worker killed) or a retry
    found it taken and did nothing: the minute waited for repair's history candles."""
    from optask.jobs.minute import mark_dispatched

    settings = load_settings()
    ts = "2026-11-23T03:50:00+00:00"
    first = plan_minute(ts, settings=settings, owner="task-1")
    assert first.indices and not first.resumed
    again = plan_minute(ts, settings=settings, owner="task-1")  # the same task, delivered again
    assert again.indices == first.indices and again.resumed
    other = plan_minute(ts, settings=settings, owner="task-2")  # a second beat's tick of the minute
    assert other.indices == [] and "already claimed" in other.reason
    mark_dispatched(ts, settings)
    done = plan_minute(ts, settings=settings, owner="task-1")  # redelivered after its fan-out: nothing to do
    assert done.indices == [] and done.reason == "already dispatched"


def test_plan_sunday_special_session(redis_url, isolated_settings):
    import json

    (isolated_settings).mkdir(parents=True, exist_ok=True)
    (isolated_settings / "calendar_overrides.json").write_text(
        json.dumps({"sessions": [{"date": "2026-11-08", "open": "18:00", "close": "19:15"}]}))
    plan = plan_minute("2026-11-08T12:30:00+00:00", settings=load_settings())
    assert plan.indices and plan.day == "2026-11-08"


def test_ledger_stored_and_missed(redis_url):
    import redis

    ledger = Ledger(redis.Redis.from_url(redis_url))
    ts = "2026-11-23T03:46:00+00:00"
    ledger.mark_missed("NIFTY", ts, "expired in queue")
    assert ledger.missed("NIFTY", dt.date(2026, 11, 23)) == {ts: "expired in queue"}
    ledger.mark_stored("NIFTY", ts, legs=10, stages_ms={})
    assert ledger.missed("NIFTY", dt.date(2026, 11, 23)) == {}
    assert ledger.is_stored("NIFTY", ts) and ledger.last_stored("NIFTY") == ts
    ledger.mark_missed("NIFTY", ts, "late duplicate")  # a stored minute is never marked missed
    assert ledger.missed("NIFTY", dt.date(2026, 11, 23)) == {}
    events = EventStream(ledger.redis).read("0", block_ms=10)
    assert events and events[-1][1]["ts"] == ts
