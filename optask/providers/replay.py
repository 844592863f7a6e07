"""Replay: the raw snapshot archive read back as snapshots, for any day and minute range, at any speed.

Each archived envelope names the provider module whose pure parser reads its payload, so a
replayed minute is normalized exactly as it was live (source set to "replay").
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from optask.core.timeutils import IST
from optask.providers.base import PermanentProviderError, Snapshot, TemporaryProviderError, Universe
from optask.providers.kite import parse as kite_parse
from optask.providers.kite import stream as kite_stream
from optask.providers.simulated.parse import parse_payload
from optask.storage.archive import RawRecord, archived_minutes, raw_path, read_raw


def parse_record(record: RawRecord, source: str = "replay"):
    """Archived payload -> (table, issues) with the parser of the provider that received it."""
    if record.provider == "simulated":
        return parse_payload(record.payload, record.index, record.ts, source=source)
    if record.provider == "kite":
        return kite_parse.parse_quote_payload(record.payload, record.index, record.ts, source=source)
    if record.provider == "kite-ticker":
        return kite_stream.parse_ticker_payload(record.payload, record.index, record.ts, source=source)
    raise PermanentProviderError(f"archive entry {record.index} {record.ts} was written by unknown provider "
                                 f"{record.provider!r}; cannot parse it")


def sampling_of(record: RawRecord) -> tuple[float | None, float | None]:
    """The sampling span and spot offset (ms) the payload itself records; the simulator's every quote is
    of one instant."""
    if record.provider == "kite":
        return kite_parse.sampling(record.payload)
    if record.provider == "kite-ticker":
        return kite_stream.sampling(record.payload)
    return (0.0, 0.0) if record.provider == "simulated" else (None, None)


def record_snapshot(record: RawRecord, source: str = "replay", started: float | None = None) -> Snapshot:
    table, issues = parse_record(record, source)
    span, offset = sampling_of(record)
    return Snapshot(record.index, record.ts, record.provider, record.payload, table, issues,
                    time.perf_counter() - started if started else 0.0, span, offset)


@dataclass
class ReplayProvider:
    """Snapshots from the archive under `root`; `speed` x real time between minutes (0 = as fast as possible)."""

    root: Path
    speed: float = 0.0
    name: str = "replay"

    @classmethod
    def from_settings(cls, settings) -> ReplayProvider:
        return cls(settings.data.raw_root)

    def universe(self, index: str, day: dt.date) -> Universe:
        """What the archive holds for the day's first minute: its expiries and strikes."""
        minutes = archived_minutes(self.root, index, day)
        if not minutes:
            raise PermanentProviderError(f"no archived snapshots for {index} on {day} under {self.root}")
        table = self.snapshot(index, minutes[0]).table
        expiries: dict[str, dt.date] = {}
        strikes: dict[dt.date, tuple[float, ...]] = {}
        for row in table.select(["expiry_kind", "expiry"]).group_by(["expiry_kind", "expiry"]).aggregate([]).to_pylist():
            expiries.setdefault(row["expiry_kind"], row["expiry"])
        for e in set(expiries.values()):
            ks = table.filter(pc.equal(table["expiry"], e))["strike"].unique().to_pylist()
            strikes[e] = tuple(sorted(ks))
        steps = sorted({round(b - a, 6) for ks in strikes.values() for a, b in zip(ks, ks[1:], strict=False)})
        return Universe(index, day, expiries, strikes, steps[0] if steps else 0.0, 0, ("from the archive",))

    def snapshot(self, index: str, ts: dt.datetime) -> Snapshot:
        start = time.perf_counter()
        path = raw_path(self.root, index, ts)
        if not path.exists():
            raise TemporaryProviderError(f"no archived snapshot for {index} at {ts.astimezone(IST):%Y-%m-%d %H:%M} IST")
        return record_snapshot(read_raw(path), started=start)

    def history(self, index: str, day: dt.date, minutes: Iterable[dt.datetime] | None = None) -> Iterator[Snapshot]:
        """The archived minutes of a day (all, or those asked for that exist), paced by `speed`."""
        if minutes is None:
            wanted = archived_minutes(self.root, index, day)
        else:  # a stat per minute asked, not a listing of the whole day
            wanted = [m for m in sorted(set(minutes)) if raw_path(self.root, index, m).exists()]
        previous: dt.datetime | None = None
        for ts in wanted:
            if self.speed and previous is not None:
                time.sleep((ts - previous).total_seconds() / self.speed)
            previous = ts
            yield self.snapshot(index, ts)
