"""The one interface every source of option chains implements (simulated, kite, replay).

A provider turns (index, minute) into a `Snapshot`: the payload exactly as received, for
the raw archive, and the normalized leg table (`optask.schema.RAW_LEG_SCHEMA`). Parsing a
payload is a pure function of each provider module, so replay reuses it on archived bytes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class Provider(Protocol):
    name: str

    def universe(self, index: str, day: dt.date) -> Universe: ...

    def snapshot(self, index: str, ts: dt.datetime) -> Snapshot: ...

    def history(self, index: str, day: dt.date, minutes: Iterable[dt.datetime]) -> Iterator[Snapshot]: ...


def get_provider(name: str | None = None, settings=None) -> Provider:
    """Map OPTASK_PROVIDER to its class, importing lazily (kiteconnect loads only for kite)."""
    from optask.config import get_settings

    settings = settings or get_settings()
    name = name or settings.market.provider
    if name == "simulated":
        from optask.providers.simulated import SimulatedProvider

        return SimulatedProvider.from_settings(settings)
    if name == "kite":
        from optask.providers.kite import KiteProvider

        return KiteProvider.from_settings(settings)
    if name == "replay":
        from optask.providers.replay import ReplayProvider

        return ReplayProvider.from_settings(settings)
    raise PermanentProviderError(f"unknown provider {name!r}; allowed: simulated, kite, replay")
