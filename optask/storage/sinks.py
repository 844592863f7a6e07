"""Every store a processed minute goes to, behind one call; the pipeline never imports a format.

Parquet first (the dataset readers and verification use), then the consolidated CSV, through the one
store interface (`storage.base.Store`); a batch of minutes writes both at once, in two threads. Then
InfluxDB, a sink that spools when down, so it never fails a minute. A minute a store already holds is left
alone (decided under one lock per index and day), so a retried minute changes nothing and two writers of one
minute never leave two versions of it.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import redis

from optask.core.timeutils import IST
from optask.infra.coordination import writer_lock
from optask.infra.redis_server import client_for
from optask.storage.base import TABLES, Store, split_by_minute
from optask.storage.csv import CsvStore
from optask.storage.influx import InfluxSink
from optask.storage.parquet import ParquetStore


def stores(settings, redis_client: redis.Redis | None = None) -> list[Store]:
    """The stores of record, in write order: Parquet, then CSV."""
    return [ParquetStore.from_settings(settings, redis_client), CsvStore.from_settings(settings, redis_client)]


@dataclass
class Written:
    """What `write_minute` stored: rows per store and table, and the ISO minutes it wrote to at least one store."""

    rows: dict[str, int] = field(default_factory=dict)
    minutes: set[str] = field(default_factory=set)


def write_minute(processed, settings, redis_client: redis.Redis) -> Written:
    """Store processed minutes of one index and day in Parquet, CSV and InfluxDB, each minute only where a store
    lacks it.

    Usually one minute (live); a backfill, repair or replay batch passes many, written with one lock and one
    CSV append per table. Which minutes each store holds is read under one lock per (index, day) that every
    writer of minutes takes: a minute stored by another writer meanwhile (a late live minute while a repair
    fetched history, or a repair's before a late live one) is left as that writer stored it, so the stores never
    hold two versions of a minute. InfluxDB gets the minutes written here.
    """
    head = processed.summary if processed.summary.num_rows else processed.legs
    if head.num_rows == 0:
        return Written()
    index = head["index"][0].as_py()
    parts = {name: split_by_minute(getattr(processed, name)) for name in TABLES}
    day = parts["summary" if processed.summary.num_rows else "legs"][0][0].astimezone(IST).date()
    out = Written()
    asked = {ts.isoformat() for name in TABLES for ts, _ in parts[name]}
    with writer_lock(redis_client, f"minutes:{index}:{day}"):
        present = present_minutes(index, day, settings, redis_client, among=asked)

        def write_store(store: Store) -> dict[str, int]:
            rows = {}
            for name in TABLES:
                have = present[f"{store.name}.{name}"]
                todo = [(ts, part) for ts, part in parts[name] if ts.isoformat() not in have]
                out.minutes.update(ts.isoformat() for ts, _ in todo)
                rows[f"{store.name}.{name}"] = store.write_minutes(name, index, todo) if todo else 0
            return rows

        targets = stores(settings, redis_client)
        if len(parts["summary"]) > 1:  # a batch: Arrow encodes Parquet and CSV without the GIL, so side by side
            with ThreadPoolExecutor(len(targets), thread_name_prefix="store") as pool:
                done = list(pool.map(write_store, targets))  # a store's error is raised, once both have finished
        else:
            done = [write_store(store) for store in targets]
    out.rows = {k: v for d in done for k, v in d.items()}
    sink = InfluxSink.from_settings(settings)
    if sink is not None and out.minutes:  # InfluxDB overwrites a point with the same series and time
        legs, summary = processed.legs, processed.summary
        if out.minutes != asked:
            legs, summary = _only_minutes(legs, out.minutes), _only_minutes(summary, out.minutes)
        out.rows["influx.sent"] = int(sink.write_minute(legs, summary))
    return out


def _only_minutes(table: pa.Table, minutes: set[str]) -> pa.Table:
    """The rows of the given ISO minutes."""
    wanted = pa.array([dt.datetime.fromisoformat(m) for m in minutes], pa.timestamp("ns", tz="UTC"))
    return table.filter(pc.is_in(table["ts"], value_set=wanted.cast(table["ts"].type))) if table.num_rows else table


def present_minutes(index: str, day: dt.date, settings, redis_client: redis.Redis | None = None,
                    among: set[str] | None = None) -> dict[str, set[str]]:
    """ISO minutes each table of each store holds for an index-day (with `among`: which of those): the stores' own
    view, not the ledger's. Cheap: Parquet reads only the `ts` column (each file once per process), CSV only its
    sidecar.
    """
    targets = stores(settings, redis_client)
    return {f"{store.name}.{name}": store.minutes_present(name, index, day, among) for name in TABLES
            for store in targets}


def stored_days(indices: list[str], settings) -> list[dt.date]:
    """Days that any table of any store holds for any of `indices`, oldest first (folder names only: no read)."""
    days = {d for store in stores(settings) for name in TABLES for index in indices for d in store.days(name, index)}
    return sorted(days)


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
    legs, summary = (_only_minutes(parquet.read_table(t, index, day), set(minutes)) for t in ("legs", "summary"))
    sink.write_minute(legs, summary)
    return legs.num_rows + summary.num_rows
