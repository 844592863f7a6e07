"""The Parquet dataset as users read it: every common reader opens a table from its root with no
workarounds; incremental reads deliver every minute exactly once across a compaction."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
import redis

from optask.core.calendar import MarketCalendar
from optask.pipeline import process_snapshot
from optask.providers.simulated import SimulatedProvider
from optask.storage.parquet import ParquetStore

DAYS = [dt.date(2026, 11, 20), dt.date(2026, 11, 23)]
INDICES = ["NIFTY", "SENSEX"]
SIM = SimulatedProvider(strikes_around_atm=3)


def minutes(day: dt.date, n: int = 4) -> list[dt.datetime]:
    return [m.to_pydatetime() for m in MarketCalendar().session_minutes(day)[:n]]


def processed(index: str, ts: dt.datetime):
    return process_snapshot(SIM.snapshot(index, ts))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, ParquetStore, dict]:
    root = tmp_path_factory.mktemp("parquet")
    store = ParquetStore(root)
    expected: dict[tuple[str, str, str], int] = {}
    for day in DAYS:
        for index in INDICES:
            for ts in minutes(day):
                p = processed(index, ts)
                for table in ("legs", "merged", "summary"):
                    store.write_minute(table, index, ts, getattr(p, table))
                    key = (table, index, day.isoformat())
                    expected[key] = expected.get(key, 0) + getattr(p, table).num_rows
    for index in INDICES:  # the first day compacted, the second still in minute files
        for table in ("legs", "merged", "summary"):
            store.compact(table, index, DAYS[0])
    return root, store, expected


@pytest.mark.parametrize("table", ["legs", "merged", "summary"])
def test_every_reader_opens_a_table_from_its_root(dataset, table):
    root, store, expected = dataset
    total = sum(n for (t, _, _), n in expected.items() if t == table)
    nifty_day2 = expected[(table, "NIFTY", DAYS[1].isoformat())]
    path = root / table

    frame = pd.read_parquet(path)
    assert len(frame) == total and {"index", "date"} <= set(frame.columns)
    assert len(pd.read_parquet(path, filters=[("index", "==", "NIFTY"), ("date", "==", DAYS[1].isoformat())])) == nifty_day2

    lazy = pl.scan_parquet(f"{path}/**/*.parquet", hive_partitioning=True)
    assert lazy.select(pl.len()).collect().item() == total
    got = lazy.filter((pl.col("index") == "NIFTY") & (pl.col("date") == DAYS[1])).select(pl.len()).collect().item()
    assert got == nifty_day2

    assert duckdb.sql(f"select count(*) from read_parquet('{path}/**/*.parquet')").fetchall()[0][0] == total
    got = duckdb.sql(f"select count(*) from read_parquet('{path}/**/*.parquet') "
                     f"where index = 'NIFTY' and date = DATE '{DAYS[1]}'").fetchall()[0][0]
    assert got == nifty_day2

    dataset_ = ds.dataset(path, partitioning="hive")
    assert dataset_.count_rows() == total
    flt = (pc.field("index") == "NIFTY") & (pc.field("date") == pc.scalar(DAYS[1]).cast(dataset_.schema.field("date").type))
    assert dataset_.count_rows(filter=flt) == nifty_day2

    # and optask's own reader, which puts the partition's index back, agrees
    assert store.read_table(table, "NIFTY", DAYS[1]).num_rows == nifty_day2
    assert store.read_table(table, "NIFTY", DAYS[1])["index"].unique().to_pylist() == ["NIFTY"]


def test_files_do_not_repeat_the_partition_keys(dataset):
    root, _, _ = dataset
    import pyarrow.parquet as pq

    files = list(root.rglob("*.parquet"))
    assert files and all("index" not in pq.read_schema(f).names for f in files)


def test_a_file_written_with_index_inside_still_reads_and_compacts_clean(tmp_path):
    """Days written by earlier versions carried `index` in the files too."""
    import pyarrow.parquet as pq

    store = ParquetStore(tmp_path)
    ts = minutes(DAYS[0])[0]
    legs = processed("NIFTY", ts).legs
    path = store.day_dir("legs", "NIFTY", DAYS[0]) / "minute-0915.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(legs, path)  # the old layout
    assert store.read_table("legs", "NIFTY", DAYS[0]).num_rows == legs.num_rows
    store.compact("legs", "NIFTY", DAYS[0])
    assert "index" not in pq.read_schema(store.day_dir("legs", "NIFTY", DAYS[0]) / "day.parquet").names
    assert len(pd.read_parquet(tmp_path / "legs")) == legs.num_rows


def test_incremental_reads_deliver_every_minute_once_across_a_compaction(tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    store = ParquetStore(tmp_path)
    day = DAYS[0]
    ms = minutes(day, 6)
    legs = {ts: processed("NIFTY", ts).legs for ts in ms}

    def write(i: int) -> None:
        store.write_minute("legs", "NIFTY", ms[i], legs[ms[i]])

    def got_minutes(t) -> list[dt.datetime]:
        return sorted(pc.unique(t["ts"]).to_pylist()) if t.num_rows else []

    for i in range(2):
        write(i)
    first = store.read_new(client, "reader", "legs", "NIFTY", day)
    assert got_minutes(first) == ms[:2]  # the reader stops mid-day
    for i in range(2, 5):
        write(i)
    store.compact("legs", "NIFTY", day)  # minutes 2..4 are folded before the reader saw them
    resumed = store.read_new(client, "reader", "legs", "NIFTY", day)
    assert got_minutes(resumed) == ms[2:5] and resumed.num_rows == sum(legs[t].num_rows for t in ms[2:5])
    assert resumed["index"].unique().to_pylist() == ["NIFTY"]
    assert store.read_new(client, "reader", "legs", "NIFTY", day).num_rows == 0  # nothing twice
    write(5)
    assert got_minutes(store.read_new(client, "reader", "legs", "NIFTY", day)) == [ms[5]]
    # a repair of a compacted minute (a new minute file) is delivered once more, once
    fixed = processed("NIFTY", ms[3]).legs.set_column(
        processed("NIFTY", ms[3]).legs.column_names.index("ltp"), "ltp",
        pc.add(legs[ms[3]]["ltp"], 0.05))
    store.write_minute("legs", "NIFTY", ms[3], fixed)
    again = store.read_new(client, "reader", "legs", "NIFTY", day)
    assert got_minutes(again) == [ms[3]] and again["ltp"].to_pylist() == fixed["ltp"].to_pylist()
    assert store.read_new(client, "reader", "legs", "NIFTY", day).num_rows == 0
    store.compact("legs", "NIFTY", day)
    assert store.read_new(client, "reader", "legs", "NIFTY", day).num_rows == 0
    # a consumer arriving now gets the whole day once
    late = store.read_new(client, "late", "legs", "NIFTY", day)
    assert got_minutes(late) == ms and late.num_rows == sum(t.num_rows for t in legs.values())
