"""The Celery pipeline end to end: real Redis, real worker processes, real stores (DESIGN section 5)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import psutil
import pytest
import redis

from optask.core.calendar import MarketCalendar
from optask.core.config import get_settings, load_settings
from optask.infra.celery_client import celery_client
from optask.infra.events import EventStream
from optask.infra.ledger import Ledger
from optask.ops.stack import Stack, wait_for_workers

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
    from optask.core.timeutils import parse_minute
    from optask.pipeline import process_snapshot
    from optask.providers.simulated import SimulatedProvider

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
        client.close()  # no broker connections left in the pytest process for later forks
    settings = load_settings()
    for index in INDICES:
        want = sum(expected_legs(settings, index, ts) for ts in MINUTES[:5])
        rows = store_rows(settings, index)
        assert rows["parquet.legs"] == rows["csv.legs"] == want
        assert rows["parquet.summary"] == 5 * len(settings.market.expiry_kinds) or rows["parquet.summary"] > 0
        points = victoria_metrics.export(f'{{__name__=~"option_leg_.*",index="{index}"}}')
        ltp_points = sum(len(s["values"]) for s in points if s["metric"]["__name__"] == "option_leg_ltp")
        assert ltp_points == want


def snapshot_files(root) -> dict[str, tuple[str, int]]:
    import hashlib

    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and "redis" not in p.parts and "influx_spool" not in p.parts}


def test_retried_minute_changes_no_file(redis_url, pipeline_env, isolated_settings, monkeypatch):
    from optask.jobs.minute import store_minute

    monkeypatch.delenv("INFLUXDB_URL")
    get_settings.cache_clear()
    settings = load_settings()
    ts = MINUTES[10]
    store_minute("NIFTY", ts, settings=settings)
    before = snapshot_files(isolated_settings)
    rows = store_rows(settings, "NIFTY")
    redis.Redis.from_url(redis_url).delete(f"optask:stored:NIFTY:{DAY}")  # forget it was stored: a redelivery
    store_minute("NIFTY", ts, settings=settings)
    assert store_rows(settings, "NIFTY") == rows
    assert snapshot_files(isolated_settings) == before  # not a byte, not even an mtime


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
        client.close()  # no broker connections left in the pytest process for later forks
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
        client.close()  # no broker connections left in the pytest process for later forks
    settings = load_settings()
    assert store_rows(settings, "NIFTY")["parquet.legs"] == expected_legs(settings, "NIFTY", ts)


def events_per_key(ledger: Ledger) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for _, ev in EventStream(ledger.redis).read("0", block_ms=10, count=100_000):
        key = (ev["index"], ev["ts"])
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_two_beats_produce_each_minute_once(redis_url, pipeline_env, isolated_settings):
    env = {**pipeline_env, "OPTASK_SIMULATED_SESSION_DAY": DAY.isoformat(), "OPTASK_SIMULATED_SESSION_SPEED": "30"}
    stack, client = start_stack(redis_url, isolated_settings, env, workers=2)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    try:
        stack.start_beat("beat1")
        stack.start_beat("beat2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(events_per_key(ledger)) < 4 * len(INDICES):
            time.sleep(0.5)
        stack.procs.pop("beat1").terminate()
        stack.procs.pop("beat2").terminate()
        time.sleep(3)  # let the last fan-out finish
    finally:
        stack.stop()
        client.close()  # no broker connections left in the pytest process for later forks
    counts = events_per_key(ledger)
    assert len(counts) >= 4 * len(INDICES), counts
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    ticks = sum((isolated_settings / "logs" / f"{b}.log").read_text().count("collect-minute") for b in ("beat1", "beat2"))
    assert ticks >= 2 * (len(counts) // len(INDICES)) - 2  # both beats really ticked the same minutes
    settings = load_settings()
    for index in INDICES:
        store_rows(settings, index)  # raises on any duplicate key


def test_redis_restart_mid_session(pipeline_env, isolated_settings, tmp_path_factory, monkeypatch):
    """The bundled Redis (AOF) restarts mid-session: the worker reconnects by itself and nothing stored is lost."""
    from optask.infra.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis-restart")).start()
    monkeypatch.setenv("REDIS_URL", server.url)
    get_settings.cache_clear()
    stack, client = start_stack(server.url, isolated_settings, pipeline_env, workers=1)
    try:
        ledger = Ledger(redis.Redis.from_url(server.url))
        for ts in MINUTES[30:32]:
            client.send_task("tasks.collect_minute", args=(ts,), queue="optask")
        wait_stored(ledger, [(i, ts) for i in INDICES for ts in MINUTES[30:32]])
        server.stop()  # SIGTERM: Redis flushes its AOF
        time.sleep(2)
        server.start()  # same port, same AOF
        for ts in MINUTES[32:34]:
            for _attempt in range(50):
                try:
                    client.send_task("tasks.collect_minute", args=(ts,), queue="optask")
                    break
                except Exception:  # noqa: BLE001 - the client reconnects too
                    time.sleep(0.2)
        ledger = Ledger(redis.Redis.from_url(server.url))
        wait_stored(ledger, [(i, ts) for i in INDICES for ts in MINUTES[30:34]], timeout=90)
        assert stack.alive()["worker"]
    finally:
        stack.stop()
        client.close()  # no broker connections left in the pytest process for later forks
        server.stop()
    settings = load_settings()
    minutes = {t.isoformat() for t in __import__("optask.storage.sinks", fromlist=["x"]).stored_minutes(
        "NIFTY", DAY, settings)}
    assert set(MINUTES[30:34]) <= minutes


def test_provider_outage_then_recovery(redis_url, pipeline_env, isolated_settings):
    """The venue is down for a while: minutes are retried with backoff and complete when it is back."""
    flag = isolated_settings / "venue-down"
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    env = {**pipeline_env, "OPTASK_SIM_OUTAGE_FILE": str(flag)}
    stack, client = start_stack(redis_url, isolated_settings, env, workers=2)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    try:
        for ts in MINUTES[40:42]:
            client.send_task("tasks.collect_minute", args=(ts,), queue="optask")
        time.sleep(4)
        assert not any(ledger.is_stored(i, ts) for i in INDICES for ts in MINUTES[40:42])
        flag.unlink()
        wait_stored(ledger, [(i, ts) for i in INDICES for ts in MINUTES[40:42]], timeout=90)
    finally:
        stack.stop()
        client.close()  # no broker connections left in the pytest process for later forks
    assert ledger.missed("NIFTY", DAY) == {}


def test_unrecoverable_and_expired_minutes_are_recorded_for_backfill(redis_url, pipeline_env, isolated_settings):
    stack, client = start_stack(redis_url, isolated_settings, pipeline_env, workers=1)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    closed = "2026-11-23T11:00:00+00:00"  # 16:30 IST: after the close, the provider refuses (permanent)
    stale = MINUTES[50]
    try:
        client.send_task("tasks.process_index", args=("NIFTY", closed), queue="process.NIFTY")
        client.send_task("tasks.process_index", args=("NIFTY", stale), queue="process.NIFTY",
                         expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(ledger.missed("NIFTY", DAY)) < 2:
            time.sleep(0.2)
    finally:
        stack.stop()
        client.close()  # no broker connections left in the pytest process for later forks
    missed = ledger.missed("NIFTY", DAY)
    assert "outside a market session" in missed.get(closed, "")
    assert missed.get(stale) == "expired in queue"


def test_backfill_batch_through_the_worker_matches_live(redis_url, pipeline_env, isolated_settings):
    """A batch of minutes rebuilt by history() lands exactly like the same minutes collected live."""
    stack, client = start_stack(redis_url, isolated_settings, pipeline_env, workers=1)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    batch = MINUTES[60:70]
    try:
        client.send_task("tasks.process_index", args=("NIFTY", batch[0]), queue="process.NIFTY")
        wait_stored(ledger, [("NIFTY", batch[0])])
        client.send_task("tasks.backfill_minutes", args=("NIFTY", batch), queue="process.NIFTY")
        wait_stored(ledger, [("NIFTY", ts) for ts in batch])
    finally:
        stack.stop()
        client.close()  # no broker connections left in the pytest process for later forks
    settings = load_settings()
    rows = store_rows(settings, "NIFTY")  # raises on a duplicate key
    assert rows["parquet.legs"] == rows["csv.legs"] == sum(expected_legs(settings, "NIFTY", ts) for ts in batch)
    from optask.storage.parquet import ParquetStore

    legs = ParquetStore(settings.data.parquet_root).read_table("legs", "NIFTY", DAY)
    assert set(legs["source"].to_pylist()) == {"simulated", "backfill"}


def test_a_task_with_a_path_in_its_arguments_is_refused_and_writes_nothing(redis_url, pipeline_env, isolated_settings):
    """Before: an `index` of `../../x` reached raw_path and the store paths, writing outside the data root."""
    from optask.core.timeutils import parse_minute
    from optask.jobs.arguments import InvalidTaskArgument
    from optask.jobs.minute import store_minute
    from optask.providers.simulated import SimulatedProvider
    from optask.storage.archive import raw_path, write_raw

    settings = load_settings()
    outside = isolated_settings.parent
    # Before the fix the index went into raw_path unchecked: a payload planted outside the data root was read
    # as the archive of that minute and stored as if NIFTY had sent it.
    ts = parse_minute(MINUTES[30])
    snap = SimulatedProvider.from_settings(settings).snapshot("NIFTY", ts)
    planted = write_raw(outside / "planted", "NIFTY", ts, snap.provider, snap.raw)
    escape = "../../planted/NIFTY"
    assert raw_path(settings.data.raw_root, escape, ts).resolve() == planted.resolve()
    before = {p for p in outside.rglob("*")}
    with pytest.raises(InvalidTaskArgument, match="OPTASK_INDICES"):
        store_minute(escape, MINUTES[30])
    assert not (isolated_settings / "parquet").exists()  # nothing read from outside, nothing written
    stack, client = start_stack(redis_url, isolated_settings, pipeline_env, workers=1)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    try:
        client.send_task("tasks.process_index", args=("../../escape", MINUTES[30]), queue="process.NIFTY")
        client.send_task("tasks.process_index", args=("NIFTY", "../../2026-11-23"), queue="process.NIFTY")
        bad_day = client.send_task("tasks.end_of_day", args=("../../../tmp",), queue="process.NIFTY")
        bad_batch = client.send_task("tasks.backfill_minutes", args=("NIFTY/../../x", [MINUTES[31]]),
                                     queue="process.NIFTY")
        client.send_task("tasks.process_index", args=("NIFTY", MINUTES[32]), queue="process.NIFTY")
        wait_stored(ledger, [("NIFTY", MINUTES[32])], timeout=60)  # after the bad ones: the worker carried on
        for result in (bad_day, bad_batch):
            with pytest.raises(Exception, match="is not"):
                result.get(timeout=30)
    finally:
        stack.stop()
        client.close()
    created = {p for p in outside.rglob("*")} - before
    assert not [p for p in created if "escape" in str(p) or not str(p).startswith(str(isolated_settings))], created
    assert not ledger.missed("NIFTY", DAY)  # nothing recorded for repair either: not a minute optask sent
    failures = redis.Redis.from_url(redis_url).hgetall("optask:metrics:failures")
    assert int(failures.get(b"InvalidTaskArgument", 0)) >= 3, failures


def test_a_task_whose_process_dies_every_time_is_parked_not_run_forever(redis_url, pipeline_env, isolated_settings):
    """Before: acks_late + reject_on_worker_lost brought an always-dying task back without end."""
    from optask.infra.deliveries import MAX_DELIVERIES, parked
    from optask.ops.health.checks import CRIT, check_parked

    slow_env = {**pipeline_env, "OPTASK_SIM_SLOW_S": "4"}
    stack, client = start_stack(redis_url, isolated_settings, slow_env, workers=1)
    r = redis.Redis.from_url(redis_url)
    r.delete("optask:parked")
    ledger = Ledger(r)
    ts = MINUTES[40]
    try:
        task_id = client.send_task("tasks.process_index", args=("NIFTY", ts), queue="process.NIFTY").id
        for n in range(1, MAX_DELIVERIES + 1):  # an OOM kill on every delivery
            deadline = time.monotonic() + 30
            while int(r.get(f"optask:deliveries:{task_id}:0") or 0) < n:
                assert time.monotonic() < deadline, f"delivery {n} never came"
                time.sleep(0.1)
            time.sleep(0.5)  # inside the slow snapshot
            for child in psutil.Process(stack.procs["worker"].pid).children():
                os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not parked(r):
            assert time.monotonic() < deadline, "never parked"
            time.sleep(0.2)
        time.sleep(2)
        assert int(r.get(f"optask:deliveries:{task_id}:0")) == MAX_DELIVERIES + 1  # not a fifth time
    finally:
        stack.stop()
        client.close()
    entry = parked(r)[0]
    assert entry["task"] == "tasks.process_index" and entry["args"] == ["NIFTY", ts] and entry["id"] == task_id
    assert not ledger.is_stored("NIFTY", ts)
    check = check_parked(parked(r))
    assert check.status == CRIT and "process_index" in check.reason and "run it again" in check.reason


def test_worker_killed_inside_a_slow_live_fetch_stores_the_minute_live_on_redelivery(
        redis_url, isolated_settings, kite_server):
    """SIGKILL the whole worker while collect_minute waits on the venue: the redelivered task finds the minute
    claimed by itself, not dispatched, and finishes it from the live fetch (source live), not by repair."""
    from optask.storage.parquet import ParquetStore

    ts = kite_server.minute
    env = {"OPTASK_PROVIDER": "kite", "KITE_ROOT_URL": kite_server.url, "KITE_API_KEY": "api-key",
           "KITE_ACCESS_TOKEN": "access-token", "KITE_FETCH": "minute", "OPTASK_INDICES": "NIFTY",
           "OPTASK_STRIKES_AROUND_ATM": "3", "CELERY_VISIBILITY_TIMEOUT_S": "5"}  # no beat: no repair runs
    kite_server.faults.slow_s = 2.0  # each call to the venue takes 2 s
    stack, client = start_stack(redis_url, isolated_settings, env, workers=1)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    try:
        calls = len(kite_server.requests)
        client.send_task("tasks.collect_minute", args=(ts.isoformat(),), queue="optask")
        deadline = time.monotonic() + 20
        while len(kite_server.requests) == calls:  # the fetch has begun
            assert time.monotonic() < deadline, "collect_minute never called the venue"
            time.sleep(0.05)
        os.killpg(stack.procs["worker"].pid, signal.SIGKILL)
        stack.procs["worker"].wait(10)
        assert not ledger.is_stored("NIFTY", ts.isoformat())
        kite_server.faults.slow_s = 0.0
        stack.procs.clear()
        stack.start_worker(concurrency=1)
        wait_stored(ledger, [("NIFTY", ts.isoformat())], timeout=60)
    finally:
        kite_server.faults.slow_s = 0.0
        stack.stop()
        client.close()
    legs = ParquetStore(load_settings().data.parquet_root).read_table("legs", "NIFTY", ts.date())
    assert legs.num_rows and set(legs["source"].to_pylist()) == {"live"}, set(legs["source"].to_pylist())  # not backfill
