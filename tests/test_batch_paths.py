"""The batch path (backfill, repair, replay: `store_minutes`) writes exactly what the per-minute path writes.

Both read the same raw archive (the simulated venue with every leg fault on), one minute at a time through
`store_minute` as the live pipeline and the per-minute replay do, or in batches through `store_minutes`; the
stores they leave are compared row for row (Parquet), byte for byte (CSV), before and after compaction.
"""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
import pytest
import redis

from optask.core.calendar import MarketCalendar
from optask.core.config import get_settings
from optask.core.schema import TABLE_KEYS
from optask.infra.ledger import Ledger
from optask.jobs.batch import store_minutes
from optask.jobs.minute import store_minute
from optask.providers.simulated import SimFaults, SimulatedProvider
from optask.storage.archive import write_raw
from optask.storage.csv import CsvStore
from optask.storage.parquet import ParquetStore, same_rows
from optask.storage.sinks import compact_day

DAY = dt.date(2026, 11, 23)
INDICES = ("NIFTY", "SENSEX")
MINUTES = [m.to_pydatetime() for m in MarketCalendar().session_minutes(DAY)][:14]
FAULTS = SimFaults(drop_legs=0.03, stale_quotes=0.05, bad_prices=0.02, duplicate_legs=0.02, crossed_book=0.02)


def _settings(monkeypatch, root, raw):
    monkeypatch.setenv("BASE_DATA_DIR", str(root))
    monkeypatch.setenv("JSON_SNAPSHOTS_ROOT", str(raw))
    monkeypatch.setenv("OPTASK_PROVIDER", "replay")
    monkeypatch.setenv("OPTASK_INDICES", ",".join(INDICES))
    monkeypatch.setenv("OPTASK_STRIKES_AROUND_ATM", "6")
    get_settings.cache_clear()
    return get_settings()


def _parquet(settings, table: str, index: str):
    t = ParquetStore.from_settings(settings).read_day(table, index, DAY)
    keys = list(dict.fromkeys(["ts", *TABLE_KEYS[table]]))
    return t.sort_by([(k, "ascending") for k in keys])


@pytest.fixture
def archive(tmp_path):
    raw = tmp_path / "raw"
    venue = SimulatedProvider(strikes_around_atm=6, faults=FAULTS)
    for ts in MINUTES:
        for index in INDICES:
            write_raw(raw, index, ts, "simulated", venue.snapshot(index, ts).raw)
    return raw


def test_batches_store_what_minute_by_minute_stores(tmp_path, archive, redis_url, monkeypatch):
    minute_root, batch_root = tmp_path / "per-minute", tmp_path / "batched"
    per_minute = _settings(monkeypatch, minute_root, archive)
    for ts in MINUTES:
        for index in INDICES:
            assert store_minute(index, ts.isoformat(), settings=per_minute).legs > 0
    client = redis.Redis.from_url(redis_url)
    client.delete(*client.keys("optask:stored:*"))  # what the ledger holds next is the batch path's word
    batched = _settings(monkeypatch, batch_root, archive)
    iso = [m.isoformat() for m in MINUTES]
    for index in INDICES:
        assert store_minutes(index, iso[:9], settings=batched)["stored"] == 9
        assert store_minutes(index, iso[9:], settings=batched)["stored"] == 5
        assert store_minutes(index, iso[9:], settings=batched)["stored"] == 0  # redelivered: nothing to do
    names = {p.name.split("-")[0] for p in (batch_root / "parquet").rglob("*.parquet")}
    assert names == {"batch"}, "the batch path wrote minute files"
    for index in INDICES:
        for table in TABLE_KEYS:
            a, b = _parquet(per_minute, table, index), _parquet(batched, table, index)
            assert a.num_rows and same_rows(a, b), f"Parquet {table} {index} differs: {_diff(a, b)}"
            ca, cb = CsvStore.from_settings(per_minute), CsvStore.from_settings(batched)
            assert ca.path(table, index, DAY).read_bytes() == cb.path(table, index, DAY).read_bytes(), \
                f"CSV {table} {index} differs"
            ma, mb = ca.meta(table, index, DAY), cb.meta(table, index, DAY)
            assert (ma.rows, ma.minutes, ma.bytes, ma.columns) == (mb.rows, mb.minutes, mb.bytes, mb.columns)
        assert not pc.any(pc.equal(_parquet(per_minute, "legs", index)["source"], "simulated")).as_py()
        legs = _parquet(batched, "legs", index)["ts"].to_pylist()
        assert _ledger_legs(redis_url, index) == {ts.isoformat(): legs.count(ts) for ts in set(legs)}, \
            "the ledger's legs per minute are not what the stores hold"
    for settings in (per_minute, batched):
        for index in INDICES:
            compact_day(index, DAY, settings)
    for index in INDICES:
        for table in TABLE_KEYS:
            a = ParquetStore.from_settings(per_minute).read_day(table, index, DAY)
            b = ParquetStore.from_settings(batched).read_day(table, index, DAY)
            assert same_rows(a, b), f"compacted Parquet {table} {index} differs: {_diff(a, b)}"


def _ledger_legs(redis_url: str, index: str) -> dict[str, int]:
    return {ts: entry["legs"] for ts, entry in Ledger(redis.Redis.from_url(redis_url)).stored(index, DAY).items()}


def _diff(a, b) -> list[str]:
    return [c for c in a.column_names if not same_rows(a.select([c]), b.select([c]))]
