"""The one interface every source of option chains implements (simulated, kite, replay).

A provider turns (index, minute) into a `Snapshot`: the payload exactly as received, for
the raw archive, and the normalized leg table (`optask.core.schema.RAW_LEG_SCHEMA`). Parsing a
payload is a pure function of each provider module, so replay reuses it on archived bytes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa


class ProviderError(Exception):
    """Base of provider faults."""


class TemporaryProviderError(ProviderError):
    """Network trouble, rate limits, 5xx: worth retrying with backoff."""


class PermanentProviderError(ProviderError):
    """Retrying will not help (expired token, unknown index); an operator must act."""


@dataclass(frozen=True)
class Universe:
    """The contracts to collect for one index and day."""

    index: str
    day: dt.date
    expiries: dict[str, dt.date]  # expiry kind -> expiry date
    strikes: dict[dt.date, tuple[float, ...]]  # expiry date -> strikes collected
    strike_step: float
    lot_size: int
    notes: tuple[str, ...] = ()  # e.g. "BANKNIFTY has no weekly expiry: this_week -> this_month"

    @property
    def legs(self) -> int:
        return 2 * sum(len(s) for s in self.strikes.values())


@dataclass(frozen=True)
class Snapshot:
    """One minute of one index, as received and as normalized."""

    index: str
    ts: dt.datetime  # UTC, minute-aligned
    provider: str  # simulated | kite | replay: the module whose parser reads `raw`
    raw: bytes  # the payload exactly as received
    table: pa.Table  # RAW_LEG_SCHEMA
    issues: dict[str, int] = field(default_factory=dict)  # dropped or flagged legs by reason
    elapsed_s: float = 0.0
    sample_span_ms: float | None = None  # first to last quote call behind the minute (None: not known)
    spot_offset_ms: float | None = None  # the spot's call against its options' calls


@runtime_checkable
class Provider(Protocol):
    name: str

    def universe(self, index: str, day: dt.date) -> Universe: ...

    def snapshot(self, index: str, ts: dt.datetime) -> Snapshot: ...

    def history(self, index: str, day: dt.date, minutes: Iterable[dt.datetime]) -> Iterator[Snapshot]: ...


def classify_expiries(
    expiries: Iterable[dt.date], day: dt.date, kinds: Iterable[str]
) -> tuple[dict[str, dt.date], tuple[str, ...]]:
    """Map expiry kinds to dates from the expiries a source lists, for collection on `day`.

    Monthly expiries are the last listed expiry of each month. An index whose listed expiries
    are all monthly has no weeklies: this_week/next_week map to this_month/next_month, and a
    note says so. Kinds that have no date (too few expiries listed) are left out, with a note.
    """
    upcoming = sorted({e for e in expiries if e >= day})
    last_of_month: dict[tuple[int, int], dt.date] = {}
    for e in upcoming:
        last_of_month[(e.year, e.month)] = e
    monthly = sorted(last_of_month.values())
    weekly = [e for e in upcoming if e not in monthly]
    has_weekly = bool(weekly)
    candidates = {
        "this_week": upcoming[0:1] if has_weekly else monthly[0:1],
        "next_week": upcoming[1:2] if has_weekly else monthly[1:2],
        "this_month": monthly[0:1],
        "next_month": monthly[1:2],
    }
    out: dict[str, dt.date] = {}
    notes: list[str] = []
    if not has_weekly and any(k in ("this_week", "next_week") for k in kinds):
        notes.append("no weekly expiries: this_week -> this_month, next_week -> next_month")
    for kind in kinds:
        if candidates[kind]:
            out[kind] = candidates[kind][0]
        else:
            notes.append(f"no expiry listed for {kind}")
    return out, tuple(notes)


def strikes_around(spot: float, strikes: Iterable[float], n: int) -> tuple[float, ...]:
    """The listed strikes within ATM +/- n steps, ATM being the listed strike nearest spot."""
    arr = np.unique(np.asarray(list(strikes), dtype=float))
    if arr.size == 0:
        return ()
    atm = int(np.argmin(np.abs(arr - spot)))
    return tuple(arr[max(0, atm - n): atm + n + 1].tolist())
