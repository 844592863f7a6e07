"""Every store a processed minute goes to, behind one call; the pipeline never imports a format.

Parquet first (the dataset readers and verification use), then the consolidated CSV, through the one
store interface (`storage.base.Store`); a batch of minutes writes both at once, in two threads. Then
InfluxDB, a sink that spools when down, so it never fails a minute. Each store replaces or skips a minute
it already has, so a retried minute changes nothing.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import redis

from optask.infra.redis_server import client_for
from optask.storage.base import TABLES, Store, split_by_minute
from optask.storage.csv import CsvStore
from optask.storage.influx import InfluxSink
from optask.storage.parquet import ParquetStore


def stores(settings, redis_client: redis.Redis | None = None) -> list[Store]:
    """The stores of record, in write order: Parquet, then CSV."""
    return [ParquetStore.from_settings(settings, redis_client), CsvStore.from_settings(settings, redis_client)]


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
    parts = {name: split_by_minute(getattr(processed, name)) for name in TABLES}

    def write_store(store: Store) -> dict[str, int]:
        out = {}
        for name in TABLES:
            have = present.get(f"{store.name}.{name}", set())
            todo = [(ts, part) for ts, part in parts[name] if ts.isoformat() not in have]
            out[f"{store.name}.{name}"] = store.write_minutes(name, index, todo) if todo else 0
        return out

    targets = stores(settings, redis_client)
    if len(parts["summary"]) > 1:  # a batch: Arrow encodes Parquet and CSV without the GIL, so side by side
        with ThreadPoolExecutor(len(targets), thread_name_prefix="store") as pool:
            done = list(pool.map(write_store, targets))  # a store's error is raised, once both have finished
    else:
        done = [write_store(store) for store in targets]
    written: dict[str, int] = {k: v for d in done for k, v in d.items()}
    sink = InfluxSink.from_settings(settings)
    if sink is not None:  # InfluxDB overwrites a point with the same series and time: rewriting is harmless
        written["influx.sent"] = int(sink.write_minute(processed.legs, processed.summary))
    return written


def present_minutes(index: str, day: dt.date, settings) -> dict[str, set[str]]:
    """ISO minutes each table of each store holds for an index-day: the stores' own view, not the ledger's.

    Cheap: Parquet reads only the `ts` column, CSV only its sidecar.
    """
    targets = stores(settings)
    return {f"{store.name}.{name}": store.minutes_present(name, index, day) for name in TABLES for store in targets}


def compact_day(index: str, day: dt.date, settings, redis_client: redis.Redis | None = None) -> None:
    """Fold a day's minute files into one sorted file per table (Parquet) and sort late CSV minutes."""
    client = redis_client or client_for(settings)
    parquet = ParquetStore.from_settings(settings, client)
    csv = CsvStore(settings.data.csv_root, client)
    for name in TABLES:
        parquet.compact_locked(name, index, day)
        csv.compact(name, index, day)


def stored_minutes(index: str, day: dt.date, settings) -> pd.DatetimeIndex:
    """Minutes present in the Parquet summary table (the verification's view of what is stored)."""
    ts = ParquetStore.from_settings(settings).minutes("summary", index, day)
    return pd.DatetimeIndex(ts.to_pandas())


def count_day_rows(root: Path, indices: list[str], day: dt.date, key_check: bool = False) -> dict[str, int]:
    """Rows per store and table for a day, read back from the files; with key_check, fail on a duplicate key."""
    root = Path(root)
    readers = [ParquetStore(root / "parquet"), CsvStore(root / "csv_data")]
    out: dict[str, int] = {}
    for name, keys in TABLES.items():
        for store in readers:
            rows = 0
            for index in indices:
                t = store.read_day(name, index, day)
                rows += t.num_rows
                if key_check and t.num_rows:
                    unique = t.group_by(list(keys)).aggregate([]).num_rows
                    if unique != t.num_rows:
                        raise AssertionError(f"{store.name} {name} {index} {day}: {t.num_rows - unique} duplicate keys")
            out[f"{store.name}.{name}"] = rows
    return out


def resend_influx(index: str, day: dt.date, minutes: list[str], settings) -> int:
    """Send minutes InfluxDB lacks again, from Parquet (the data is there; nothing to refetch). Points sent."""
    sink = InfluxSink.from_settings(settings)
    if sink is None or not minutes:
        return 0
    parquet = ParquetStore.from_settings(settings)
    wanted = pa.array([dt.datetime.fromisoformat(m) for m in minutes], pa.timestamp("ns", tz="UTC"))
    legs, summary = (parquet.read_table(t, index, day) for t in ("legs", "summary"))
    legs = legs.filter(pc.is_in(legs["ts"], value_set=wanted.cast(legs["ts"].type))) if legs.num_rows else legs
    summary = summary.filter(pc.is_in(summary["ts"], value_set=wanted.cast(summary["ts"].type))) \
        if summary.num_rows else summary
    sink.write_minute(legs, summary)
    return legs.num_rows + summary.num_rows
