"""Stores: idempotent, atomic, single-writer, incremental; crash and full-disk faults with real processes."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import resource
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from optask.core.calendar import MarketCalendar
from optask.core.schema import LEG_KEY
from optask.infra.fsutil import StorageError
from optask.pipeline import process_snapshot
from optask.providers.simulated import SimulatedProvider
from optask.storage.archive import maintain, read_raw, write_raw
from optask.storage.csv import CsvStore, Sidecar, get_consolidated_writer
from optask.storage.parquet import ParquetStore

DAY = dt.date(2026, 11, 23)
MINUTES = [m.to_pydatetime() for m in MarketCalendar().session_minutes(DAY)]
SIM = SimulatedProvider(strikes_around_atm=3)


def minute(i: int, index: str = "NIFTY"):
    return process_snapshot(SIM.snapshot(index, MINUTES[i]), 0.065, 0.0)


def unique_keys(table: pa.Table, keys=LEG_KEY) -> int:
    return table.group_by(list(keys)).aggregate([]).num_rows


# --- Parquet -------------------------------------------------------------------------------------

def test_parquet_minute_rewrite_replaces(tmp_path):
    store = ParquetStore(tmp_path)
    a = minute(0)
    store.write_minute("legs", "NIFTY", MINUTES[0], a.legs)
    store.write_minute("legs", "NIFTY", MINUTES[0], a.legs)
    store.write_minute("legs", "NIFTY", MINUTES[1], minute(1).legs)
    t = store.read_table("legs", "NIFTY", DAY)
    assert t.num_rows == unique_keys(t) == a.legs.num_rows + minute(1).legs.num_rows
    assert str(t["ts"].type) == "timestamp[ns, tz=UTC]"
    since = store.read_table("legs", "NIFTY", DAY, columns=["strike", "ltp"], since=MINUTES[1])
    assert since.column_names == ["strike", "ltp"] and since.num_rows == minute(1).legs.num_rows


def test_parquet_compact_then_repair_never_duplicates(tmp_path):
    store = ParquetStore(tmp_path)
    for i in range(3):
        store.write_minute("legs", "NIFTY", MINUTES[2 - i], minute(2 - i).legs)  # out of order
    before = store.read_table("legs", "NIFTY", DAY)
    store.compact("legs", "NIFTY", DAY)
    files = sorted(p.name for p in store.day_dir("legs", "NIFTY", DAY).iterdir())
    assert files == ["day.parquet"]
    after = store.read_table("legs", "NIFTY", DAY)
    assert after.num_rows == before.num_rows
    ts = after["ts"].to_pylist()
    assert ts == sorted(ts)
    fixed = minute(1).legs
    fixed = fixed.set_column(fixed.column_names.index("ltp"), "ltp", pc.add(fixed["ltp"], 1.0))
    store.write_minute("legs", "NIFTY", MINUTES[1], fixed)  # a repair after compaction
    repaired = store.read_table("legs", "NIFTY", DAY)
    assert repaired.num_rows == before.num_rows == unique_keys(repaired)
    store.compact("legs", "NIFTY", DAY)
    final = store.read_table("legs", "NIFTY", DAY)
    assert final.num_rows == before.num_rows
    got = final.filter(pc.equal(final["ts"], pa.scalar(MINUTES[1], final["ts"].type)))["ltp"].to_pylist()
    assert sorted(got) == sorted(fixed["ltp"].to_pylist())


def test_parquet_opens_in_duckdb_and_pandas(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    import pandas as pd

    store = ParquetStore(tmp_path)
    path = store.write_minute("legs", "NIFTY", MINUTES[0], minute(0).legs)
    store.write_minute("legs", "SENSEX", MINUTES[0], minute(0, "SENSEX").legs)
    n = duckdb.sql(f"select count(*), count(distinct index) from read_parquet('{tmp_path}/legs/*/*/*.parquet', "
                   "hive_partitioning=true)").fetchall()[0]
    assert n[0] == minute(0).legs.num_rows + minute(0, "SENSEX").legs.num_rows and n[1] == 2
    assert len(pd.read_parquet(path)) == minute(0).legs.num_rows


def test_parquet_read_new_incremental(tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    store = ParquetStore(tmp_path)
    store.write_minute("legs", "NIFTY", MINUTES[0], minute(0).legs)
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == minute(0).legs.num_rows
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == 0
    store.write_minute("legs", "NIFTY", MINUTES[1], minute(1).legs)
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == minute(1).legs.num_rows
    store.compact("legs", "NIFTY", DAY)
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == 0  # same rows, folded
    assert store.read_new(client, "late", "legs", "NIFTY", DAY).num_rows == 2 * minute(0).legs.num_rows
    everything = store.read_new(client, "c", "legs", "NIFTY", DAY, incremental=False)
    assert everything.num_rows == minute(0).legs.num_rows + minute(1).legs.num_rows


def _with_ltp(table: pa.Table, add: float) -> pa.Table:
    return table.set_column(table.column_names.index("ltp"), "ltp", pc.add(table["ltp"], add))


def _ltp_at(table: pa.Table, i: int) -> list[float]:
    return sorted(table.filter(pc.equal(table["ts"], pa.scalar(MINUTES[i], table["ts"].type)))["ltp"].to_pylist())


def test_parquet_batch_writes_one_file_and_each_minute_comes_from_one_file(tmp_path, redis_url):
    store = ParquetStore(tmp_path, redis=redis.Redis.from_url(redis_url))
    legs = {i: minute(i).legs for i in range(6)}
    store.write_minute("legs", "NIFTY", MINUTES[1], legs[1])  # a live minute before the backfill
    assert store.write_minutes("legs", "NIFTY", [(MINUTES[i], legs[i]) for i in (0, 2, 3)]) > 0
    names = sorted(p.name for p in store.day_dir("legs", "NIFTY", DAY).iterdir())
    assert names[0].startswith("batch-0915-0918-") and names[1:] == ["minute-0916.parquet"]
    assert all(store.has_minute("legs", "NIFTY", MINUTES[i]) for i in range(4))
    assert not store.has_minute("legs", "NIFTY", MINUTES[4])
    # a batch holding a minute that has its own file rewrites that file (it would win over the batch)
    store.write_minutes("legs", "NIFTY", [(MINUTES[1], _with_ltp(legs[1], 1.0)), (MINUTES[4], legs[4])])
    # an overlapping batch (a repair of minute 3 with other rows): the newest batch wins, nothing doubles
    store.write_minutes("legs", "NIFTY", [(MINUTES[3], _with_ltp(legs[3], 2.0)), (MINUTES[5], legs[5])])
    t = store.read_table("legs", "NIFTY", DAY)
    assert t.num_rows == unique_keys(t) == sum(x.num_rows for x in legs.values())
    assert _ltp_at(t, 1) == sorted(_with_ltp(legs[1], 1.0)["ltp"].to_pylist())
    assert _ltp_at(t, 3) == sorted(_with_ltp(legs[3], 2.0)["ltp"].to_pylist())
    assert _ltp_at(t, 2) == sorted(legs[2]["ltp"].to_pylist())
    assert len(store.minutes("legs", "NIFTY", DAY)) == 6
    assert store.minutes_present("legs", "NIFTY", DAY) == _iso(store.minutes("legs", "NIFTY", DAY))
    since = store.read_table("legs", "NIFTY", DAY, since=MINUTES[4])  # a batch starting before `since` counts
    assert since.num_rows == legs[4].num_rows + legs[5].num_rows
    store.compact("legs", "NIFTY", DAY)
    assert sorted(p.name for p in store.day_dir("legs", "NIFTY", DAY).iterdir()) == ["day.parquet"]
    assert store.minutes_present("legs", "NIFTY", DAY) == _iso(MINUTES[:6])  # the day file, read anew
    order = [(k, "ascending") for k in ("ts", "expiry", "strike", "side")]
    assert store.read_table("legs", "NIFTY", DAY).sort_by(order).equals(t.sort_by(order))
    store.write_minutes("legs", "NIFTY", [(MINUTES[i], minute(i).legs) for i in (7, 8)])  # a late batch
    assert store.minutes_present("legs", "NIFTY", DAY) == _iso([*MINUTES[:6], MINUTES[7], MINUTES[8]])
    store.compact("legs", "NIFTY", DAY)
    assert store.minutes_present("legs", "NIFTY", DAY) == _iso([*MINUTES[:6], MINUTES[7], MINUTES[8]])


def _iso(minutes) -> set[str]:
    return {(m if isinstance(m, dt.datetime) else m.as_py()).astimezone(dt.UTC).isoformat() for m in minutes}


def _with_nan_iv(table: pa.Table) -> pa.Table:
    iv = table["iv"].to_pylist()
    iv[0] = float("nan")  # a quote no volatility reproduces: NaN, as enrich leaves it
    return table.set_column(table.column_names.index("iv"), "iv", pa.array(iv, pa.float64()))


def test_parquet_same_batch_or_minute_again_leaves_its_file_alone(tmp_path, redis_url):
    store = ParquetStore(tmp_path, redis=redis.Redis.from_url(redis_url))
    parts = [(MINUTES[i], _with_nan_iv(minute(i).legs)) for i in range(3)]
    store.write_minutes("legs", "NIFTY", parts)
    (path,) = store.day_dir("legs", "NIFTY", DAY).iterdir()
    stamp = path.stat().st_mtime_ns
    store.write_minutes("legs", "NIFTY", parts)  # a redelivered task
    assert [p.stat().st_mtime_ns for p in store.day_dir("legs", "NIFTY", DAY).iterdir()] == [stamp]
    live = _with_nan_iv(minute(5).legs)
    one = store.write_minute("legs", "NIFTY", MINUTES[5], live)
    stamp = one.stat().st_mtime_ns
    store.write_minute("legs", "NIFTY", MINUTES[5], live)  # a redelivered live minute, NaN and all
    assert one.stat().st_mtime_ns == stamp


def test_parquet_read_new_delivers_batch_minutes_once(tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    store = ParquetStore(tmp_path, redis=client)
    legs = {i: minute(i).legs for i in range(5)}
    store.write_minutes("legs", "NIFTY", [(MINUTES[i], legs[i]) for i in (0, 1, 2)])
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == sum(legs[i].num_rows for i in (0, 1, 2))
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == 0
    store.write_minute("legs", "NIFTY", MINUTES[3], legs[3])
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == legs[3].num_rows
    # a newer batch repairing minute 2, with a new minute 4: both delivered, once; minutes 0 and 1 not again
    store.write_minutes("legs", "NIFTY", [(MINUTES[2], _with_ltp(legs[2], 1.0)), (MINUTES[4], legs[4])])
    again = store.read_new(client, "c", "legs", "NIFTY", DAY)
    assert again.num_rows == legs[2].num_rows + legs[4].num_rows
    assert _ltp_at(again, 2) == sorted(_with_ltp(legs[2], 1.0)["ltp"].to_pylist())
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == 0
    store.compact("legs", "NIFTY", DAY)
    assert store.read_new(client, "c", "legs", "NIFTY", DAY).num_rows == 0  # folded: nothing new
    assert store.read_new(client, "late", "legs", "NIFTY", DAY).num_rows == sum(x.num_rows for x in legs.values())


# --- CSV ----------------------------------------------------------------------------------------

def test_csv_append_once_with_sidecar(tmp_path, redis_url):
    store = CsvStore(tmp_path, redis.Redis.from_url(redis_url))
    legs = minute(0).legs
    assert store.append_minute("legs", "NIFTY", MINUTES[0], legs) == legs.num_rows
    assert store.append_minute("legs", "NIFTY", MINUTES[0], legs) == 0  # retried minute: nothing
    path = store.path("legs", "NIFTY", DAY)
    meta = json.loads(path.with_name("legs.csv.meta.json").read_text())
    assert meta["rows"] == legs.num_rows and meta["bytes"] == path.stat().st_size
    assert meta["minutes"] == [MINUTES[0].isoformat()] and meta["last_ts"] == MINUTES[0].isoformat()
    lines = path.read_text().splitlines()
    assert lines[0].startswith('"ts","index"') and sum(1 for ln in lines if ln.startswith('"ts"')) == 1
    assert lines[1].startswith('"2026-11-23T09:15:00+05:30","NIFTY"')


def test_csv_late_minute_then_compact_sorted(tmp_path, redis_url):
    store = CsvStore(tmp_path, redis.Redis.from_url(redis_url))
    for i in (0, 2, 1):
        store.append_minute("legs", "NIFTY", MINUTES[i], minute(i).legs)
    assert not store.meta("legs", "NIFTY", DAY).sorted
    assert store.compact("legs", "NIFTY", DAY)
    day = store.read_day("legs", "NIFTY", DAY)
    ts = day["ts"].to_pylist()
    assert ts == sorted(ts) and day.num_rows == sum(minute(i).legs.num_rows for i in range(3))
    meta = store.meta("legs", "NIFTY", DAY)
    assert meta.sorted and meta.generation == 1 and meta.bytes == store.path("legs", "NIFTY", DAY).stat().st_size


def test_csv_read_new_costs_only_new_rows(tmp_path, redis_url, monkeypatch):
    client = redis.Redis.from_url(redis_url)
    store = CsvStore(tmp_path, client)
    store.append_minute("legs", "NIFTY", MINUTES[0], minute(0).legs)
    assert store.read_new("c", "legs", "NIFTY", DAY).num_rows == minute(0).legs.num_rows
    store.append_minute("legs", "NIFTY", MINUTES[2], minute(2).legs)
    store.append_minute("legs", "NIFTY", MINUTES[1], minute(1).legs)
    new = store.read_new("c", "legs", "NIFTY", DAY)
    assert new.num_rows == minute(1).legs.num_rows + minute(2).legs.num_rows
    assert store.read_new("c", "legs", "NIFTY", DAY).num_rows == 0
    store.compact("legs", "NIFTY", DAY)
    assert store.read_new("c", "legs", "NIFTY", DAY).num_rows == 0  # rewritten sorted: nothing new
    store.append_minute("legs", "NIFTY", MINUTES[3], minute(3).legs)
    assert store.read_new("c", "legs", "NIFTY", DAY).num_rows == minute(3).legs.num_rows
    # the cursor lives in Redis: a new store object (a restarted process) resumes from it
    assert CsvStore(tmp_path, client).read_new("c", "legs", "NIFTY", DAY).num_rows == 0
    assert store.read_new("c", "legs", "NIFTY", DAY, incremental=False).num_rows == sum(
        minute(i).legs.num_rows for i in range(4))


def test_seed_entry_point(redis_url, isolated_settings):
    from optask.core.config import get_settings

    writer = get_consolidated_writer(get_settings())
    snap = SIM.snapshot("NIFTY", MINUTES[5])
    out = writer.process_and_write(snap.table, write_legs=True, write_merged=True, write_json=True)
    assert out["legs_written"] == snap.table.num_rows and out["merged_written"] == snap.table.num_rows // 2
    assert out["processing_time_ms"] > 0 and out["json_written"] == snap.table.num_rows
    again = writer.process_and_write(snap.table)
    assert again["legs_written"] == 0 and again["merged_written"] == 0


# --- crashes, with real process kills -----------------------------------------------------------

def _csv_writer_killed_before_sidecar(root: str, url: str) -> None:
    store = CsvStore(Path(root), redis.Redis.from_url(url))
    Sidecar.save = lambda self, path, fence=None: os.kill(os.getpid(), signal.SIGKILL)  # die after the data, before the sidecar
    store.append_minute("legs", "NIFTY", MINUTES[1], minute(1).legs)


def _parquet_compaction_killed(root: str, at: str) -> None:
    store = ParquetStore(Path(root))
    if at == "before-rename":
        os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    else:  # after day.parquet landed, before the minute files are removed
        Path.unlink = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    store.compact("legs", "NIFTY", DAY)


def run_child(target, *args) -> int:
    proc = mp.get_context("forkserver").Process(target=target, args=args)
    proc.start()
    proc.join(60)
    return proc.exitcode


def test_csv_crash_between_data_and_sidecar(tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    store = CsvStore(tmp_path, client)
    store.append_minute("legs", "NIFTY", MINUTES[0], minute(0).legs)
    good = store.path("legs", "NIFTY", DAY).read_bytes()
    assert run_child(_csv_writer_killed_before_sidecar, str(tmp_path), redis_url) == -signal.SIGKILL
    client.delete(*client.keys("optask:lock:*") or ["none"])  # the dead writer's lock would expire; don't wait
    path = store.path("legs", "NIFTY", DAY)
    assert path.stat().st_size > len(good)  # torn tail on disk ...
    assert store.read_day("legs", "NIFTY", DAY).num_rows == minute(0).legs.num_rows  # ... invisible to readers
    assert store.append_minute("legs", "NIFTY", MINUTES[1], minute(1).legs) == minute(1).legs.num_rows
    day = store.read_day("legs", "NIFTY", DAY)
    assert day.num_rows == unique_keys(day) == minute(0).legs.num_rows + minute(1).legs.num_rows
    assert path.read_bytes().startswith(good)


@pytest.mark.parametrize("at", ["before-rename", "before-cleanup"])
def test_parquet_crash_during_compaction(tmp_path, at):
    store = ParquetStore(tmp_path)
    for i in range(3):
        store.write_minute("legs", "NIFTY", MINUTES[i], minute(i).legs)
    before = store.read_table("legs", "NIFTY", DAY)
    assert run_child(_parquet_compaction_killed, str(tmp_path), at) == -signal.SIGKILL
    mid = store.read_table("legs", "NIFTY", DAY)
    assert mid.num_rows == before.num_rows == unique_keys(mid)
    store.compact("legs", "NIFTY", DAY)  # the next run completes it
    done = store.read_table("legs", "NIFTY", DAY)
    assert done.num_rows == before.num_rows
    assert [p.name for p in store.day_dir("legs", "NIFTY", DAY).iterdir() if not p.name.startswith(".")] == ["day.parquet"]


def _overlapping_writer(root: str, url: str, worker: int) -> None:
    from optask.storage.sinks import write_minute

    class S:  # the settings the sinks read, pointing at the test's folders
        class data:
            parquet_root = Path(root) / "parquet"
            csv_root = Path(root) / "csv"

        class influx:
            enabled = False

    client = redis.Redis.from_url(url)
    for i in range(6):
        write_minute(minute((i + worker) % 6), S, client)


def test_eight_processes_one_row_per_key(tmp_path, redis_url, monkeypatch):
    import optask.storage.sinks as sinks

    monkeypatch.setattr(sinks.InfluxSink, "from_settings", classmethod(lambda cls, s: None))
    procs = [mp.get_context("forkserver").Process(target=_overlapping_writer, args=(str(tmp_path), redis_url, w))
             for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    expected = sum(minute(i).legs.num_rows for i in range(6))
    pq_legs = ParquetStore(tmp_path / "parquet").read_table("legs", "NIFTY", DAY)
    assert pq_legs.num_rows == unique_keys(pq_legs) == expected
    store = CsvStore(tmp_path / "csv")
    csv_legs = store.read_day("legs", "NIFTY", DAY)
    assert csv_legs.num_rows == expected == unique_keys(csv_legs)
    width = len(csv_legs.column_names)
    text = store.path("legs", "NIFTY", DAY).read_text().splitlines()
    assert all(line.count(",") >= width - 1 for line in text)  # no torn line
    assert len(text) == expected + 1


# --- full disk ----------------------------------------------------------------------------------

def _write_with_tiny_file_limit(root: str, url: str, queue) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
    size = Path(root, "NIFTY", DAY.isoformat(), "legs.csv").stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, size + 1000))
    store = CsvStore(Path(root), redis.Redis.from_url(url))
    try:
        store.append_minute("legs", "NIFTY", MINUTES[1], minute(1).legs)
        queue.put("stored")
    except StorageError as exc:
        queue.put(f"error: {exc}")
    try:
        write_raw(Path(root) / "raw", "NIFTY", MINUTES[1], "simulated", os.urandom(100_000).hex().encode())
        queue.put("archived")
    except StorageError as exc:
        queue.put(f"error: {exc}")


def test_full_disk_is_a_clear_error_and_damages_nothing(tmp_path, redis_url):
    store = CsvStore(tmp_path, redis.Redis.from_url(redis_url))
    store.append_minute("legs", "NIFTY", MINUTES[0], minute(0).legs)
    before = store.path("legs", "NIFTY", DAY).read_bytes()
    queue = mp.get_context("forkserver").Queue()
    assert run_child(_write_with_tiny_file_limit, str(tmp_path), redis_url, queue) == 0
    csv_result, raw_result = queue.get(timeout=5), queue.get(timeout=5)
    assert csv_result.startswith("error:") and "legs.csv" in csv_result and "free space" in csv_result
    assert raw_result.startswith("error:") and "cannot write" in raw_result
    redis.Redis.from_url(redis_url).delete(*redis.Redis.from_url(redis_url).keys("optask:lock:*") or ["none"])
    assert store.read_day("legs", "NIFTY", DAY).num_rows == minute(0).legs.num_rows
    assert store.path("legs", "NIFTY", DAY).read_bytes()[: len(before)] == before
    assert not list((tmp_path / "raw").rglob("*.json.gz"))  # the minute is not reported as archived
    assert store.append_minute("legs", "NIFTY", MINUTES[1], minute(1).legs) == minute(1).legs.num_rows


# --- raw archive --------------------------------------------------------------------------------

def test_archive_round_trip_keeps_bytes(tmp_path):
    payload = b'{"exact": "bytes", "\xff": 1}'
    path = write_raw(tmp_path, "NIFTY", MINUTES[0], "simulated", payload)
    assert path.relative_to(tmp_path).as_posix() == "NIFTY/2026-11-23/0915.json.gz"
    rec = read_raw(path)
    assert rec.payload == payload and rec.ts == MINUTES[0] and rec.provider == "simulated"


def test_archive_retention_never_drops_unverified(tmp_path):
    old = [dt.date(2026, 10, 1), dt.date(2026, 10, 2)]
    for d in old + [DAY]:
        ts = dt.datetime.combine(d, dt.time(4, 0), dt.UTC)
        write_raw(tmp_path, "NIFTY", ts, "simulated", b"{}")
    report = maintain(tmp_path, DAY, retention_days=30, compress=True,
                      verified=lambda index, day: day == old[0])
    assert report == {"packed": ["NIFTY/2026-10-01"], "deleted": [], "kept_unverified": ["NIFTY/2026-10-02"],
                      "refused": []}
    assert (tmp_path / "NIFTY" / "2026-10-01.tar").exists() and (tmp_path / "NIFTY" / "2026-10-02").is_dir()
    assert (tmp_path / "NIFTY" / DAY.isoformat()).is_dir()
    report = maintain(tmp_path, DAY, retention_days=30, compress=False, verified=lambda index, day: True)
    assert report["deleted"] == ["NIFTY/2026-10-02"]


def test_two_end_of_days_retiring_one_raw_day_leave_a_complete_tar(tmp_path, redis_url):
    """Before: a fixed temp name and no lock. Two end-of-days of one day (the 23:30 sweep, a second
    maintenance node) packed at once; one tar could replace the other half-written, or lose the files the
    other had already deleted: a partial tar left in place of a full one, the raw day gone."""
    import tarfile
    import threading

    from optask.infra.coordination import writer_lock

    old = dt.date(2026, 10, 1)
    for minute in range(300):
        ts = dt.datetime.combine(old, dt.time(3, 45), dt.UTC) + dt.timedelta(minutes=minute)
        write_raw(tmp_path, "NIFTY", ts, "simulated", b'{"payload": "%d"}' % minute * 50)
    client = redis.Redis.from_url(redis_url)
    barrier = threading.Barrier(2)

    def verified(index, day):
        barrier.wait(10)  # both runs have seen the day before either retires it
        return True

    reports, errors = [], []

    def run():
        try:
            reports.append(maintain(tmp_path, DAY, 30, True, verified, lock=lambda n: writer_lock(client, n)))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(sum((r["packed"] for r in reports), [])) == ["NIFTY/2026-10-01"]  # packed once
    with tarfile.open(tmp_path / "NIFTY" / "2026-10-01.tar") as tar:
        assert len([m for m in tar.getmembers() if m.isfile()]) == 300
    assert not (tmp_path / "NIFTY" / "2026-10-01").exists()
    assert not list((tmp_path / "NIFTY").glob(".*tmp"))


def test_a_raw_day_is_deleted_only_when_the_tar_holds_every_file(tmp_path, monkeypatch):
    from optask.storage import archive

    old = dt.date(2026, 10, 1)
    for minute in range(5):
        write_raw(tmp_path, "NIFTY", dt.datetime.combine(old, dt.time(4, minute), dt.UTC), "simulated", b"{}")
    real = archive._tar_files
    monkeypatch.setattr(archive, "_tar_files", lambda path: real(path)[:-1])  # a tar missing its last member
    report = maintain(tmp_path, DAY, 30, True, lambda index, day: True)
    assert report["refused"] == ["NIFTY/2026-10-01"] and report["packed"] == []
    assert len(list((tmp_path / "NIFTY" / "2026-10-01").iterdir())) == 5  # nothing deleted
    assert not (tmp_path / "NIFTY" / "2026-10-01.tar").exists()


def test_is_sorted_reads_the_keys_lexicographically():
    """Compaction skips its sort (a second copy of the day) only when the day already is in key order."""
    import pyarrow as pa

    from optask.storage.parquet import is_sorted

    t = pa.table({"ts": [1, 1, 2, 2], "strike": [100.0, 200.0, 100.0, 100.0], "side": ["CE", "CE", "CE", "PE"]})
    assert is_sorted(t, ["ts", "strike", "side"])
    assert not is_sorted(t, ["strike"])
    assert not is_sorted(t.take([1, 0, 2, 3]), ["ts", "strike", "side"])  # a tie in ts, out of order in strike
    assert is_sorted(t.take([1, 0, 2, 3]), ["ts"])
    assert not is_sorted(pa.table({"ts": [1, None]}), ["ts"])
