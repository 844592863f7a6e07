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
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from optask.calendar import MarketCalendar, get_calendar
from optask.pricing import bs_price, year_fraction
from optask.providers.base import (
    PermanentProviderError,
    Snapshot,
    TemporaryProviderError,
    Universe,
    classify_expiries,
)
from optask.schema import EXPIRY_KINDS, INDICES, RAW_LEG_SCHEMA
from optask.timeutils import IST, UTC

log = logging.getLogger(__name__)

TICK = 0.05
MONTH_CODES = "123456789OND"


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


@dataclass(frozen=True)
class SimFaults:
    """Fault knobs for tests of later stages; fractions are of legs per minute."""

    drop_legs: float = 0.0
    stale_quotes: float = 0.0
    bad_prices: float = 0.0  # zero, negative or NaN ltp/bid/ask
    duplicate_legs: float = 0.0
    crossed_book: float = 0.0
    missing_minutes: frozenset[dt.datetime] = frozenset()
    slow_s: float = 0.0
    outage_file: Path | None = None  # while this file exists the venue is down

    @property
    def any_leg_faults(self) -> bool:
        return any((self.drop_legs, self.stale_quotes, self.bad_prices, self.duplicate_legs, self.crossed_book))


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


@dataclass
class SimulatedProvider:
    """The simulated venue. `strikes_around_atm` and `expiry_kinds` shape the universe."""

    seed: int = 7
    strikes_around_atm: int = 20
    expiry_kinds: tuple[str, ...] = EXPIRY_KINDS
    rate: float = 0.065
    calendar: MarketCalendar = field(default_factory=MarketCalendar)
    faults: SimFaults = field(default_factory=SimFaults)
    name: str = "simulated"
    source: str = "simulated"

    @classmethod
    def from_settings(cls, settings) -> SimulatedProvider:
        m = settings.market
        faults = SimFaults(slow_s=m.sim_slow_s, outage_file=Path(m.sim_outage_file) if m.sim_outage_file else None)
        return cls(seed=m.sim_seed, strikes_around_atm=m.strikes_around_atm, expiry_kinds=m.expiry_kinds,
                   rate=m.risk_free_rate, calendar=get_calendar(settings.data.calendar_overrides), faults=faults)

    # --- the day: expiries and the spot path -------------------------------------------------

    def listed_expiries(self, index: str, day: dt.date) -> list[dt.date]:
        """Weekly and monthly expiries listed on `day` for the next ~70 days, moved off holidays."""
        spec = SPECS[index]
        out: set[dt.date] = set()
        for offset in range(0, 75):
            d = day + dt.timedelta(days=offset)
            if d.weekday() != spec.expiry_weekday:
                continue
            last_of_month = (d + dt.timedelta(days=7)).month != d.month
            if spec.weekly or last_of_month:
                out.add(self.calendar.trading_day_on_or_before(d))
        return sorted(e for e in out if e >= day)

    def day_path(self, index: str, day: dt.date) -> np.ndarray:
        """Spot at every session minute of the day (position 0 is the open)."""
        return _day_path(self.seed, index, day, len(self.calendar.session_minutes(day)))

    def _minute_position(self, day: dt.date, ts: dt.datetime) -> int:
        s = self.calendar.session(day)
        if s is None or not (s.open <= ts < s.close):
            raise PermanentProviderError(f"{ts.astimezone(IST):%Y-%m-%d %H:%M} IST is outside a market session")
        return int((ts - s.open).total_seconds() // 60)

    def _strike_window(self, index: str, lo_spot: float, hi_spot: float) -> np.ndarray:
        step = SPECS[index].strike_step
        n = self.strikes_around_atm
        lo = (np.round(lo_spot / step) - n) * step
        hi = (np.round(hi_spot / step) + n) * step
        return np.arange(lo, hi + step / 2, step)

    def universe(self, index: str, day: dt.date, ts: dt.datetime | None = None) -> Universe:
        """Expiries by kind and strikes ATM +/- N around the open, widened by the spot's range up to `ts`."""
        if index not in SPECS:
            raise PermanentProviderError(f"unknown index {index!r}; allowed: {', '.join(INDICES)}")
        spec = SPECS[index]
        expiries, notes = classify_expiries(self.listed_expiries(index, day), day, self.expiry_kinds)
        path = self.day_path(index, day)
        upto = 1 if ts is None else self._minute_position(day, ts) + 1
        seen = path[:upto]
        strikes = tuple(self._strike_window(index, float(seen.min()), float(seen.max())).tolist())
        unique = sorted(set(expiries.values()))
        return Universe(index=index, day=day, expiries=expiries, strikes={e: strikes for e in unique},
                        strike_step=spec.strike_step, lot_size=spec.lot_size, notes=notes)

    # --- one minute -------------------------------------------------------------------------

    def chain_columns(self, index: str, ts: dt.datetime) -> dict[str, np.ndarray | list]:
        """The minute's chain as columns (the wire payload's `legs`), fully vectorized."""
        day = ts.astimezone(IST).date()
        pos = self._minute_position(day, ts)
        uni = self.universe(index, day, ts)
        spec = SPECS[index]
        path = self.day_path(index, day)
        spot = float(path[pos])
        kind_of: dict[dt.date, str] = {}
        for kind in self.expiry_kinds:  # a date under two kinds is collected once, under its first kind
            if kind in uni.expiries:
                kind_of.setdefault(uni.expiries[kind], kind)
        expiries = sorted(kind_of)
        strikes = np.asarray(uni.strikes[expiries[0]], dtype=float)
        n_s, n_e = len(strikes), len(expiries)
        # Grid: expiry-major, then strike, then side (CE, PE).
        e_idx = np.repeat(np.arange(n_e), n_s * 2)
        k = np.tile(np.repeat(strikes, 2), n_e)
        is_call = np.tile(np.array([True, False]), n_e * n_s)
        exp_dates = np.asarray(expiries, dtype="datetime64[D]")[e_idx]
        t = np.maximum(year_fraction(ts, exp_dates), 1e-6)
        q = 0.0
        fwd = spot * np.exp((self.rate - q) * t)
        # Surface: ATM level with term structure and an intraday component tied to the spot move,
        # skew and smile in normalised moneyness.
        move = np.log(spot / path[0])
        atm = spec.base_vol * (1.0 + 0.25 * np.exp(-t * 52.0)) * (1.0 - 4.0 * move)
        x = np.log(k / fwd) / (atm * np.sqrt(t))  # standard deviations from the forward
        xs = 2.5 * np.tanh(x / 2.5)  # smooth, flat far wings keep the smile free of butterfly arbitrage
        iv = np.clip(atm * (1.0 - 0.12 * xs + 0.06 * xs * xs), 0.04, 2.5)
        theo = bs_price(spot, k, t, self.rate, iv, is_call, q)
        # Quotes never sit below the discounted intrinsic value (no venue shows a free lunch).
        intrinsic = np.exp(-self.rate * t) * np.maximum(np.where(is_call, fwd - k, k - fwd), 0.0)
        mid = np.maximum(np.round(np.maximum(np.round(theo / TICK), np.ceil(intrinsic / TICK - 1e-9)) * TICK, 2), TICK)
        days_left = t * 365.0
        half = np.maximum(TICK, mid * (0.0015 + 0.004 * np.abs(x)) * (1.0 + 1.5 / (days_left + 0.5)))
        half = _tick(half)
        bid = np.maximum(_tick(mid - half), 0.0)
        ask = _tick(mid + half)
        rng = _rng(self.seed, index, day.toordinal(), pos, "minute")
        n = len(k)
        ticks_off = rng.integers(-1, 2, n) * TICK
        ltp = np.clip(_tick(mid + ticks_off), np.maximum(bid, TICK), np.maximum(ask, TICK))
        # Volume: the day's total for the contract times the U-shaped share traded so far.
        contract_rng = _rng(self.seed, index, day.toordinal(), "contracts")
        base_rng = contract_rng.random(n)
        activity = np.exp(-1.2 * np.abs(x)) * (1.0 + 2.0 / (days_left + 1.0))
        sess = max(len(path) - 1, 1)
        frac = pos / sess
        share = (frac + 1.5 * (frac - 0.5) ** 3 + 0.1875) / 1.375  # integral of a U-shaped intensity, 0..1
        day_volume = (spec.lot_size * 4_000 * activity * (0.5 + base_rng)).astype(np.int64)
        volume = (day_volume * share).astype(np.int64) + spec.lot_size * (pos > 0)
        oi_base = spec.lot_size * 20_000 * activity * (0.5 + base_rng[::-1])
        oi = (oi_base * (1.0 + 0.15 * frac * (base_rng - 0.4))).astype(np.int64) // spec.lot_size * spec.lot_size
        qty = spec.lot_size * rng.integers(1, 40, (2, n))
        open_px = np.maximum(_tick(mid * np.exp(-move * np.where(is_call, 8, -8))), TICK)
        close_px = np.maximum(_tick(open_px * (1 + 0.03 * (base_rng - 0.5))), TICK)
        high = _tick(np.maximum.reduce([open_px, ltp, mid]) + _tick(mid * 0.02 * base_rng))
        low = np.maximum(_tick(np.minimum.reduce([open_px, ltp, mid]) - _tick(mid * 0.02 * base_rng)), TICK)
        ts_epoch = int(ts.timestamp())
        ltt = ts_epoch - rng.integers(0, 60, n)
        token = sim_token(index, exp_dates.astype(np.int64), np.round(k / spec.strike_step).astype(np.int64), ~is_call)
        cols = {
            "expiry": [e.isoformat() for e in expiries],  # dictionary: legs carry the position
            "expiry_idx": e_idx, "strike": k, "side": np.where(is_call, "CE", "PE").tolist(), "token": token,
            "ltp": ltp, "bid": bid, "ask": ask, "bid_qty": qty[0], "ask_qty": qty[1], "volume": volume,
            "oi": oi, "open": open_px, "high": high, "low": low, "close": close_px, "last_trade_time": ltt,
        }
        cols["kind"] = [kind_of[e] for e in expiries]
        if self.faults.any_leg_faults:
            cols = self._apply_faults(cols, rng, ts_epoch)
        return {"spot": spot, "legs": cols}

    def _apply_faults(self, cols: dict, rng: np.random.Generator, ts_epoch: int) -> dict:
        f = self.faults
        n = len(cols["strike"])
        per_leg = [c for c in cols if c not in ("expiry", "kind")]
        cols["side"] = np.asarray(cols["side"])
        keep = rng.random(n) >= f.drop_legs
        for c in per_leg:
            cols[c] = np.asarray(cols[c])[keep]
        n = int(keep.sum())
        stale = rng.random(n) < f.stale_quotes
        cols["last_trade_time"] = np.where(stale, ts_epoch - 3600, cols["last_trade_time"])
        bad = np.flatnonzero(rng.random(n) < f.bad_prices)
        if bad.size:
            choice = np.array([0.0, -5.0, np.nan])[bad % 3]
            for c in ("ltp", "bid", "ask"):
                cols[c] = cols[c].astype(float)
                cols[c][bad] = choice
        crossed = rng.random(n) < f.crossed_book
        bid, ask = cols["bid"].copy(), cols["ask"].copy()
        cols["bid"] = np.where(crossed, ask + 1.0, bid)
        cols["ask"] = np.where(crossed, bid, ask)
        dup = np.flatnonzero(rng.random(n) < f.duplicate_legs)
        if dup.size:
            for c in per_leg:
                cols[c] = np.concatenate([cols[c], np.asarray(cols[c])[dup]])
        cols["side"] = cols["side"].tolist()
        return cols

    def payload(self, index: str, ts: dt.datetime) -> bytes:
        """The venue's wire payload for one minute (what the archive keeps)."""
        body = self.chain_columns(index, ts)
        doc = {"venue": "optask-sim", "index": index, "ts": int(ts.timestamp()), "spot": body["spot"],
               "legs": body["legs"]}
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

    def snapshot(self, index: str, ts: dt.datetime) -> Snapshot:
        start = time.perf_counter()
        if index not in SPECS:
            raise PermanentProviderError(f"unknown index {index!r}; allowed: {', '.join(INDICES)}")
        f = self.faults
        if f.outage_file is not None and Path(f.outage_file).exists():
            raise TemporaryProviderError(f"simulated venue down (outage file {f.outage_file} exists)")
        if ts in f.missing_minutes:
            raise TemporaryProviderError(f"simulated venue has no data for {ts.isoformat()}")
        if f.slow_s:
            time.sleep(f.slow_s)
        raw = self.payload(index, ts)
        table, issues = parse_payload(raw, index, ts, source=self.source)
        return Snapshot(index=index, ts=ts, provider="simulated", raw=raw, table=table, issues=issues,
                        elapsed_s=time.perf_counter() - start, sample_span_ms=0.0, spot_offset_ms=0.0)

    def history(self, index: str, day: dt.date, minutes: Iterable[dt.datetime]) -> Iterator[Snapshot]:
        """The same chains rebuilt after the fact (the simulation is deterministic), for backfill."""
        backfill = SimulatedProvider(self.seed, self.strikes_around_atm, self.expiry_kinds, self.rate,
                                     self.calendar, SimFaults(), source="backfill")
        for ts in minutes:
            yield backfill.snapshot(index, ts)


# --- parsing: a pure function of the payload bytes ---------------------------------------------

_NUMERIC = (
    "strike", "token", "ltp", "bid", "ask", "bid_qty", "ask_qty", "volume", "oi", "open", "high", "low", "close",
    "last_trade_time",
)
_REQUIRED = ("expiry", "expiry_idx", "strike", "side", "token", "ltp")


def _empty(issues: dict[str, int]) -> tuple[pa.Table, dict[str, int]]:
    return RAW_LEG_SCHEMA.empty_table(), issues


def _as_float(values: list, issues: dict[str, int], name: str) -> np.ndarray:
    """Numbers to float; anything else (strings, None, nested) becomes NaN and is counted."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        out = np.array([v if isinstance(v, int | float) and not isinstance(v, bool) else np.nan for v in values],
                       dtype=np.float64)
        bad = int(np.isnan(out).sum() - sum(1 for v in values if isinstance(v, float) and np.isnan(v)))
        issues[f"non_numeric_{name}"] = issues.get(f"non_numeric_{name}", 0) + bad
        return out


def parse_payload(raw: bytes, index: str, ts: dt.datetime, source: str = "simulated") -> tuple[pa.Table, dict[str, int]]:
    """Wire payload -> normalized legs (RAW_LEG_SCHEMA) and counted issues. Never raises on bad input."""
    issues: dict[str, int] = {}
    try:
        doc = orjson.loads(raw)
        legs = doc["legs"]
        spot = float(doc["spot"])
        n = len(legs["strike"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("malformed simulated payload for %s %s: %s", index, ts.isoformat(), exc)
        return _empty({"malformed_payload": 1})
    missing = [c for c in _REQUIRED if c not in legs]
    if missing:
        return _empty({f"missing_field_{missing[0]}": max(n, 1)})
    cols: dict[str, np.ndarray] = {}
    for name in _NUMERIC:
        values = legs.get(name)
        if values is None or len(values) != n:
            issues[f"missing_field_{name}"] = n
            values = [np.nan] * n
        arr = _as_float(values, issues, name)
        cols[name] = arr
    expiries = legs["expiry"]
    kinds = legs.get("kind") or ["" for _ in expiries]
    e_idx = _as_float(legs["expiry_idx"], issues, "expiry_idx")
    valid = (~np.isnan(cols["strike"])) & (~np.isnan(e_idx)) & (~np.isnan(cols["token"]))
    valid &= (e_idx >= 0) & (e_idx < len(expiries))
    side = np.asarray(legs["side"], dtype=object)
    valid &= np.isin(side, ["CE", "PE"])
    bad = int((~valid).sum())
    if bad:
        issues["unidentifiable_leg"] = issues.get("unidentifiable_leg", 0) + bad
    try:
        expiry_dates = np.asarray([dt.date.fromisoformat(e) for e in expiries], dtype="datetime64[D]")
    except (TypeError, ValueError):
        return _empty({"malformed_expiry": max(n, 1)})
    idx = e_idx[valid].astype(np.int64)
    m = int(valid.sum())
    ts_utc = np.datetime64(ts.astimezone(UTC).replace(tzinfo=None), "ns")

    def num(name: str, kind: str = "f") -> pa.Array:
        v = cols[name][valid]
        if kind == "i":
            mask = np.isnan(v)
            return pa.array(np.where(mask, 0, v).astype(np.int64), mask=mask, type=pa.int64())
        return pa.array(v, type=pa.float64())

    ltt = cols["last_trade_time"][valid]
    ltt_mask = np.isnan(ltt)
    table = pa.table({
        "ts": pa.array(np.full(m, ts_utc), type=pa.timestamp("ns", tz="UTC")),
        "index": pa.array([index] * m, type=pa.string()),
        "expiry": pa.array(expiry_dates[idx], type=pa.date32()),
        "expiry_kind": pa.DictionaryArray.from_arrays(pa.array(idx, type=pa.int32()),
                                                      pa.array(kinds, type=pa.string())).cast(pa.string()),
        "strike": num("strike"),
        "side": pa.array(side[valid].astype(str), type=pa.string()),
        "symbol": pa.array(_symbols(index, expiry_dates[idx], cols["strike"][valid], side[valid]), type=pa.string()),
        "token": num("token", "i"),
        "spot": pa.array(np.full(m, spot), type=pa.float64()),
        "ltp": num("ltp"), "bid": num("bid"), "ask": num("ask"),
        "bid_qty": num("bid_qty", "i"), "ask_qty": num("ask_qty", "i"), "volume": num("volume", "i"),
        "oi": num("oi", "i"),
        "open": num("open"), "high": num("high"), "low": num("low"), "close": num("close"),
        "last_trade_time": pa.array((np.where(ltt_mask, 0, ltt).astype(np.int64) * 1_000_000_000),
                                    mask=ltt_mask, type=pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
        "source": pa.array([source] * m, type=pa.string()),
    }, schema=RAW_LEG_SCHEMA)
    return table, issues


def _symbols(index: str, expiry: np.ndarray, strike: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Exchange-style trading symbols, e.g. NIFTY25D2326000CE (weekly) or NIFTY25DEC26000CE (monthly)."""
    out = np.empty(len(strike), dtype=object)
    if len(strike) == 0:
        return out
    uniq, inverse = np.unique(expiry, return_inverse=True)
    prefixes = []
    for e in uniq.astype(object):
        last_of_month = (e + dt.timedelta(days=7)).month != e.month
        if last_of_month:
            prefixes.append(f"{index}{e:%y}{e.strftime('%b').upper()}")
        else:
            prefixes.append(f"{index}{e:%y}{MONTH_CODES[e.month - 1]}{e:%d}")
    strike_txt = np.char.mod("%g", strike)
    pre = np.asarray(prefixes, dtype=object)[inverse]
    return (pre + strike_txt.astype(object) + side.astype(object)).astype(str)
