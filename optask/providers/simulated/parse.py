"""The simulated venue's wire payload (columnar JSON) -> normalized legs: a pure function replay reuses."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from optask.core.schema import RAW_LEG_SCHEMA
from optask.core.timeutils import UTC

log = logging.getLogger(__name__)
MONTH_CODES = "123456789OND"


_NUMERIC = (
    "strike", "token", "ltp", "bid", "ask", "bid_qty", "ask_qty", "volume", "oi", "open", "high", "low", "close",
    "last_trade_time",
)
_REQUIRED = ("expiry", "expiry_idx", "strike", "side", "token", "ltp")
_SIDES = pa.array(["CE", "PE"], pa.string())


def _empty(issues: dict[str, int]) -> tuple[pa.Table, dict[str, int]]:
    return RAW_LEG_SCHEMA.empty_table(), issues


def _as_float(values: list, issues: dict[str, int], name: str) -> np.ndarray:
    """Numbers to float; anything else (strings, None, nested) becomes NaN and is counted."""
    try:
        if isinstance(values, list):  # decoded JSON: fromiter reads a list a third faster than asarray
            return np.fromiter(values, np.float64, len(values))
        return np.asarray(values, dtype=np.float64)  # the venue's own arrays: no copy
    except (TypeError, ValueError):
        out = np.array([v if isinstance(v, int | float) and not isinstance(v, bool) else np.nan for v in values],
                       dtype=np.float64)
        bad = int(np.isnan(out).sum() - sum(1 for v in values if isinstance(v, float) and np.isnan(v)))
        issues[f"non_numeric_{name}"] = issues.get(f"non_numeric_{name}", 0) + bad
        return out


def parse_payload(raw: bytes, index: str, ts: dt.datetime, source: str = "simulated") -> tuple[pa.Table, dict[str, int]]:
    """Wire payload -> normalized legs (RAW_LEG_SCHEMA) and counted issues. Never raises on bad input."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        log.warning("malformed simulated payload for %s %s: %s", index, ts.isoformat(), exc)
        return _empty({"malformed_payload": 1})
    return parse_document(doc, index, ts, source)


def parse_document(doc, index: str, ts: dt.datetime, source: str = "simulated") -> tuple[pa.Table, dict[str, int]]:
    """The payload's document (lists, or the venue's own arrays before they are sent) -> what `parse_payload`
    gives for its JSON: the venue skips decoding the text it has just encoded."""
    issues: dict[str, int] = {}
    try:
        legs = doc["legs"]
        spot = float(doc["spot"])
        n = len(legs["strike"])
    except (KeyError, TypeError, ValueError) as exc:
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
    is_call = side == "CE"
    valid &= is_call | (side == "PE")
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

    put = (~is_call[valid]).astype(np.int8)
    contract = _contracts(index, expiry_dates, kinds, idx, cols["strike"][valid], put)
    ltt = cols["last_trade_time"][valid]
    ltt_mask = np.isnan(ltt)
    table = pa.table({
        "ts": pa.array(np.full(m, ts_utc), type=pa.timestamp("ns", tz="UTC")),
        "index": pa.repeat(pa.scalar(index, pa.string()), m),
        "expiry": contract["expiry"],
        "expiry_kind": contract["expiry_kind"],
        "strike": contract["strike"],
        "side": contract["side"],
        "symbol": contract["symbol"],
        "token": num("token", "i"),
        "spot": pa.array(np.full(m, spot), type=pa.float64()),
        "ltp": num("ltp"), "bid": num("bid"), "ask": num("ask"),
        "bid_qty": num("bid_qty", "i"), "ask_qty": num("ask_qty", "i"), "volume": num("volume", "i"),
        "oi": num("oi", "i"),
        "open": num("open"), "high": num("high"), "low": num("low"), "close": num("close"),
        "last_trade_time": pa.array((np.where(ltt_mask, 0, ltt).astype(np.int64) * 1_000_000_000),
                                    mask=ltt_mask, type=pa.int64()).cast(pa.timestamp("ns", tz="UTC")),
        "source": pa.repeat(pa.scalar(source, pa.string()), m),
    }, schema=RAW_LEG_SCHEMA)
    return table, issues


_CONTRACTS: dict[tuple, dict[str, pa.Array]] = {}  # a day's minutes list the same contracts: their columns, made once


def _contracts(index: str, expiry_dates: np.ndarray, kinds: list, idx: np.ndarray, strike: np.ndarray,
               put: np.ndarray) -> dict[str, pa.Array]:
    """The columns naming each leg's contract (expiry, its kind, strike, side, trading symbol), keyed by what
    they are made of: every minute of a day lists the same contracts, so they are built once a day."""
    key = (index, expiry_dates.tobytes(), tuple(kinds), idx.tobytes(), strike.tobytes(), put.tobytes())
    known = _CONTRACTS.get(key)
    if known is None:
        if len(_CONTRACTS) > 256:
            _CONTRACTS.clear()
        side = pa.DictionaryArray.from_arrays(pa.array(put), _SIDES).cast(pa.string())
        kind = pa.DictionaryArray.from_arrays(pa.array(idx, type=pa.int32()), pa.array(kinds, type=pa.string()))
        known = _CONTRACTS[key] = {
            "expiry": pa.array(expiry_dates[idx], type=pa.date32()), "expiry_kind": kind.cast(pa.string()),
            "strike": pa.array(strike, type=pa.float64()), "side": side,
            "symbol": _make_symbols(index, expiry_dates[idx], strike, side)}
    return known


def _make_symbols(index: str, expiry: np.ndarray, strike: np.ndarray, side: pa.Array) -> pa.Array:
    """Each distinct expiry and strike formatted once, the rows joined in Arrow."""
    if len(strike) == 0:
        return pa.array([], pa.string())
    expiries = pc.dictionary_encode(pa.array(expiry, pa.date32()))
    prefixes = []
    for e in expiries.dictionary.to_pylist():
        last_of_month = (e + dt.timedelta(days=7)).month != e.month
        if last_of_month:
            prefixes.append(f"{index}{e:%y}{e.strftime('%b').upper()}")
        else:
            prefixes.append(f"{index}{e:%y}{MONTH_CODES[e.month - 1]}{e:%d}")
    strikes = pc.dictionary_encode(pa.array(strike, pa.float64()))
    strike_txt = pa.array([f"{k:g}" for k in strikes.dictionary.to_pylist()], pa.string()).take(strikes.indices)
    pre = pa.array(prefixes, pa.string()).take(expiries.indices)
    return pc.binary_join_element_wise(pre, strike_txt, side, "")
