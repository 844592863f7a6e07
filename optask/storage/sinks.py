"""Every store a processed minute goes to, behind one call; the pipeline never imports a format.

Parquet first (the dataset readers and verification use), then the consolidated CSV, then
InfluxDB (which spools when down, so it never fails a minute). Each store replaces or skips a
minute it already has, so a retried minute changes nothing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import redis

from optask.coordination import writer_lock
from optask.storage.csv import CsvStore
from optask.storage.influx import InfluxSink
from optask.storage.parquet import ParquetStore
from optask.timeutils import IST

TABLES = ("legs", "merged", "summary")


def _minute_of(processed) -> tuple[str, dt.datetime] | None:
    t = processed.summary if processed.summary.num_rows else processed.legs
    if t.num_rows == 0:
        return None
    return t["index"][0].as_py(), t["ts"][0].as_py()


def write_minute(processed, settings, redis_client: redis.Redis) -> dict[str, int]:
    """Store one (index, minute) in Parquet, CSV and InfluxDB; returns rows written per store."""
    which = _minute_of(processed)
    if which is None:
        return {}
    index, ts = which
    day = ts.astimezone(IST).date()
    parquet = ParquetStore(settings.data.parquet_root)
    csv = CsvStore(settings.data.csv_root, redis_client)
    written: dict[str, int] = {}
    for name in TABLES:
        table = getattr(processed, name)
        # the same lock as compaction: a minute is never half folded into day.parquet
        with writer_lock(redis_client, f"parquet:{name}:{index}:{day}"):
            parquet.write_minute(name, index, ts, table)
        written[f"parquet.{name}"] = table.num_rows
        written[f"csv.{name}"] = csv.append_minute(name, index, ts, table)
    sink = InfluxSink.from_settings(settings)
    if sink is not None:
        written["influx.sent"] = int(sink.write_minute(processed.legs, processed.summary))
    return written


def compact_day(index: str, day: dt.date, settings, redis_client: redis.Redis | None = None) -> None:
    from optask.coordination import redis_client as make_client

    client = redis_client or make_client(settings)
    parquet = ParquetStore(settings.data.parquet_root)
    csv = CsvStore(settings.data.csv_root, client)
    for name in TABLES:
        with writer_lock(client, f"parquet:{name}:{index}:{day}"):
            parquet.compact(name, index, day)
        csv.compact(name, index, day)


def stored_minutes(index: str, day: dt.date, settings):
    """Minutes present in the Parquet summary table (the verification's view of what is stored)."""
    import pandas as pd

    ts = ParquetStore(settings.data.parquet_root).minutes("summary", index, day)
    return pd.DatetimeIndex(ts.to_pandas())


def count_day_rows(root: Path, indices: list[str], day: dt.date, key_check: bool = False) -> dict[str, int]:
    """Rows per store and table for a day, read back from the files; with key_check, fail on a duplicate key."""
    from optask.schema import LEG_KEY, MERGED_KEY, SUMMARY_KEY

    keys = {"legs": LEG_KEY, "merged": MERGED_KEY, "summary": SUMMARY_KEY}
    root = Path(root)
    parquet = ParquetStore(root / "parquet")
    csv = CsvStore(root / "csv_data")
    out: dict[str, int] = {}
    for name in TABLES:
        n_pq = n_csv = 0
        for index in indices:
            t = parquet.read_table(name, index, day)
            n_pq += t.num_rows
            c = csv.read_day(name, index, day)
            n_csv += c.num_rows
            if key_check and t.num_rows:
                unique = t.group_by(list(keys[name])).aggregate([]).num_rows
                if unique != t.num_rows:
                    raise AssertionError(f"parquet {name} {index} {day}: {t.num_rows - unique} duplicate keys")
            if key_check and c.num_rows:
                unique = c.group_by(list(keys[name])).aggregate([]).num_rows
                if unique != c.num_rows:
                    raise AssertionError(f"csv {name} {index} {day}: {c.num_rows - unique} duplicate keys")
        out[f"parquet.{name}"] = n_pq
        out[f"csv.{name}"] = n_csv
    return out

