"""Nothing lost on disk (issue 32): one lock per thing protected, sidecars rebuilt and never truncated, durable
renames, swept temp files, the first payload of a minute wins, a repair never replaces a live minute, and every
stored day gets its end of day. Real Redis, real processes, real stores."""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis
from support import wait_until

from optask.core.config import get_settings, load_settings
from optask.core.schema import LEG_KEY
from optask.infra import fsutil
from optask.storage.base import TABLES

DAYS = [dt.date(2026, 11, 15), dt.date(2026, 11, 22), dt.date(2026, 11, 29)]  # Sundays: special sessions below
OPEN, CLOSE = "18:00", "18:30"
PRODUCT = Path(__file__).resolve().parents[1] / "optask"
SUPPORT = Path(__file__).resolve().parent / "support"


@pytest.fixture
def short_sessions(isolated_settings, redis_url, monkeypatch):
    """NIFTY over three 30-minute special sessions (from the overrides file), strikes ATM +/- 3."""
    isolated_settings.mkdir(parents=True, exist_ok=True)
    (isolated_settings / "calendar_overrides.json").write_text(json.dumps(
        {"sessions": [{"date": d.isoformat(), "open": OPEN, "close": CLOSE} for d in DAYS]}))
    monkeypatch.setenv("OPTASK_INDICES", "NIFTY")
    monkeypatch.setenv("OPTASK_STRIKES_AROUND_ATM", "3")
    monkeypatch.setenv("OPTASK_PROVIDER", "simulated")
    get_settings.cache_clear()
    return load_settings()


def session_minutes(settings, day: dt.date) -> list[dt.datetime]:
    from optask.core.calendar import get_calendar

    return [m.to_pydatetime() for m in get_calendar(settings.data.calendar_overrides).session_minutes(day)]


def unique_keys(table: pa.Table, keys=LEG_KEY) -> int:
    return table.group_by(list(keys)).aggregate([]).num_rows


def verify(settings, day: dt.date):
    from optask.quality.verify import verify_day

    return verify_day(day, ["NIFTY"], settings)


# --- 1. one lock per thing protected, whatever path reaches it ---------------------------------------------------

def _writer_by_one_spelling(root: str, url: str, overrides: str, minutes: list[str], go: float) -> None:
    """Store `minutes` into Parquet and CSV under `root` (one spelling of a data root), as a second host would."""
    from optask.core.calendar import get_calendar
    from optask.pipeline import process_snapshot
    from optask.providers.simulated import SimulatedProvider
    from optask.storage.csv import CsvStore
    from optask.storage.parquet import ParquetStore

    client = redis.Redis.from_url(url)
    sim = SimulatedProvider(strikes_around_atm=3, calendar=get_calendar(Path(overrides)))
    stores = [ParquetStore(Path(root) / "parquet", redis=client), CsvStore(Path(root) / "csv_data", client)]
    todo = [(ts, process_snapshot(sim.snapshot("NIFTY", ts))) for ts in map(dt.datetime.fromisoformat, minutes)]
    time.sleep(max(0.0, go - time.time()))  # both writers start together
    for ts, processed in todo:
        for store in stores:
            for name in TABLES:
                store.write_minutes(name, "NIFTY", [(ts, getattr(processed, name))])


def test_two_writers_reaching_one_root_by_two_spellings_lose_no_minute(short_sessions, redis_url, tmp_path):
    """Before: the CSV lock was named after the absolute path, so a symlink (or a second machine's mount point)
    took a second lock and two appends interleaved: minutes reported written were not there."""
    settings = short_sessions
    real = settings.data.root
    link = tmp_path / "same-root-by-another-name"
    link.symlink_to(real, target_is_directory=True)
    day = DAYS[0]
    minutes = [m.isoformat() for m in session_minutes(settings, day)]
    ctx = mp.get_context("forkserver")
    go = time.time() + 3.0
    procs = [ctx.Process(target=_writer_by_one_spelling,
                         args=(str(root), redis_url, str(settings.data.calendar_overrides), minutes[k::2], go))
             for k, root in enumerate((real, link))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    from optask.storage.csv import CsvStore
    from optask.storage.sinks import compact_day, count_day_rows

    csv = CsvStore(settings.data.csv_root)
    for name in TABLES:
        assert sorted(csv.meta(name, "NIFTY", day).minutes) == minutes, name  # every minute, once
        assert csv.path(name, "NIFTY", day).stat().st_size == csv.meta(name, "NIFTY", day).bytes  # nothing torn past it
    rows = count_day_rows(settings.data.root, ["NIFTY"], day, key_check=True)
    assert all(rows[f"csv.{t}"] == rows[f"parquet.{t}"] > 0 for t in TABLES), rows
    compact_day("NIFTY", day, settings, redis.Redis.from_url(redis_url))
    result = verify(settings, day)
    assert result.overall_status == "PASS" and result.findings == [], result.summary


def test_writer_locks_are_named_by_what_they_protect_never_by_a_path():
    """Every writer lock of the stores names a table, an index and a day: no path can make two locks of one."""
    names = []
    for path in (PRODUCT / "storage").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "writer_lock":
                names.append((path.name, ast.unparse(node.args[1])))
    assert names, "the stores take writer locks"
    for module, name in names:
        assert "path" not in name.lower() and "root" not in name.lower(), (module, name)


# --- 2. a CSV without its sidecar is rebuilt from the file, never truncated ------------------------------------

def test_a_csv_whose_sidecar_was_deleted_keeps_every_row(short_sessions, redis_url, caplog):
    """Before: with `{table}.csv.meta.json` gone, the next append opened the day file to overwrite it (32 rows
    became 1). Now the sidecar is rebuilt from the file's whole rows (a torn last line is cut and logged)."""
    from optask.jobs.batch import store_minutes
    from optask.jobs.minute import store_minute
    from optask.storage.csv import CsvStore

    settings = short_sessions
    day = DAYS[0]
    minutes = [m.isoformat() for m in session_minutes(settings, day)]
    for ts in minutes[:10]:
        store_minute("NIFTY", ts, settings=settings)
    csv = CsvStore(settings.data.csv_root)
    before = {name: csv.read_day(name, "NIFTY", day) for name in TABLES}
    for name in TABLES:
        path = csv.path(name, "NIFTY", day)
        path.with_name(path.name + ".meta.json").unlink()  # an operator restored the CSVs without their sidecars
    legs = csv.path("legs", "NIFTY", day)
    with open(legs, "ab") as fh:
        fh.write(b'2026-11-15T18:10:00+05:30,"NIFTY",2026-11-17,this_w')  # and the last append was torn
    with caplog.at_level(logging.WARNING, logger="optask.storage.csv"):
        for ts in minutes[10:15]:
            store_minute("NIFTY", ts, settings=settings)
    assert any("torn" in r.getMessage() and "legs.csv" in r.getMessage() for r in caplog.records), caplog.text
    store_minutes("NIFTY", minutes[15:], settings=settings)  # and a backfill of the rest of the day
    for name in TABLES:
        day_rows = csv.read_day(name, "NIFTY", day)
        keys = TABLES[name]
        assert day_rows.num_rows == unique_keys(day_rows, keys)  # no duplicate
        first = day_rows.slice(0, before[name].num_rows)
        assert first.equals(before[name]), name  # every earlier row still there, as it was
        assert sorted(csv.meta(name, "NIFTY", day).minutes) == minutes
    from optask.storage.sinks import count_day_rows

    rows = count_day_rows(settings.data.root, ["NIFTY"], day, key_check=True)
    assert all(rows[f"csv.{t}"] == rows[f"parquet.{t}"] for t in TABLES), rows


def test_no_store_file_is_opened_in_a_truncating_mode():
    """A store writes new files under a temp name and renames them; an existing file is only ever appended to."""
    offenders = []
    for path in [*(PRODUCT / "storage").glob("*.py"), PRODUCT / "infra" / "fsutil.py", PRODUCT / "quality" / "report.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or getattr(node.func, "id", getattr(node.func, "attr", "")) != "open":
                continue
            modes = [a for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]]
            mode = ast.unparse(modes[0]) if modes else "'r'"
            target = ast.unparse(node.args[0]) if node.args else ""
            if ("w" in mode or "O_TRUNC" in mode) and "tmp" not in target:
                offenders.append(f"{path.name}:{node.lineno}: open({target}, {mode})")
    assert not offenders, offenders


# --- 3. durable renames, random temp names, swept temp files ----------------------------------------------------

def _commits(tmp_path: Path, redis_url: str) -> dict:
    """Each kind of commit a store makes, as a function of the file it commits."""
    from optask.pipeline import process_snapshot
    from optask.providers.simulated import SimulatedProvider
    from optask.storage.archive import raw_path, write_raw_once
    from optask.storage.csv import CsvStore
    from optask.storage.parquet import ParquetStore

    client = redis.Redis.from_url(redis_url)
    ts = dt.datetime(2026, 11, 23, 4, 0, tzinfo=dt.UTC)
    legs = process_snapshot(SimulatedProvider(strikes_around_atm=2).snapshot("NIFTY", ts)).legs
    parquet, csv = ParquetStore(tmp_path / "parquet", redis=client), CsvStore(tmp_path / "csv", client)
    return {
        "atomic_write_bytes": (lambda: fsutil.atomic_write_bytes(tmp_path / "reports" / "r.json", b"{}"),
                               tmp_path / "reports"),
        "parquet minute": (lambda: parquet.write_minutes("legs", "NIFTY", [(ts, legs)]),
                           parquet.day_dir("legs", "NIFTY", ts.date())),
        "csv day file and sidecar": (lambda: csv.write_minutes("legs", "NIFTY", [(ts, legs)]),
                                     csv.path("legs", "NIFTY", ts.date()).parent),
        "raw archive": (lambda: write_raw_once(tmp_path / "raw", "NIFTY", ts, "simulated", b"{}"),
                        raw_path(tmp_path / "raw", "NIFTY", ts).parent),
    }


@pytest.mark.parametrize("kind", ["atomic_write_bytes", "parquet minute", "csv day file and sidecar", "raw archive"])
def test_each_commit_fsyncs_its_directory_after_the_rename(kind, tmp_path, redis_url, monkeypatch):
    """Before: the rename was not made durable, so a power loss could forget a committed file."""
    commit, folder = _commits(tmp_path, redis_url)[kind]
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("dir-fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        events.append(("commit", str(Path(dst).parent)))

    def link(src, dst, *a, **k):
        real_link(src, dst, *a, **k)
        events.append(("commit", str(Path(dst).parent)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    commit()
    commits = [i for i, e in enumerate(events) if e == ("commit", str(folder))]
    assert commits, events
    assert ("dir-fsync", str(folder)) in events[commits[-1] + 1:], events  # after the last commit into it


def test_temp_names_carry_a_random_part(tmp_path, monkeypatch):
    """Before: `.name.{pid}.{thread}.tmp`; PIDs repeat across containers and hosts that share a data root."""
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(Path(src).name), real_replace(src, dst)))
    for _ in range(3):
        fsutil.atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert len(set(seen)) == 3 and all(n.startswith(".x.json.") and n.endswith(".tmp") for n in seen), seen


def test_stale_temp_files_are_swept_and_counted(tmp_path):
    """A SIGKILL between a temp file's creation and its rename leaves it behind: swept once older than an hour."""
    old = [tmp_path / "parquet" / "legs" / "index=NIFTY" / "date=2026-11-23" / ".minute-0915.parquet.77.1.tmp",
           tmp_path / "raw_snapshots" / "NIFTY" / "2026-11-23" / ".0915.json.gz.77.once.tmp"]
    fresh = tmp_path / "csv_data" / "NIFTY" / "2026-11-23" / ".legs.csv.meta.json.88.ab12.tmp"
    kept = [tmp_path / "csv_data" / "NIFTY" / "2026-11-23" / "legs.csv", tmp_path / "notes.tmp"]
    for p in [*old, fresh, *kept]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    an_hour_ago = time.time() - 3700
    for p in [*old, *kept]:
        os.utime(p, (an_hour_ago, an_hour_ago))
    assert fsutil.sweep_temp_files(tmp_path) == 2
    assert not any(p.exists() for p in old) and fresh.exists() and all(p.exists() for p in kept)
    assert fsutil.sweep_temp_files(tmp_path) == 0


def test_end_of_day_sweeps_stale_temp_files(short_sessions, redis_url):
    from optask.jobs.eod import end_of_day
    from optask.jobs.minute import store_minute

    settings = short_sessions
    day = DAYS[0]
    store_minute("NIFTY", session_minutes(settings, day)[0].isoformat(), settings=settings)
    left = settings.data.parquet_root / "legs" / "index=NIFTY" / f"date={day}" / ".minute-1800.parquet.9.9.tmp"
    left.write_bytes(b"half a file")
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    out = end_of_day(day.isoformat(), settings=settings)
    assert out["temp_files_swept"] == 1 and not left.exists()


def test_optask_up_sweeps_stale_temp_files_at_start(isolated_settings):
    import socket
    import subprocess

    from optask.infra.procutil import free_port

    left = isolated_settings / "raw_snapshots" / "NIFTY" / "2026-11-23" / ".0915.json.gz.4242.once.tmp"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half")
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    with socket.socket() as taken:  # up stops at its port check, after the sweep: nothing else is started
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "FLOWER_PORT": str(taken.getsockname()[1]), "METRICS_PORT": str(free_port()),
               "API_ENABLED": "false", "FLOWER_BASIC_AUTH": "ops:pw"}
        done = subprocess.run([sys.executable, "-m", "optask.cli", "up"], env=env, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 2 and "FLOWER_PORT" in done.stdout + done.stderr, done
    assert "Removed 1 temp file(s)" in done.stdout and not left.exists(), done.stdout


# --- 4. the first payload of a minute wins ---------------------------------------------------------------------

def test_a_collect_minute_killed_after_archiving_stores_the_first_payload_on_redelivery(
        redis_url, isolated_settings, kite_server, tmp_path):
    """Kill the whole worker after the minute's payload is archived and before any process_index is sent; the
    venue moves on; the redelivered collect_minute fetches again. Before: the new payload replaced the archive
    (and could disagree with a store written from the first). Now the first payload wins, in every store."""
    from optask.core.timeutils import IST
    from optask.infra.celery_client import celery_client
    from optask.infra.ledger import Ledger
    from optask.ops.stack import CELERY, Stack, wait_for_workers
    from optask.pipeline import process_snapshot
    from optask.providers.replay import record_snapshot
    from optask.storage.archive import raw_path, read_raw
    from optask.storage.csv import CsvStore
    from optask.storage.parquet import ParquetStore

    ts = kite_server.minute
    marker = tmp_path / "crashed-once"
    env = {"OPTASK_PROVIDER": "kite", "KITE_ROOT_URL": kite_server.url, "KITE_API_KEY": "api-key",
           "KITE_ACCESS_TOKEN": "access-token", "KITE_FETCH": "minute", "OPTASK_INDICES": "NIFTY",
           "OPTASK_STRIKES_AROUND_ATM": "3", "CELERY_VISIBILITY_TIMEOUT_S": "5",
           "OPTASK_TEST_CRASH_MARKER": str(marker)}
    for k, v in env.items():
        os.environ[k] = v  # restored below; load_settings reads them
    try:
        get_settings.cache_clear()
        settings = load_settings()
        stack = Stack(settings, redis_url, isolated_settings, extra_env=env)
        app = [*CELERY[:-1], "crash_before_dispatch"]  # tasks' app, dying once between archive and dispatch
        stack._spawn("worker", [*app, "worker", "--loglevel=INFO", "--concurrency=1", "--without-gossip",
                                "--without-mingle", f"--hostname=crash-{os.getpid()}@%h"],
                     PYTHONPATH=os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]))
        client = celery_client(settings, redis_url)
        ledger = Ledger(redis.Redis.from_url(redis_url))
        try:
            wait_for_workers(client)
            client.send_task("tasks.collect_minute", args=(ts.isoformat(),), queue="optask")
            assert stack.procs["worker"].wait(60) == -signal.SIGKILL and marker.exists()
            archive = raw_path(settings.data.raw_root, "NIFTY", ts)
            first = read_raw(archive)
            assert not ledger.is_stored("NIFTY", ts.isoformat())
            kite_server.minute = ts + dt.timedelta(minutes=7)  # the venue has moved on: a refetch differs
            stack.procs.clear()
            stack.start_worker(concurrency=1)
            wait_until(lambda: ledger.is_stored("NIFTY", ts.isoformat()), 60, 0.2, "the redelivered minute stored")
        finally:
            stack.stop()
            client.close()
    finally:
        for k in env:
            os.environ.pop(k, None)
        get_settings.cache_clear()
    assert read_raw(archive).payload == first.payload  # the archive kept the first payload
    want = process_snapshot(record_snapshot(first, source="live")).legs
    day = ts.astimezone(IST).date()
    order = [(k, "ascending") for k in ("expiry", "strike", "side")]
    want_ltp = want.sort_by(order)["ltp"].to_pylist()
    parquet = ParquetStore(settings.data.parquet_root).read_table("legs", "NIFTY", day)
    csv = CsvStore(settings.data.csv_root).read_day("legs", "NIFTY", day)
    assert parquet.sort_by(order)["ltp"].to_pylist() == want_ltp
    assert csv.sort_by(order)["ltp"].to_pylist() == want_ltp
    assert set(parquet["source"].to_pylist()) == {"live"}


# --- 5. a repair never replaces a live minute stored while it worked ----------------------------------------------

def test_a_repair_racing_a_late_live_minute_leaves_the_live_minute_alone(short_sessions, redis_url, monkeypatch):
    """The repair decides what is missing, then (while it fetches history) the late live minute is stored.
    Before: the repair replaced it in Parquet with its history rows and CSV kept the live rows."""
    from optask.infra.ledger import Ledger
    from optask.jobs import batch
    from optask.jobs.minute import store_minute
    from optask.storage.csv import CsvStore
    from optask.storage.parquet import ParquetStore

    settings = short_sessions
    day = DAYS[0]
    minutes = [m.isoformat() for m in session_minutes(settings, day)]
    late = minutes[5]
    for ts in minutes[:5]:
        store_minute("NIFTY", ts, settings=settings)
    real = batch.process_snapshots

    def live_minute_lands_meanwhile(snaps):
        store_minute("NIFTY", late, settings=settings)  # the late live minute, between the check and the write
        return real(snaps)

    monkeypatch.setattr(batch, "process_snapshots", live_minute_lands_meanwhile)
    out = batch.store_minutes("NIFTY", minutes[5:8], settings=settings)
    assert out["stored"] == 3
    at = pa.scalar(dt.datetime.fromisoformat(late), pa.timestamp("ns", tz="UTC"))
    legs = ParquetStore(settings.data.parquet_root).read_table("legs", "NIFTY", day)
    mine = legs.filter(pc.equal(legs["ts"], at))
    assert mine.num_rows and set(mine["source"].to_pylist()) == {"simulated"}  # live, not the repair's backfill
    csv_legs = CsvStore(settings.data.csv_root).read_day("legs", "NIFTY", day)
    assert set(csv_legs.filter(pc.equal(csv_legs["ts"], "2026-11-15T18:05:00+05:30"))["source"].to_pylist()) \
        == {"simulated"}
    assert set(legs.filter(pc.greater(legs["ts"], at))["source"].to_pylist()) == {"backfill"}  # what it lacked
    from optask.storage.sinks import count_day_rows

    rows = count_day_rows(settings.data.root, ["NIFTY"], day, key_check=True)
    assert all(rows[f"csv.{t}"] == rows[f"parquet.{t}"] for t in TABLES), rows
    info = Ledger(redis.Redis.from_url(redis_url)).stored("NIFTY", day)[late]
    assert info["live"] is True  # the ledger still says live: the repair did not claim it


def test_a_live_minute_asks_the_parquet_files_only_about_itself(tmp_path, redis_url):
    """The live path's presence check (`among`) answers what the whole-day one does, for the minutes asked."""
    from optask.pipeline import process_snapshot
    from optask.providers.simulated import SimulatedProvider
    from optask.storage.parquet import ParquetStore

    store = ParquetStore(tmp_path, redis=redis.Redis.from_url(redis_url))
    day = dt.date(2026, 11, 23)
    minutes = [dt.datetime(2026, 11, 23, 3, 45, tzinfo=dt.UTC) + dt.timedelta(minutes=i) for i in range(12)]
    sim = SimulatedProvider(strikes_around_atm=2)
    legs = {i: process_snapshot(sim.snapshot("NIFTY", ts)).legs for i, ts in enumerate(minutes)}
    store.write_minutes("legs", "NIFTY", [(minutes[i], legs[i]) for i in range(3)])
    store.compact("legs", "NIFTY", day)  # 0-2 in day.parquet
    store.write_minutes("legs", "NIFTY", [(minutes[i], legs[i]) for i in (4, 5, 6)])  # a batch file
    store.write_minutes("legs", "NIFTY", [(minutes[8], legs[8])])  # a minute file
    full = store.minutes_present("legs", "NIFTY", day)
    for i in range(12):
        asked = {minutes[i].isoformat()}
        assert store.minutes_present("legs", "NIFTY", day, among=asked) == full & asked, i


# --- 6. every stored day gets its end of day ---------------------------------------------------------------------

def test_days_left_unclosed_over_an_outage_all_get_their_end_of_day(short_sessions, redis_url, caplog):
    """Minutes of three sessions stored, the stack down over two closes. Before: only the last closed session was
    closed at the next tick, the earlier two never. Now ticks close every stored day without an end-of-day
    record, oldest first, one at a time, and say so."""
    from optask.core.timeutils import IST
    from optask.infra.ledger import Ledger
    from optask.jobs.eod import end_of_day
    from optask.jobs.minute import should_close_day, store_minute

    settings = short_sessions
    for day in DAYS:
        for ts in session_minutes(settings, day)[:3]:
            store_minute("NIFTY", ts.isoformat(), settings=settings)
    ledger = Ledger(redis.Redis.from_url(redis_url))
    after = dt.datetime.combine(DAYS[-1], dt.time(19, 0), IST)
    closed = []
    with caplog.at_level(logging.INFO, logger="optask.jobs.minute"):
        for n in range(0, 20, 2):
            day = should_close_day((after + dt.timedelta(minutes=n)).isoformat(), settings)
            if day is None:
                continue
            # the next tick, while that day's end of day runs: one at a time
            assert should_close_day((after + dt.timedelta(minutes=n + 1)).isoformat(), settings) is None
            closed.append(day)
            end_of_day(day, settings=settings)
    assert closed == [d.isoformat() for d in DAYS]
    assert all(ledger.eod(d.isoformat()) for d in DAYS), ledger.redis.hgetall("optask:eod")
    assert any("without an end-of-day record" in r.getMessage() and DAYS[0].isoformat() in r.getMessage()
               for r in caplog.records), caplog.text


def test_a_day_whose_session_is_being_played_is_not_closed_early(short_sessions, redis_url):
    from optask.core.timeutils import IST
    from optask.jobs.minute import should_close_day, store_minute

    settings = short_sessions
    minutes = session_minutes(settings, DAYS[0])
    store_minute("NIFTY", minutes[0].isoformat(), settings=settings)
    assert should_close_day(minutes[5].isoformat(), settings) is None  # mid-session: not yet
    noon = dt.datetime.combine(DAYS[0], dt.time(12, 0), IST)  # before that day's session: nothing to close either
    assert should_close_day(noon.isoformat(), settings) is None
