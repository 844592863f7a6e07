"""A realistic simulated NSE/BSE option market: the embedded default and every test's venue.

A full peer of the Kite provider: the same interface, a wire payload of its own (columnar
JSON) and a pure `parse_payload` that replay reuses. Deterministic: the same (seed, index,
day, minute) gives the same chain in any order of calls, because every random draw comes
from a generator seeded by a hash of exactly those values.

The market: spot follows an intraday path with U-shaped volatility and occasional jumps;
implied volatility has skew, smile and term structure; prices are Black-Scholes on that
surface rounded to the 0.05 tick; spreads widen away from ATM and near expiry; volume is
U-shaped through the day and OI drifts.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from optask.core.schema import INDICES

TICK = 0.05


@dataclass(frozen=True)
class IndexSpec:
    base_spot: float
    strike_step: float
    lot_size: int
    exchange: str  # NFO or BFO
    expiry_weekday: int  # Monday = 0
    weekly: bool
    base_vol: float


SPECS: dict[str, IndexSpec] = {
    "NIFTY": IndexSpec(24_500.0, 50.0, 75, "NFO", 1, True, 0.13),
    "BANKNIFTY": IndexSpec(52_000.0, 100.0, 35, "NFO", 1, False, 0.15),
    "FINNIFTY": IndexSpec(23_500.0, 50.0, 65, "NFO", 1, False, 0.14),
    "MIDCPNIFTY": IndexSpec(12_500.0, 25.0, 140, "NFO", 1, False, 0.17),
    "SENSEX": IndexSpec(80_500.0, 100.0, 20, "BFO", 3, True, 0.13),
    "BANKEX": IndexSpec(58_000.0, 100.0, 30, "BFO", 3, False, 0.15),
}
_INDEX_ID = {name: i + 1 for i, name in enumerate(INDICES)}


def sim_token(index: str, expiry_days, strike_steps, is_put):
    """Kite-shaped instrument tokens (32 bits: exchange token << 8 | segment code, NFO 2 / BFO 5), so a
    simulated contract streams through KiteTicker's packets like a real one: index in bits 29-31, expiry
    (days mod 128) in 22-28, strike steps (mod 8192) in 9-21, put in bit 8."""
    segment = 2 if SPECS[index].exchange == "NFO" else 5
    exchange_token = (_INDEX_ID[index] << 21 | (np.asarray(expiry_days) % 128) << 14
                      | (np.asarray(strike_steps) % 8192) << 1 | np.asarray(is_put).astype(np.int64))
    return exchange_token << 8 | segment


def index_of_token(token: int) -> str | None:
    """The index a simulated option token belongs to."""
    i = (int(token) >> 29) - 1
    return INDICES[i] if 0 <= i < len(INDICES) else None


def _tick(x: np.ndarray) -> np.ndarray:
    """Round to the 0.05 tick, printed as the exchange prints it (no binary fraction residue)."""
    return np.round(np.round(np.asarray(x) / TICK) * TICK, 2)


def _rng(*parts: object) -> np.random.Generator:
    """A generator seeded by a stable hash of `parts`: same inputs, same draws, in any process."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    return np.random.Generator(np.random.Philox(int.from_bytes(digest, "little")))


@functools.lru_cache(maxsize=512)
def _day_path(seed: int, index: str, day: dt.date, n_minutes: int) -> np.ndarray:
    """The day's intraday spot path: U-shaped volatility, occasional jumps; pure in its arguments."""
    spec = SPECS[index]
    n = max(n_minutes, 1)
    rng = _rng(seed, index, day.toordinal(), "path")
    # The opening level drifts slowly over the calendar, with a daily gap.
    drift = 0.08 * np.sin(day.toordinal() / 40.0) + 0.05 * np.sin(day.toordinal() / 173.0)
    open_spot = spec.base_spot * np.exp(drift + 0.006 * rng.standard_normal())
    t = np.arange(n) / max(n - 1, 1)
    u_shape = 0.6 + 2.4 * (2 * t - 1) ** 2  # busier at the open and the close
    sigma_min = spec.base_vol / np.sqrt(252 * 375)
    steps = sigma_min * u_shape * rng.standard_normal(n)
    jumps = (rng.random(n) < 0.004) * rng.normal(0.0, 0.002, n)
    steps[0] = jumps[0] = 0.0
    path = np.round(open_spot * np.exp(np.cumsum(steps + jumps)), 2)
    path.setflags(write=False)
    return path
