"""The option chain of one minute as a consumer reads it: pure functions from stored rows to the response.

One row per strike with the CE and PE legs side by side, the minute's summary and provenance at the top, and
per leg what the stores do not hold but a trader asks first: the LTP's change against the previous close,
the OI's change against the previous session's last stored minute and against N minutes earlier. A value
whose base minute is not stored is null, never guessed.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from optask.api.formats import iso_column
from optask.api.params import ApiError, iso
from optask.core.pricing import year_fraction
from optask.core.schema import PER_SIDE_COLUMNS
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


def _of_expiry(legs: pa.Table | None, expiry: dt.date) -> pa.Table | None:
    if legs is None or not legs.num_columns or not legs.num_rows:
        return None
    return legs.filter(pc.equal(legs["expiry"], pa.scalar(expiry, legs.schema.field("expiry").type)))


def _contract_keys(t: pa.Table) -> np.ndarray:
    """One number per (strike, side) of one expiry: strike * 2, plus 1 for a PE."""
    return t["strike"].to_numpy(zero_copy_only=False) * 2 + pc.equal(t["side"], "PE").to_numpy(zero_copy_only=False)


def oi_change_against(legs: pa.Table, base: pa.Table | None) -> np.ndarray:
    """Each leg's OI minus the same contract's OI in `base` (another minute, same expiry); NaN where the contract
    or the base minute is not stored."""
    out = np.full(legs.num_rows, np.nan)
    if base is None or not base.num_rows:
        return out
    bkeys, boi = _contract_keys(base), base["oi"].to_numpy(zero_copy_only=False).astype(float)
    order = np.argsort(bkeys)
    bkeys, boi = bkeys[order], boi[order]
    keys = _contract_keys(legs)
    at = np.clip(np.searchsorted(bkeys, keys), 0, max(len(bkeys) - 1, 0))
    hit = bkeys[at] == keys
    out[hit] = legs["oi"].to_numpy(zero_copy_only=False).astype(float)[hit] - boi[at[hit]]
    return out


def strike_window(strikes: np.ndarray, atm: float, atm_window: int | None, asked: list[float] | None) -> np.ndarray:
    if asked is not None:
        return np.array(sorted(set(asked)), dtype=float)
    if atm_window is None or not len(strikes):
        return strikes
    i = int(np.argmin(np.abs(strikes - atm)))
    return strikes[max(0, i - atm_window): i + atm_window + 1]


def forward_of(ce: pa.Table, pe: pa.Table, ts: dt.datetime, expiry: dt.date, rate: float, spot: float) -> float:
    """The forward implied by put-call parity at the strike where CE and PE trade closest (as the summary's ATM)."""
    k = np.intersect1d(ce["strike"].to_numpy(), pe["strike"].to_numpy())
    if not len(k):
        return spot

    def ltp_at(t: pa.Table) -> np.ndarray:
        strikes, ltp = t["strike"].to_numpy(), t["ltp"].to_numpy(zero_copy_only=False).astype(float)
        order = np.argsort(strikes)
        return ltp[order][np.searchsorted(strikes[order], k)]

    years = year_fraction(ts, np.full(len(k), np.datetime64(expiry, "D")))
    fwd = parity_forwards(k, ltp_at(ce), ltp_at(pe), years, rate, np.zeros(len(k), dtype=np.intp), np.array([0]),
                          np.array([spot]))
    return float(fwd[0])


def _side_rows(part: pa.Table, chosen: np.ndarray, fields: list[str]) -> list[dict | None]:
    """The legs of one side at the chosen strikes, as dicts of the chosen fields (None where no row)."""
    strikes = part["strike"].to_numpy(zero_copy_only=False)
    order = np.argsort(strikes)
    at = np.searchsorted(strikes[order], chosen).clip(0, max(len(strikes) - 1, 0))
    found = (strikes[order][at] == chosen) if len(strikes) else np.zeros(len(chosen), bool)
    rows = (part.take(pa.array(order[at][found])) if found.any() else part.slice(0, 0)).select(fields)
    records = rows.to_pylist()
    out: list[dict | None] = [None] * len(chosen)
    for slot, rec in zip(np.flatnonzero(found).tolist(), records, strict=True):
        out[slot] = rec
    return out


def with_changes(legs: pa.Table, prev: pa.Table | None, earlier: pa.Table | None) -> pa.Table:
    """ltp_change (vs the previous close), oi_change (vs the previous session's last minute), oi_change_n (vs N
    minutes earlier); nulls where the base is not stored."""
    ltp, close = (legs[c].to_numpy(zero_copy_only=False).astype(float) for c in ("ltp", "close"))
    out = legs.append_column("ltp_change", pa.array(ltp - close, pa.float64()))
    for name, base in (("oi_change", prev), ("oi_change_n", earlier)):
        change = oi_change_against(legs, base)
        out = out.append_column(name, pa.array(change, pa.float64(), mask=np.isnan(change)).cast(pa.int64()))
    return out


def build_chain(index: str, ts: dt.datetime, legs: pa.Table, summary: pa.Table, *, expiry=None,
                atm_window: int | None = None, strikes: list[float] | None = None, greeks: bool = True,
                columns: list[str] | None = None, prev: tuple[dt.datetime | None, pa.Table | None] = (None, None),
                earlier: tuple[int | None, dt.datetime | None, pa.Table | None] = (None, None, None),
                ledger_info: dict | None = None, rate: float = 0.065, tz: dt.tzinfo = dt.UTC) -> dict:
    """The response of /v1/chain for one stored minute."""
    head = choose_expiry(summary, expiry)
    exp = head["expiry"]
    mine = _of_expiry(legs, exp)
    n_minutes, n_ts, n_legs = earlier
    mine = with_changes(mine, _of_expiry(prev[1], exp), _of_expiry(n_legs, exp) if n_minutes else None)
    fields = [c for c in (columns or LEG_COLUMNS) if c in LEG_COLUMNS and (greeks or c not in GREEKS)]
    if not n_minutes:
        fields = [c for c in fields if c != "oi_change_n"]
    chosen = strike_window(np.unique(mine["strike"].to_numpy()), head["atm_strike"], atm_window, strikes)
    if "last_trade_time" in mine.column_names:
        at = mine.schema.get_field_index("last_trade_time")
        mine = mine.set_column(at, "last_trade_time", iso_column(mine["last_trade_time"], tz))
    side_tables = {side: mine.filter(pc.equal(mine["side"], side)) for side in ("CE", "PE")}
    ce, pe = (_side_rows(side_tables[side], chosen, fields) for side in ("CE", "PE"))
    sources = sorted({SOURCE_NAMES.get(s, s) for s in pc.unique(mine["source"]).to_pylist() if s})
    info = ledger_info or {}
    stored_at = info.get("stored_at")
    return {
        "index": index, "ts": iso(ts, tz), "expiry": exp.isoformat(), "expiry_kind": head["expiry_kind"],
        "expiries": [{"expiry": r["expiry"].isoformat(), "expiry_kind": r["expiry_kind"]}
                     for r in sorted(summary.select(["expiry", "expiry_kind"]).to_pylist(), key=lambda r: r["expiry"])],
        "spot": head["spot"], "forward": forward_of(side_tables["CE"], side_tables["PE"], ts, exp, rate, head["spot"]), "atm_strike": head["atm_strike"],
        "summary": {k: head[k] for k in SUMMARY_FIELDS},
        "provenance": {"source": ",".join(sources) or None, "sample_span_ms": head.get("sample_span_ms"),
                       "spot_offset_ms": head.get("spot_offset_ms"),
                       "repaired": None if "live" not in info else not info["live"],
                       "stored_at": iso(dt.datetime.fromtimestamp(stored_at, dt.UTC), tz) if stored_at else None},
        "oi_change_base": {"previous_session_minute": iso(prev[0], tz), "oi_change_minutes": n_minutes,
                           "minutes_earlier": iso(n_ts, tz) if n_legs is not None else None},
        "columns": fields,
        "strikes": [{"strike": k, "ce": c, "pe": p} for k, c, p in zip(chosen.tolist(), ce, pe, strict=True)],
    }
