"""What a worker process keeps between minutes: one provider per name (instrument caches, HTTP sessions), and
its libraries warmed up before the first minute arrives."""

from __future__ import annotations

import datetime as dt
import functools
import tempfile

import pyarrow as pa

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


#: How long a worker's Arrow allocator keeps pages a batch freed before it returns them to the system.
FREED_PAGES_KEPT_MS = 10_000


def use_worker_memory_pool() -> None:
    """Arrow's jemalloc pool for this process, keeping freed pages for a few seconds: a batch frees and then
    allocates again hundreds of MB, and with Arrow's default pool (mimalloc, which returns freed huge pages to
    the system after 10 ms) the kernel faulted and zeroed them anew for each batch, about a tenth of a
    replay's CPU. Where this Arrow build has no jemalloc, the default pool stays."""
    if "jemalloc" in pa.supported_memory_backends():
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(FREED_PAGES_KEPT_MS)


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
