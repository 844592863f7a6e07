"""What to collect from Kite: the daily instrument dump and, per index and day, the contracts around every
spot the day has seen (shared by every worker through Redis, so the universe only widens during a day)."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from optask.core.schema import EXPIRY_KINDS, INDICES
from optask.infra.coordination import PREFIX
from optask.infra.fsutil import atomic_write_bytes
from optask.providers.base import PermanentProviderError, Universe, classify_expiries, strikes_around
from optask.providers.kite.client import KiteClient
from optask.providers.kite.parse import spot_of

SPOT_KEYS = {
    "NIFTY": "NSE:NIFTY 50", "BANKNIFTY": "NSE:NIFTY BANK", "FINNIFTY": "NSE:NIFTY FIN SERVICE",
    "MIDCPNIFTY": "NSE:NIFTY MID SELECT", "SENSEX": "BSE:SENSEX", "BANKEX": "BSE:BANKEX",
}
#: Kite's instrument tokens of the indices themselves (the dump's INDICES segment lists them too).
SPOT_TOKENS = {"NIFTY": 256265, "BANKNIFTY": 260105, "FINNIFTY": 257801, "MIDCPNIFTY": 288009, "SENSEX": 265,
               "BANKEX": 274441}
OPTION_SEGMENTS = ("NFO-OPT", "BFO-OPT")

_SPOT_RANGE_LUA = """
local lo = redis.call('HGET', KEYS[1], 'lo')
local hi = redis.call('HGET', KEYS[1], 'hi')
local v = tonumber(ARGV[1])
if not lo or v < tonumber(lo) then lo = ARGV[1]; redis.call('HSET', KEYS[1], 'lo', lo) end
if not hi or v > tonumber(hi) then hi = ARGV[1]; redis.call('HSET', KEYS[1], 'hi', hi) end
redis.call('EXPIRE', KEYS[1], 172800)
return {lo, hi}
"""


@dataclass
class KiteUniverse:
    client: KiteClient
    cache_dir: Path
    strikes_around_atm: int = 20
    expiry_kinds: tuple[str, ...] = EXPIRY_KINDS
    _opening_spot: dict[tuple[str, dt.date], tuple[float, float]] = field(default_factory=dict, repr=False)
    _instruments: dict[dt.date, pa.Table] = field(default_factory=dict, repr=False)

    def instruments(self, day: dt.date) -> pa.Table:
        """The day's instrument dump, from the disk cache or Kite (then cached)."""
        if day in self._instruments:
            return self._instruments[day]
        path = self.cache_dir / f"instruments-{day.isoformat()}.csv"
        if path.exists():
            raw = path.read_bytes()
        else:
            _, raw = self.client.call("instruments", self.client.kite().instruments)
            atomic_write_bytes(path, raw)
        table = pacsv.read_csv(io.BytesIO(raw), convert_options=pacsv.ConvertOptions(
            column_types={"expiry": pa.string(), "name": pa.string(), "tradingsymbol": pa.string()}))
        self._instruments[day] = table
        return table

    def options(self, index: str, day: dt.date) -> dict[str, np.ndarray]:
        """The index's option rows of the dump, as columns."""
        if index not in INDICES:
            raise PermanentProviderError(f"unknown index {index!r}; allowed: {', '.join(INDICES)}")
        t = self.instruments(day).to_pandas()
        t = t[t["segment"].isin(OPTION_SEGMENTS)]
        name = t["name"].fillna("").str.strip()
        symbol_root = t["tradingsymbol"].str.extract(r"^([A-Z]+?)\d", expand=False).fillna("")
        t = t[(name == index) | ((name == "") & (symbol_root == index))]
        t = t[t["expiry"].fillna("") >= day.isoformat()]
        return {
            "token": t["instrument_token"].to_numpy(np.int64), "symbol": t["tradingsymbol"].to_numpy(str),
            "exchange": t["exchange"].to_numpy(str), "expiry": t["expiry"].to_numpy(str),
            "strike": t["strike"].to_numpy(float), "side": t["instrument_type"].to_numpy(str),
            "lot": t["lot_size"].to_numpy(np.int64),
        }

    def spot_token(self, index: str, day: dt.date) -> int:
        """The index's own instrument token, from the dump's INDICES rows (Kite's known token otherwise)."""
        t = self.instruments(day)
        if "segment" in t.column_names:
            name = SPOT_KEYS[index].split(":", 1)[1]
            hit = t.filter(pc.and_(pc.equal(t["segment"], "INDICES"), pc.equal(t["tradingsymbol"], name)))
            if hit.num_rows:
                return int(hit["instrument_token"][0].as_py())
        return SPOT_TOKENS[index]

    def known_range(self, index: str, day: dt.date) -> tuple[float, float] | None:
        """The day's lowest and highest spot seen so far (None before the first)."""
        redis_client = self.client.redis_client
        if redis_client is not None:
            try:
                got = redis_client.hmget(f"{PREFIX}:kite:spot:{day}:{index}", "lo", "hi")
                if all(got):
                    return float(got[0]), float(got[1])
            except Exception:  # noqa: BLE001 - no Redis for a moment: this process's own range
                pass
        return self._opening_spot.get((index, day))

    def spot_range(self, index: str, day: dt.date, spot_now: float | None = None) -> tuple[float, float]:
        """The day's range widened by `spot_now` (quoted now when not given); shared by every worker through
        Redis, so the universe only widens during a day, whichever process collects a minute."""
        if spot_now is None:
            raw, _ = self.client.quote([SPOT_KEYS[index]])
            spot_now = spot_of(raw, SPOT_KEYS[index])
        redis_client = self.client.redis_client
        if redis_client is not None:
            try:
                lo, hi = redis_client.eval(_SPOT_RANGE_LUA, 1, f"{PREFIX}:kite:spot:{day}:{index}", repr(spot_now))
                return float(lo), float(hi)
            except Exception:  # noqa: BLE001 - no Redis for a moment: this process's own range serves
                pass
        lo, hi = self._opening_spot.get((index, day), (spot_now, spot_now))
        self._opening_spot[(index, day)] = (min(lo, spot_now), max(hi, spot_now))
        return self._opening_spot[(index, day)]

    def universe(self, index: str, day: dt.date, spot_now: float | None = None,
                 spot_range: tuple[float, float] | None = None) -> Universe:
        """Expiries by kind and, per expiry, ATM +/- N strikes around every spot the day has seen so far."""
        opts = self.options(index, day)
        if len(opts["token"]) == 0:
            raise PermanentProviderError(f"the instrument dump of {day} lists no {index} options")
        listed = sorted({dt.date.fromisoformat(e) for e in opts["expiry"]})
        expiries, notes = classify_expiries(listed, day, self.expiry_kinds)
        lo, hi = spot_range or self.spot_range(index, day, spot_now)
        strikes: dict[dt.date, tuple[float, ...]] = {}
        for e in set(expiries.values()):
            listed_k = opts["strike"][opts["expiry"] == e.isoformat()]
            inside = listed_k[(listed_k >= lo) & (listed_k <= hi)]
            window = set(strikes_around(lo, listed_k, self.strikes_around_atm)) | set(inside.tolist()) \
                | set(strikes_around(hi, listed_k, self.strikes_around_atm))
            strikes[e] = tuple(sorted(window))
        ks = np.unique(opts["strike"])
        gaps = np.diff(ks)
        step = float(np.bincount(np.round(gaps * 100).astype(int)).argmax() / 100) if gaps.size else 0.0
        lot = int(np.bincount(opts["lot"]).argmax())
        return Universe(index, day, expiries, strikes, step, lot, notes)

    def contracts(self, index: str, day: dt.date, spot_range: tuple[float, float]) -> dict[str, tuple]:
        """The minute's option instruments of an index: Kite key -> (token, expiry, strike, side, kind)."""
        uni = self.universe(index, day, spot_range=spot_range)
        opts = self.options(index, day)
        kind_of: dict[str, str] = {}
        for kind in self.expiry_kinds:
            if kind in uni.expiries:
                kind_of.setdefault(uni.expiries[kind].isoformat(), kind)
        chosen = np.zeros(len(opts["token"]), dtype=bool)
        for e, strikes in uni.strikes.items():  # a few expiries; the legs themselves are selected vectorized
            if e.isoformat() in kind_of:
                chosen |= (opts["expiry"] == e.isoformat()) & np.isin(opts["strike"], strikes)
        idx = np.flatnonzero(chosen)
        keys_arr = np.char.add(np.char.add(opts["exchange"][idx], ":"), opts["symbol"][idx])
        return dict(zip(keys_arr.tolist(), zip(
            opts["token"][idx].tolist(), opts["expiry"][idx].tolist(), opts["strike"][idx].tolist(),
            opts["side"][idx].tolist(), [kind_of[e] for e in opts["expiry"][idx].tolist()], strict=True), strict=True))
