"""The option chain of one minute as a consumer reads it, built in this one place for /v1/chain and the push.

One row per strike with the CE and PE legs side by side, the minute's summary and provenance at the top, and
per leg what the stores do not hold but a trader asks first: the LTP's change against the previous close,
the OI's change against the previous session's last stored minute and against N minutes earlier. A value
whose base minute is not stored is null, never guessed. `build_chain` and its parts are pure functions from
stored rows to the response; `StoredChains` reads those rows from the catalog and holds the rules of which
minute is asked (the latest by default, a session's minute, the nearest stored named when it is not there).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from optask.api.catalog import Catalog, Columns
from optask.api.params import ApiError, iso
from optask.core.calendar import MarketCalendar
from optask.core.pricing import year_fraction
from optask.core.schema import PER_SIDE_COLUMNS
from optask.core.timeutils import IST
from optask.pipeline import parity_forwards

GREEKS = ("delta", "gamma", "theta", "vega")
DERIVED = ("ltp_change", "oi_change", "oi_change_n")
#: What a leg of the chain can carry (`columns=` picks among these).
LEG_COLUMNS: tuple[str, ...] = (*PER_SIDE_COLUMNS, "source", *DERIVED)
SUMMARY_FIELDS = ("atm_iv", "pcr_oi", "pcr_volume", "max_pain", "ce_oi_total", "pe_oi_total", "legs")
#: How the stores label a minute's source, as the API reports it (`live` is Kite's REST quote API).
SOURCE_NAMES = {"live": "rest"}


def choose_expiry(summary: pa.Table, expiry) -> dict:
    """The summary row of the asked expiry (("kind", k) or ("date", d)); the nearest expiry when none is asked."""
    rows = sorted(summary.to_pylist(), key=lambda r: r["expiry"])
    if not rows:
        raise ApiError(404, "at", "the minute has no summary row")
    if expiry is None:
        return rows[0]
    kind, value = expiry
    for row in rows:
        if (kind == "kind" and row["expiry_kind"] == value) or (kind == "date" and row["expiry"] == value):
            return row
    have = ", ".join(f"{r['expiry']} ({r['expiry_kind']})" for r in rows)
    raise ApiError(404, "expiry", f"expiry={value} is not stored at this minute; stored: {have}")


def _of_expiry(legs, expiry: dt.date) -> tuple[Columns, np.ndarray] | None:
    """The rows of one expiry among a minute's legs ((columns, rows), see Catalog.minute_legs)."""
    if legs is None:
        return None
    cols, rows = legs
    days = (expiry - dt.date(1970, 1, 1)).days
    return cols, rows[cols("expiry")[rows] == days]


def _contract_keys(cols: Columns, rows: np.ndarray) -> np.ndarray:
    """One number per (strike, side) of one expiry: strike * 2, plus 1 for a PE."""
    return cols("strike")[rows] * 2 + (cols("side")[rows] == "PE")


def oi_change_against(legs: tuple[Columns, np.ndarray], base) -> np.ndarray:
    """Each leg's OI minus the same contract's OI in `base` (another minute, same expiry); NaN where the contract
    or the base minute is not stored."""
    cols, rows = legs
    out = np.full(len(rows), np.nan)
    if base is None or not len(base[1]):
        return out
    bkeys, boi = _contract_keys(*base), base[0]("oi")[base[1]].astype(float)
    order = np.argsort(bkeys)
    bkeys, boi = bkeys[order], boi[order]
    keys = _contract_keys(cols, rows)
    at = np.clip(np.searchsorted(bkeys, keys), 0, len(bkeys) - 1)
    hit = bkeys[at] == keys
    out[hit] = cols("oi")[rows][hit].astype(float) - boi[at[hit]]
    return out


def strike_window(strikes: np.ndarray, atm: float, atm_window: int | None, asked: list[float] | None) -> np.ndarray:
    if asked is not None:
        return np.array(sorted(set(asked)), dtype=float)
    if atm_window is None or not len(strikes):
        return strikes
    i = int(np.argmin(np.abs(strikes - atm)))
    return strikes[max(0, i - atm_window): i + atm_window + 1]


def forward_of(k: np.ndarray, ce_ltp: np.ndarray, pe_ltp: np.ndarray, ts: dt.datetime, expiry: dt.date,
               rate: float, spot: float) -> float:
    """The forward implied by put-call parity at the strike where CE and PE trade closest (as the summary's ATM);
    k, ce_ltp and pe_ltp per strike (NaN where a side has no row)."""
    if not len(k):
        return spot
    years = year_fraction(ts, np.full(len(k), np.datetime64(expiry, "D")))
    fwd = parity_forwards(k, ce_ltp, pe_ltp, years, rate, np.zeros(len(k), dtype=np.intp), np.array([0]),
                          np.array([spot]))
    return float(fwd[0])


def _as_json_values(values: np.ndarray, nulls: np.ndarray | None, integer: bool) -> list:
    """Values for the response: ints as ints, null where missing (NaN floats stay NaN: orjson writes null)."""
    if integer and values.dtype.kind == "f":  # derived OI changes: NaN where the base is not stored
        out = np.full(len(values), None, dtype=object)
        ok = ~np.isnan(values)
        out[ok] = values[ok].astype(np.int64)
        return out.tolist()
    out = values.tolist()
    if nulls is not None and nulls.any():
        for i in np.flatnonzero(nulls).tolist():
            out[i] = None
    return out


def _side_rows(cols: Columns, rows: np.ndarray, slots: np.ndarray, n: int, fields: list[str], derived: dict,
               tz) -> list[dict | None]:
    """The legs `rows` (one side) placed at their strike's slot among n, as dicts of the chosen fields."""
    values = []
    for f in fields:
        if f in derived:
            values.append(_as_json_values(derived[f], None, f != "ltp_change"))
        elif f == "last_trade_time":
            values.append(cols.iso(f, tz, rows).tolist())
        else:
            nulls = cols.nulls(f)
            values.append(_as_json_values(cols(f)[rows], None if nulls is None else nulls[rows],
                                          cols(f).dtype.kind in "iu"))
    out: list[dict | None] = [None] * n
    for slot, row in zip(slots.tolist(), zip(*values, strict=True) if values else [()] * len(rows), strict=True):
        out[slot] = dict(zip(fields, row, strict=True))
    return out


def build_chain(index: str, ts: dt.datetime, legs, summary: pa.Table, *, expiry=None,
                atm_window: int | None = None, strikes: list[float] | None = None, greeks: bool = True,
                columns: list[str] | None = None, prev: tuple = (None, None), earlier: tuple = (None, None, None),
                ledger_info: dict | None = None, rate: float = 0.065, tz: dt.tzinfo = dt.UTC) -> dict:
    """The response of /v1/chain for one stored minute. `legs` (and the legs of `prev`, the previous session's last
    minute, and of `earlier`, N minutes before) are (Columns, rows) as Catalog.minute_legs gives them."""
    head = choose_expiry(summary, expiry)
    exp = head["expiry"]
    cols, rows = _of_expiry(legs, exp)
    n_minutes, n_ts, n_legs = earlier
    fields = [c for c in (columns or LEG_COLUMNS) if c in LEG_COLUMNS and (greeks or c not in GREEKS)]
    if not n_minutes:
        fields = [c for c in fields if c != "oi_change_n"]
    strike_of = cols("strike")[rows]
    chosen = strike_window(np.unique(strike_of), head["atm_strike"], atm_window, strikes)
    is_pe = cols("side")[rows] == "PE"
    derived = {"ltp_change": cols("ltp")[rows] - cols("close")[rows],
               "oi_change": oi_change_against((cols, rows), _of_expiry(prev[1], exp)),
               "oi_change_n": oi_change_against((cols, rows), _of_expiry(n_legs, exp) if n_minutes else None)}
    every = np.unique(strike_of)
    ltp_at = []  # per strike of the whole chain and side, for the forward (whatever window is asked)
    for pe in (False, True):
        price = np.full(len(every), np.nan)
        price[np.searchsorted(every, strike_of[is_pe == pe])] = cols("ltp")[rows[is_pe == pe]]
        ltp_at.append(price)
    sides = []
    for pe in (False, True):
        mine = np.flatnonzero(is_pe == pe)
        mine = mine[np.argsort(strike_of[mine], kind="stable")]
        at = np.searchsorted(chosen, strike_of[mine])
        keep = (at < len(chosen)) & (chosen[np.minimum(at, len(chosen) - 1)] == strike_of[mine]) if len(chosen) else \
            np.zeros(len(mine), bool)
        sides.append(_side_rows(cols, rows[mine[keep]], at[keep], len(chosen), fields,
                                {k: v[mine[keep]] for k, v in derived.items()}, tz))
    sources = sorted({SOURCE_NAMES.get(s, s) for s in set(cols("source")[rows].tolist()) if s})
    info = ledger_info or {}
    stored_at = info.get("stored_at")
    return {
        "index": index, "ts": iso(ts, tz), "expiry": exp.isoformat(), "expiry_kind": head["expiry_kind"],
        "expiries": [{"expiry": r["expiry"].isoformat(), "expiry_kind": r["expiry_kind"]}
                     for r in sorted(summary.select(["expiry", "expiry_kind"]).to_pylist(), key=lambda r: r["expiry"])],
        "spot": head["spot"], "forward": forward_of(every, *ltp_at, ts, exp, rate, head["spot"]),
        "atm_strike": head["atm_strike"], "summary": {k: head[k] for k in SUMMARY_FIELDS},
        "provenance": {"source": ",".join(sources) or None, "sample_span_ms": head.get("sample_span_ms"),
                       "spot_offset_ms": head.get("spot_offset_ms"),
                       "repaired": None if "live" not in info else not info["live"],
                       "stored_at": iso(dt.datetime.fromtimestamp(stored_at, dt.UTC), tz) if stored_at else None},
        "oi_change_base": {"previous_session_minute": iso(prev[0], tz), "oi_change_minutes": n_minutes,
                           "minutes_earlier": iso(n_ts, tz) if n_legs is not None else None},
        "columns": fields,
        "strikes": [{"strike": k, "ce": c, "pe": p} for k, c, p in zip(chosen.tolist(), *sides, strict=True)],
    }


def asked_minute(index: str, latest: dt.datetime | None, at: dt.datetime | None) -> dt.datetime:
    """The minute a chain is asked of: `at`, else the index's latest stored minute (a 404 when it has none)."""
    ts = latest if at is None else at
    if ts is None:
        raise ApiError(404, "at", f"nothing is stored for {index} yet")
    return ts


@dataclass(frozen=True)
class StoredChains:
    """The chain of any stored minute of the catalog: the session's rules, then `build_chain` on what is stored."""

    catalog: Catalog
    calendar: MarketCalendar
    settings: object = None  # the market's settings (risk-free rate), when the server has them

    def at(self, index: str, ts: dt.datetime, ask: dict, info: dict | None = None,
           oi_change_minutes: int | None = None) -> dict:
        """The /v1/chain document of minute `ts` (`ask`: build_chain's keyword arguments as the request gave them;
        `info`: what the ledger recorded when the minute was stored). A 400 for a day with no session, a 404
        naming the nearest stored minutes for a minute not stored."""
        cat, cal = self.catalog, self.calendar
        day = ts.astimezone(IST).date()
        if not cal.is_trading_day(day):
            raise ApiError(400, "at", f"{day} has no market session (weekend or exchange holiday); the previous "
                           f"session was {cal.previous_trading_day(day)}")
        if not cat.has_minute(index, ts):
            before, after = cat.nearest(index, ts)
            raise ApiError(404, "at", f"{index} has no stored minute at {iso(ts, IST)}; the nearest stored are "
                           f"{iso(before, IST) or 'none'} before and {iso(after, IST) or 'none'} after",
                           nearest_before=iso(before), nearest_after=iso(after))
        prev, earlier = self.previous_session(index, day), self.earlier(index, ts, oi_change_minutes)
        legs = cat.minute_legs(index, ts)
        if legs is None:
            raise ApiError(404, "at", f"{index} has a summary but no legs stored at {iso(ts, IST)}")
        return build_chain(index, ts, legs, cat.minute_rows("summary", index, ts), prev=prev, earlier=earlier,
                           ledger_info=info, rate=self.settings.market.risk_free_rate if self.settings else 0.065,
                           **ask)

    def previous_session(self, index: str, day: dt.date) -> tuple:
        """(the previous session's last stored minute, its OI) or (None, None): the base of `oi_change`."""
        minutes = self.catalog.minutes(index, self.calendar.previous_trading_day(day))
        prev_ts = dt.datetime.fromtimestamp(minutes[-1] / 1e9, dt.UTC) if len(minutes) else None
        return prev_ts, self.catalog.minute_oi(index, prev_ts) if prev_ts else None

    def earlier(self, index: str, ts: dt.datetime, n_minutes: int | None) -> tuple:
        """(n, the minute n before `ts`, its legs when stored): the base of `oi_change_n`."""
        if not n_minutes:
            return n_minutes, None, None
        n_ts = ts - dt.timedelta(minutes=n_minutes)
        return n_minutes, n_ts, self.catalog.minute_legs(index, n_ts) if self.catalog.has_minute(index, n_ts) else None

    async def pushed(self, index: str, ts: dt.datetime, ask: dict, info: dict | None) -> dict:
        """The chain of a stored minute for the push (live.Hub builds each event with it): always in a worker
        thread, cached day or not, so that a replay of thousands of events never holds the event loop."""
        return await asyncio.to_thread(self.at, index, ts, ask, info)
