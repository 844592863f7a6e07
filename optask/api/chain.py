"""The option chain of one minute as a consumer reads it: pure functions from stored rows to the response.

One row per strike with the CE and PE legs side by side, the minute's summary and provenance at the top, and
per leg what the stores do not hold but a trader asks first: the LTP's change against the previous close,
the OI's change against the previous session's last stored minute and against N minutes earlier. A value
whose base minute is not stored is null, never guessed.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

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
    rows = summary.sort_by([("expiry", "ascending")]).to_pylist()
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


def oi_at(legs: pa.Table | None, expiry: dt.date) -> pd.DataFrame | None:
    """(strike, side) -> oi of one expiry at a base minute, or None when that minute is not stored."""
    if legs is None or not legs.num_columns or not legs.num_rows:
        return None
    df = legs.select(["expiry", "strike", "side", "oi"]).to_pandas()
    return df[df["expiry"] == expiry].drop(columns="expiry").set_index(["strike", "side"])["oi"]


def with_changes(legs: pd.DataFrame, prev_oi: pd.Series | None, n_oi: pd.Series | None) -> pd.DataFrame:
    """ltp_change, oi_change (vs the previous session's last minute), oi_change_n (vs N minutes earlier)."""
    out = legs.copy()
    out["ltp_change"] = out["ltp"] - out["close"]
    key = pd.MultiIndex.from_arrays([out["strike"], out["side"]])
    for name, base in (("oi_change", prev_oi), ("oi_change_n", n_oi)):
        if base is None:
            out[name] = pd.array([pd.NA] * len(out), dtype="Int64")
        else:
            out[name] = (out["oi"].astype("Int64").to_numpy() - base.reindex(key).astype("Int64").to_numpy())
    return out


def strike_window(strikes: np.ndarray, atm: float, atm_window: int | None, asked: list[float] | None) -> np.ndarray:
    if asked is not None:
        return np.array(sorted(set(asked)), dtype=float)
    if atm_window is None or not len(strikes):
        return strikes
    i = int(np.argmin(np.abs(strikes - atm)))
    return strikes[max(0, i - atm_window): i + atm_window + 1]


def forward_of(legs: pd.DataFrame, ts: dt.datetime, expiry: dt.date, rate: float, spot: float) -> float:
    """The forward implied by put-call parity at the strike where CE and PE trade closest (as the summary's ATM)."""
    ce = legs[legs["side"] == "CE"].set_index("strike")["ltp"]
    pe = legs[legs["side"] == "PE"].set_index("strike")["ltp"]
    both = pd.concat([ce.rename("c"), pe.rename("p")], axis=1).sort_index()
    if both.empty:
        return spot
    k = both.index.to_numpy(float)
    t = year_fraction(np.array([np.datetime64(ts.replace(tzinfo=None), "ns")] * len(k)),
                      np.array([np.datetime64(expiry, "D")] * len(k)))
    fwd = parity_forwards(k, both["c"].to_numpy(float), both["p"].to_numpy(float), t, rate,
                          np.zeros(len(k), dtype=np.intp), np.array([0]), np.array([spot]))
    return float(fwd[0])


def build_chain(index: str, ts: dt.datetime, legs: pa.Table, summary: pa.Table, *, expiry=None,
                atm_window: int | None = None, strikes: list[float] | None = None, greeks: bool = True,
                columns: list[str] | None = None, prev: tuple[dt.datetime | None, pa.Table | None] = (None, None),
                earlier: tuple[int | None, dt.datetime | None, pa.Table | None] = (None, None, None),
                ledger_info: dict | None = None, rate: float = 0.065, tz: dt.tzinfo = dt.UTC) -> dict:
    """The response of /v1/chain for one stored minute."""
    head = choose_expiry(summary, expiry)
    exp = head["expiry"]
    df = legs.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    df = df[df["expiry"] == exp]
    n_minutes, n_ts, n_legs = earlier
    df = with_changes(df, oi_at(prev[1], exp), oi_at(n_legs, exp) if n_minutes else None)
    fields = [c for c in (columns or LEG_COLUMNS) if c in LEG_COLUMNS and (greeks or c not in GREEKS)]
    if not n_minutes:
        fields = [c for c in fields if c != "oi_change_n"]
    chosen = strike_window(np.unique(df["strike"].to_numpy(float)), head["atm_strike"], atm_window, strikes)
    side_rows = {side: part.set_index("strike") for side, part in df.groupby("side")}
    table = []
    for side in ("CE", "PE"):
        part = side_rows.get(side)
        cols = part.reindex(chosen)[fields] if part is not None else pd.DataFrame(index=chosen, columns=fields)
        if "last_trade_time" in cols:
            cols["last_trade_time"] = [iso(v, tz) for v in cols["last_trade_time"]]
        present = part.index.isin(chosen) if part is not None else np.array([], bool)
        have = set(part.index[present]) if part is not None else set()
        records = cols.astype(object).where(cols.notna(), None).to_dict("records")
        table.append([r if k in have else None for k, r in zip(chosen, records, strict=True)])
    sources = sorted({SOURCE_NAMES.get(s, s) for s in df["source"].dropna().unique()})
    info = ledger_info or {}
    return {
        "index": index, "ts": iso(ts, tz), "expiry": exp.isoformat(), "expiry_kind": head["expiry_kind"],
        "expiries": [{"expiry": r["expiry"].isoformat(), "expiry_kind": r["expiry_kind"]}
                     for r in summary.sort_by([("expiry", "ascending")]).to_pylist()],
        "spot": head["spot"], "forward": forward_of(df, ts, exp, rate, head["spot"]), "atm_strike": head["atm_strike"],
        "summary": {k: head[k] for k in SUMMARY_FIELDS},
        "provenance": {"source": ",".join(sources) or None, "sample_span_ms": head.get("sample_span_ms"),
                       "spot_offset_ms": head.get("spot_offset_ms"),
                       "repaired": None if "live" not in info else not info["live"],
                       "stored_at": iso(pd.Timestamp(info["stored_at"], unit="s", tz="UTC"), tz)
                       if info.get("stored_at") else None},
        "oi_change_base": {"previous_session_minute": iso(prev[0], tz), "oi_change_minutes": n_minutes,
                           "minutes_earlier": iso(n_ts, tz) if n_legs is not None else None},
        "columns": fields,
        "strikes": [{"strike": float(k), "ce": ce, "pe": pe} for k, ce, pe in zip(chosen, *table, strict=True)],
    }
