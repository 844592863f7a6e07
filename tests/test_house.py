"""What the move to a layered package mended on the way (issue 17), each against real servers."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time

import pyarrow as pa
import pytest
import redis
from typer.testing import CliRunner

from optask.core.calendar import MarketCalendar
from optask.core.config import get_settings
from optask.infra.queues import EOD_SOFT_LIMIT_S, FALLBACK_QUEUE, MINUTE_SOFT_LIMIT_S, queue_names
from optask.pipeline import process_snapshot
from optask.providers.base import TemporaryProviderError
from optask.providers.kite import KiteProvider
from optask.providers.kite.client import RATE_LIMIT_RETRIES
from optask.providers.kite.provider import HISTORY_BUDGET_S, MINUTE_BUDGET_S
from optask.providers.simulated import SimulatedProvider

DAY = dt.date(2026, 11, 23)
TS = MarketCalendar().session_minutes(DAY)[15].to_pydatetime()


def kite(server, tmp_path, timeout_s: float = 7.0) -> KiteProvider:
    return KiteProvider("api-key", "access-token", server.url, tmp_path / "kite", None, strikes_around_atm=50,
                        quote_rate_per_s=50.0, backoff_s=0.05, timeout_s=timeout_s)


# --- one retry layer: the provider retries only a 429, briefly, inside its task's budget -----------

def test_a_429_is_retried_briefly_then_left_to_celery(kite_server, tmp_path):
    p = kite(kite_server, tmp_path)
    p.snapshot("NIFTY", TS)  # the dump and the day's first spot
    kite_server.faults.too_many_requests = 100
    before = len(kite_server.requests)
    with pytest.raises(TemporaryProviderError, match="the task is retried"):
        p.snapshot("NIFTY", TS)
    assert len(kite_server.requests) - before == RATE_LIMIT_RETRIES + 1


def test_a_fetch_never_outlives_its_budget_so_the_task_limit_never_kills_it(kite_server, tmp_path):
    """A slow venue: every call takes 0.3 s, a whole minute needs 6 calls. With a 1 s budget the fetch gives
    up (Temporary, for Celery to retry) before an attempt could run past the budget."""
    p = kite(kite_server, tmp_path, timeout_s=0.5)
    p.fetch_minute(["NIFTY"], TS)  # dump and spots, unhurried
    kite_server.faults.slow_s = 0.3
    started = time.monotonic()
    with pytest.raises(TemporaryProviderError, match="no time left"), p.client.budget(1.0):
        p.fetch_minute(["NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY", "SENSEX", "BANKEX"], TS)
    assert time.monotonic() - started <= 1.0 + 0.1
    # the budgets the provider gives itself: an attempt that starts can finish before the task's soft limit
    assert MINUTE_BUDGET_S < MINUTE_SOFT_LIMIT_S and HISTORY_BUDGET_S < EOD_SOFT_LIMIT_S


# --- the fallback queue is watched and exported ------------------------------------------------------

def test_the_fallback_queue_is_checked_by_health_and_exported(isolated_settings, redis_url, monkeypatch):
    from prometheus_client import CollectorRegistry, generate_latest

    from optask.ops.health import evaluate, measure
    from optask.ops.metrics import OptaskCollector

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("OPTASK_INDICES", "NIFTY")
    get_settings.cache_clear()
    settings = get_settings()
    assert FALLBACK_QUEUE in queue_names(settings)
    client = redis.Redis.from_url(redis_url)
    client.delete(FALLBACK_QUEUE)
    client.lpush(FALLBACK_QUEUE, json.dumps({"headers": {"sent_at": time.time() - 700}}))
    try:
        checks = {c.name: c for c in evaluate(measure(settings, worker_timeout_s=0.2), settings)}
        fallback = checks[f"broker.{FALLBACK_QUEUE}"]
        assert fallback.status == "CRIT" and fallback.value == 1 and "oldest 70" in fallback.reason
        registry = CollectorRegistry()
        registry.register(OptaskCollector(settings, client))
        text = generate_latest(registry).decode()
        assert f'optask_queue_depth{{queue="{FALLBACK_QUEUE}"}} 1.0' in text
        assert f'optask_queue_oldest_age_seconds{{queue="{FALLBACK_QUEUE}"}}' in text
    finally:
        client.delete(FALLBACK_QUEUE)


# --- settings the seed's .env has: each does something, or says it does nothing -----------------------

def test_config_says_which_settings_are_accepted_and_ignored(isolated_settings):
    run = [sys.executable, "-m", "optask.cli", "config"]
    quiet = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and "accepted and ignored" not in quiet.stderr
    env = {"PROCESSING_BATCH_SIZE": "500", "KITE_API_SECRET": "s3cret-value", "PATH": "/usr/bin:/bin"}
    loud = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env)
    assert loud.returncode == 0, loud.stderr
    lines = [ln for ln in loud.stderr.splitlines() if "accepted and ignored" in ln]
    assert [ln.split()[1] for ln in lines] == ["PROCESSING_BATCH_SIZE"], loud.stderr  # the secret is used now
    assert "s3cret-value" not in loud.stdout + loud.stderr


def test_debug_logs_at_debug_level_everywhere(isolated_settings, monkeypatch):
    import logging

    from optask.cli import app
    from optask.ops.stack import Stack

    monkeypatch.setenv("DEBUG", "true")
    get_settings.cache_clear()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        assert CliRunner().invoke(app, ["calendar", "--from", "2026-11-24", "--to", "2026-11-24"]).exit_code == 0
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    assert Stack(get_settings(), "redis://127.0.0.1:1/0", isolated_settings).loglevel == "DEBUG"
    monkeypatch.setenv("DEBUG", "false")
    get_settings.cache_clear()
    assert Stack(get_settings(), "redis://127.0.0.1:1/0", isolated_settings).loglevel == "INFO"


def _one_minute() -> object:
    return process_snapshot(SimulatedProvider(strikes_around_atm=2, calendar=MarketCalendar()).snapshot("NIFTY", TS))


def test_enable_incremental_and_memory_mapping_do_what_they_say(isolated_settings, redis_url, monkeypatch):
    from optask.storage.parquet import ParquetStore

    minute = _one_minute()
    client = redis.Redis.from_url(redis_url)
    for incremental, second_read in (("true", 0), ("false", minute.legs.num_rows)):
        monkeypatch.setenv("ENABLE_INCREMENTAL", incremental)
        monkeypatch.setenv("USE_MEMORY_MAPPING", "false")
        get_settings.cache_clear()
        store = ParquetStore.from_settings(get_settings(), client)
        assert store.memory_map is False
        store.write_minutes("legs", "NIFTY", [(TS, minute.legs)])
        consumer = f"reader-{incremental}"
        assert store.read_new(client, consumer, "legs", "NIFTY", DAY).num_rows == minute.legs.num_rows
        assert store.read_new(client, consumer, "legs", "NIFTY", DAY).num_rows == second_read


# --- one store interface ---------------------------------------------------------------------------

def test_every_store_speaks_the_one_interface(isolated_settings, redis_url):
    from optask.storage.sinks import stores

    minute = _one_minute()
    client = redis.Redis.from_url(redis_url)
    for store in stores(get_settings(), client):
        for table in ("legs", "merged", "summary"):
            rows = getattr(minute, table)
            assert store.write_minutes(table, "NIFTY", [(TS, rows)]) == rows.num_rows
            assert store.minutes_present(table, "NIFTY", DAY) == {TS.isoformat()}
            assert store.read_day(table, "NIFTY", DAY).num_rows == rows.num_rows
            assert store.write_minutes(table, "NIFTY", [(TS, rows)]) in (0, rows.num_rows)  # a retry adds nothing
            assert store.read_day(table, "NIFTY", DAY).num_rows == rows.num_rows
        assert isinstance(store.read_day("legs", "NIFTY", DAY), pa.Table)
