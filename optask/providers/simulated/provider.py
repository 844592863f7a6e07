"""The simulated venue behind the provider interface: universe, snapshots, history and fault knobs."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from optask.core.calendar import MarketCalendar, get_calendar
from optask.core.pricing import bs_price, year_fraction
from optask.core.schema import EXPIRY_KINDS, INDICES
from optask.core.timeutils import IST
from optask.providers.base import (
    PermanentProviderError,
    Snapshot,
    TemporaryProviderError,
    Universe,
    classify_expiries,
)
from optask.providers.simulated.market import SPECS, TICK, _day_path, _rng, _tick, sim_token
from optask.providers.simulated.parse import parse_document


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


@dataclass(frozen=True)
class _Day:
    """A simulated day's session, classified expiries and spot path, with its running low and high."""

    session: object
    expiries: dict[str, dt.date]
    notes: tuple
    path: np.ndarray
    low: np.ndarray
    high: np.ndarray


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
    #: (index, day) -> what a day's minutes share (expiries, the spot path): built once per process and day.
    _days: dict = field(default_factory=dict, repr=False, compare=False)

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

    def _day(self, index: str, day: dt.date) -> _Day:
        plan = self._days.get((index, day))
        if plan is None:
            if len(self._days) > 64:
                self._days.clear()
            expiries, notes = classify_expiries(self.listed_expiries(index, day), day, self.expiry_kinds)
            path = _day_path(self.seed, index, day, len(self.calendar.session_minutes(day)))
            plan = self._days[(index, day)] = _Day(self.calendar.session(day), expiries, notes, path,
                                                   np.minimum.accumulate(path), np.maximum.accumulate(path))
        return plan

    def day_path(self, index: str, day: dt.date) -> np.ndarray:
        """Spot at every session minute of the day (position 0 is the open)."""
        return self._day(index, day).path

    def _minute_position(self, day: dt.date, ts: dt.datetime, s=None) -> int:
        s = s or self.calendar.session(day)
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
        plan = self._day(index, day)
        upto = 0 if ts is None else self._minute_position(day, ts, plan.session)
        strikes = tuple(self._strike_window(index, float(plan.low[upto]), float(plan.high[upto])).tolist())
        unique = sorted(set(plan.expiries.values()))
        return Universe(index=index, day=day, expiries=dict(plan.expiries), strikes={e: strikes for e in unique},
                        strike_step=spec.strike_step, lot_size=spec.lot_size, notes=plan.notes)

    # --- one minute -------------------------------------------------------------------------

    def chain_columns(self, index: str, ts: dt.datetime) -> dict[str, np.ndarray | list]:
        """The minute's chain as columns (the wire payload's `legs`), fully vectorized."""
        day = ts.astimezone(IST).date()
        uni = self.universe(index, day, ts)
        spec = SPECS[index]
        plan = self._day(index, day)
        pos = self._minute_position(day, ts, plan.session)
        path = plan.path
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

    def document(self, index: str, ts: dt.datetime) -> dict:
        """The venue's message for one minute, before it is encoded."""
        body = self.chain_columns(index, ts)
        return {"venue": "optask-sim", "index": index, "ts": int(ts.timestamp()), "spot": body["spot"],
                "legs": body["legs"]}

    def payload(self, index: str, ts: dt.datetime) -> bytes:
        """The venue's wire payload for one minute (what the archive keeps)."""
        return orjson.dumps(self.document(index, ts), option=orjson.OPT_SERIALIZE_NUMPY)

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
        doc = self.document(index, ts)
        raw = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
        table, issues = parse_document(doc, index, ts, source=self.source)  # what parse_payload(raw) gives
        return Snapshot(index=index, ts=ts, provider="simulated", raw=raw, table=table, issues=issues,
                        elapsed_s=time.perf_counter() - start, sample_span_ms=0.0, spot_offset_ms=0.0)

    def history(self, index: str, day: dt.date, minutes: Iterable[dt.datetime]) -> Iterator[Snapshot]:
        """The same chains rebuilt after the fact (the simulation is deterministic), for backfill."""
        backfill = SimulatedProvider(self.seed, self.strikes_around_atm, self.expiry_kinds, self.rate,
                                     self.calendar, SimFaults(), source="backfill")
        for ts in minutes:
            yield backfill.snapshot(index, ts)
