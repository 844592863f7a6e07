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


def _split_by_minute(table) -> list[tuple[dt.datetime, object]]:
    """(ts, rows of that minute) in minute order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    minutes = sorted(pc.unique(table["ts"]).to_pylist())
    if len(minutes) == 1:
        return [(minutes[0], table)]
    return [(m, table.filter(pc.equal(table["ts"], pa.scalar(m, table["ts"].type)))) for m in minutes]


def write_minute(processed, settings, redis_client: redis.Redis,
                 present: dict[str, set[str]] | None = None) -> dict[str, int]:
    """Store processed minutes of one index and day in Parquet, CSV and InfluxDB; rows written per store.

    Usually one minute; a backfill or replay batch passes many, written with one lock and one CSV
    append per table. `present` ({"parquet.legs": {ISO minute, ...}, ...}, see `present_minutes`)
    names minutes a store already holds: a repair writes only where a minute is missing.
    """
    head = processed.summary if processed.summary.num_rows else processed.legs
    if head.num_rows == 0:
        return {}
    present = present or {}
    index = head["index"][0].as_py()
    day = head["ts"][0].as_py().astimezone(IST).date()
    parquet = ParquetStore(settings.data.parquet_root)
    csv = CsvStore(settings.data.csv_root, redis_client)
    written: dict[str, int] = {}
    for name in TABLES:
        parts = _split_by_minute(getattr(processed, name))
        have = present.get(f"parquet.{name}", set())
        to_parquet = [(ts, part) for ts, part in parts if ts.isoformat() not in have]
        if to_parquet:
            # the same lock as compaction: a minute is never half folded into day.parquet
            with writer_lock(redis_client, f"parquet:{name}:{index}:{day}"):
                for ts, part in to_parquet:
                    parquet.write_minute(name, index, ts, part)
        written[f"parquet.{name}"] = sum(p.num_rows for _, p in to_parquet)
        written[f"csv.{name}"] = csv.append_minutes(name, index, parts)  # skips minutes its sidecar lists
    sink = InfluxSink.from_settings(settings)
    if sink is not None:  # InfluxDB overwrites a point with the same series and time: rewriting is harmless
        written["influx.sent"] = int(sink.write_minute(processed.legs, processed.summary))
    return written


def present_minutes(index: str, day: dt.date, settings) -> dict[str, set[str]]:
    """ISO minutes each Parquet table and CSV file holds for an index-day: the stores' own view, not the ledger's.

    Cheap: Parquet reads only the `ts` column, CSV only its sidecar.
    """
    parquet = ParquetStore(settings.data.parquet_root)
    csv = CsvStore(settings.data.csv_root)
    out: dict[str, set[str]] = {}
    for name in TABLES:
        out[f"parquet.{name}"] = {t.isoformat() for t in parquet.minutes(name, index, day).to_pylist()}
        out[f"csv.{name}"] = set(csv.meta(name, index, day).minutes or [])
    return out


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



def resend_influx(index: str, day: dt.date, minutes: list[str], settings) -> int:
    """Send minutes InfluxDB lacks again, from Parquet (the data is there; nothing to refetch). Points sent."""
    import pyarrow as pa
    import pyarrow.compute as pc

    sink = InfluxSink.from_settings(settings)
    if sink is None or not minutes:
        return 0
    parquet = ParquetStore(settings.data.parquet_root)
    wanted = pa.array([dt.datetime.fromisoformat(m) for m in minutes], pa.timestamp("ns", tz="UTC"))
    legs, summary = (parquet.read_table(t, index, day) for t in ("legs", "summary"))
    legs = legs.filter(pc.is_in(legs["ts"], value_set=wanted.cast(legs["ts"].type))) if legs.num_rows else legs
    summary = summary.filter(pc.is_in(summary["ts"], value_set=wanted.cast(summary["ts"].type))) \
        if summary.num_rows else summary
    sink.write_minute(legs, summary)
    return legs.num_rows + summary.num_rows
