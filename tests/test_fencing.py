"""Fenced writers (issue 18, item 1): a writer whose lock expired while its renewals failed must not commit.

Two writers on one file, against the test Redis: writer A's renewals fail (a Redis blip, an AOF stall) and
its fsync is slow, so its lock expires and writer B takes it and writes. Before the fence, A then committed
anyway: its CSV sidecar listed rows the file no longer had, and its compaction unlinked the minute file B
had just replaced. Now A's commit checks the lock's token in Redis first and abandons with LockLost.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from optask.core.calendar import MarketCalendar
from optask.core.config import load_settings
from optask.infra import coordination
from optask.infra.coordination import LockLost
from optask.pipeline import process_snapshot
from optask.providers.simulated import SimulatedProvider
from optask.quality.verify import verify_index
from optask.storage.csv import CsvStore, Sidecar
from optask.storage.parquet import ParquetStore
from optask.storage.sinks import write_minute

DAY = dt.date(2026, 11, 23)
MINUTES = [m.to_pydatetime() for m in MarketCalendar().session_minutes(DAY)]
LOCK_S = 1.0  # A's lock expires a second after its last renewal
SLOW_S = 2.5  # A's fsync takes longer than that


def minute(i: int):
    return process_snapshot(SimulatedProvider(strikes_around_atm=3).snapshot("NIFTY", MINUTES[i]), 0.065, 0.0)


@pytest.fixture
def blip(monkeypatch):
    """Renewals fail, and fsync is slow, in thread "A" only (B and the checks talk to Redis normally)."""
    def renew(lock):
        if threading.current_thread().name.startswith("A"):
            raise redis.ConnectionError("Redis blipped (test)")
        return lock.reacquire()

    real_fsync = os.fsync

    def slow_fsync(fd):
        if threading.current_thread().name == "A":
            time.sleep(SLOW_S)
        return real_fsync(fd)

    monkeypatch.setattr(coordination, "_renew", renew)
    monkeypatch.setattr(os, "fsync", slow_fsync)


def run_as_a(fn) -> list[BaseException]:
    errors: list[BaseException] = []

    def body():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            errors.append(exc)

    thread = threading.Thread(target=body, name="A")
    thread.start()
    return errors, thread


def test_csv_writer_that_lost_its_lock_does_not_replace_the_sidecar(redis_url, isolated_settings, blip):
    settings = load_settings()
    client = redis.Redis.from_url(redis_url)
    lost_before = int(client.hget("optask:metrics:lock_renewals_lost", "csv") or 0)
    write_minute(minute(0), settings, client)  # minute 0 in every table of both stores
    a = CsvStore(settings.data.csv_root, client, lock_timeout_s=LOCK_S)
    b = CsvStore(settings.data.csv_root, client, lock_timeout_s=LOCK_S)
    m1, m2 = minute(1), minute(2)
    errors, thread = run_as_a(lambda: a.append_minute("legs", "NIFTY", MINUTES[1], m1.legs))
    time.sleep(0.3)  # A holds the lock and sits in its slow fsync
    b.append_minute("legs", "NIFTY", MINUTES[2], m2.legs)  # waits for A's lock to expire, then writes
    thread.join(30)
    path = b.path("legs", "NIFTY", DAY)
    meta = Sidecar.load(path)
    assert meta.minutes == [MINUTES[0].isoformat(), MINUTES[2].isoformat()]  # B's sidecar, not A's
    assert b.read_day("legs", "NIFTY", DAY).num_rows == meta.rows == minute(0).legs.num_rows + m2.legs.num_rows
    assert int(client.hget("optask:metrics:lock_renewals_lost", "csv") or 0) > lost_before  # counted
    assert len(errors) == 1 and isinstance(errors[0], LockLost), errors  # retryable: the task tries again
    # A's task retries (the whole minute, as a redelivery does); then every store holds minutes 0-2
    write_minute(m1, settings, client)
    write_minute(m2, settings, client)
    expected = MarketCalendar().session_minutes(DAY)[:3].as_unit("ns")
    found = verify_index("NIFTY", DAY, settings, expected).findings
    assert found == [] or all(f.kind in ("stale_quote", "iv_outlier", "missing_legs") for f in found), \
        [(f.kind, f.reason) for f in found]


def test_compaction_that_lost_its_lock_unlinks_nothing(redis_url, isolated_settings, blip):
    client = redis.Redis.from_url(redis_url)
    root = isolated_settings / "parquet"
    a = ParquetStore(root, redis=client, lock_timeout_s=LOCK_S)
    b = ParquetStore(root, redis=client, lock_timeout_s=LOCK_S)
    for i in range(3):
        b.write_minutes("summary", "NIFTY", [(MINUTES[i], minute(i).summary)])
    repaired = minute(1).summary
    repaired = repaired.set_column(repaired.column_names.index("spot"), "spot",
                                   pc.add(repaired["spot"], pa.scalar(1.0)))  # a better copy of minute 1

    def slow_compact():
        a.compact_locked("summary", "NIFTY", DAY)

    import optask.storage.parquet as parquet_module

    real = parquet_module.fsync_path

    def slow_fsync_path(path):
        if threading.current_thread().name == "A":
            time.sleep(SLOW_S)
        return real(path)

    parquet_module.fsync_path = slow_fsync_path
    try:
        errors, thread = run_as_a(slow_compact)
        time.sleep(0.3)
        b.write_minutes("summary", "NIFTY", [(MINUTES[1], repaired)])  # after A's lock expired
        thread.join(30)
    finally:
        parquet_module.fsync_path = real
    day = b.read_table("summary", "NIFTY", DAY)
    spot = dict(zip([t.isoformat() for t in day["ts"].to_pylist()], day["spot"].to_pylist(), strict=True))
    assert spot[MINUTES[1].isoformat()] == repaired["spot"][0].as_py()  # B's minute survived A's compaction
    assert day.num_rows == 3 * repaired.num_rows
    assert len(errors) == 1 and isinstance(errors[0], LockLost), errors
    assert not list(b.day_dir("summary", "NIFTY", DAY).glob(".*.tmp"))
    assert b.compact_locked("summary", "NIFTY", DAY) is not None  # the next compaction completes it
    assert b.read_table("summary", "NIFTY", DAY).num_rows == 3 * repaired.num_rows
