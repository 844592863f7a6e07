"""What a worker process keeps between minutes: one provider per name (instrument caches, HTTP sessions), and
its libraries warmed up before the first minute arrives."""

from __future__ import annotations

import datetime as dt
import functools
import tempfile

from optask.core.calendar import MarketCalendar
from optask.pipeline import process_snapshots
from optask.providers import get_provider
from optask.providers.simulated import SimulatedProvider
from optask.storage.base import TABLES
from optask.storage.csv import to_csv_bytes
from optask.storage.parquet import ParquetStore

WARM_UP_DAY = dt.date(2026, 11, 23)


@functools.lru_cache(maxsize=4)
def provider_for(name: str):
    """One provider per worker process: instrument caches and HTTP sessions are reused across minutes."""
    return get_provider(name)


def warm_up() -> None:
    """Run a two-strike chain through processing and both encoders in memory and a scratch directory: the first
    real task of a new worker process then costs what the next ones do (Arrow and numpy load their kernels on
    first use). Touches no store, ledger or Redis."""
    ts = MarketCalendar().session_minutes(WARM_UP_DAY)[0].to_pydatetime()
    processed = process_snapshots([SimulatedProvider(strikes_around_atm=2).snapshot("NIFTY", ts)])
    with tempfile.TemporaryDirectory(prefix="optask-warm-up-") as scratch:
        store = ParquetStore(scratch)
        for name in TABLES:
            to_csv_bytes(getattr(processed, name), header=True)
            store.write_minute(name, "NIFTY", ts, getattr(processed, name))
