"""Helpers that tests and users share; `MockDataGenerator` keeps the seed platform's API.

Built on the simulated market, so generated chains are realistic and deterministic.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from optask.core.calendar import MarketCalendar
from optask.core.timeutils import UTC
from optask.providers.simulated import SimulatedProvider


@dataclass(frozen=True)
class OptionLeg:
    """One leg as the seed platform's tests saw it (plus the rest of the canonical columns)."""

    index: str
    expiry: dt.date
    expiry_kind: str
    strike: float
    side: str
    ltp: float
    bid: float
    ask: float
    volume: int
    oi: int
    spot: float
    ts: dt.datetime


class MockDataGenerator:
    """Seeded, realistic option data: legs, chains and a small performance harness."""

    def __init__(self, seed: int = 7, day: dt.date | None = None, strikes_around_atm: int = 20):
        self.calendar = MarketCalendar()
        self.provider = SimulatedProvider(seed=seed, strikes_around_atm=strikes_around_atm, calendar=self.calendar)
        self.day = day or self.calendar.previous_trading_day(dt.datetime.now(UTC).date())
        self._minutes = self.calendar.session_minutes(self.day)
        self._counter = 0

    def _minute(self, minute: int | None) -> dt.datetime:
        return self._minutes[(minute if minute is not None else 0) % len(self._minutes)].to_pydatetime()

    def generate_option_chain(self, index: str = "NIFTY", expiry_kind: str = "this_week",
                              minute: int | None = None) -> list[OptionLeg]:
        """Every leg of one index and expiry kind at one session minute, as OptionLeg objects."""
        table = self.provider.snapshot(index.upper(), self._minute(minute)).table
        rows = [r for r in table.to_pylist() if r["expiry_kind"] == expiry_kind]
        if not rows:  # a kind folded into another (e.g. no weeklies): the same expiry under its first kind
            expiry = self.provider.universe(index.upper(), self.day).expiries[expiry_kind]
            rows = [r for r in table.to_pylist() if r["expiry"] == expiry]
        return [OptionLeg(r["index"], r["expiry"], expiry_kind, r["strike"], r["side"], r["ltp"], r["bid"], r["ask"],
                          r["volume"], r["oi"], r["spot"], r["ts"]) for r in rows]

    def generate_option_leg(self, index: str = "NIFTY") -> OptionLeg:
        """A different leg on every call (cycling through the chain and the session)."""
        chain = self.generate_option_chain(index, "this_week", minute=self._counter // 50)
        leg = chain[self._counter % len(chain)]
        self._counter += 1
        return leg

    @staticmethod
    def run_performance_test(fn: Callable[[], object], iterations: int = 1000) -> dict[str, float]:
        """Call fn `iterations` times; report throughput and latency (also importable as a function)."""
        return run_performance_test(fn, iterations)


def run_performance_test(fn: Callable[[], object], iterations: int = 1000) -> dict[str, float]:
    """Call fn `iterations` times; report throughput and latency. The seed imports it from the module."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    samples = []
    start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    samples.sort()
    return {
        "iterations": iterations, "total_seconds": total, "iterations_per_second": iterations / total,
        "mean_ms": 1000 * total / iterations, "p50_ms": 1000 * samples[len(samples) // 2],
        "p99_ms": 1000 * samples[min(len(samples) - 1, int(len(samples) * 0.99))],
    }
