"""Kite payloads -> normalized legs: pure functions of the archived bytes, so replay reuses them.

The envelope of a minute holds the quote response bodies exactly as received and the instrument metadata
needed to read them; `sampling` reads when the quotes behind it were taken.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pyarrow as pa

from optask.core.schema import RAW_LEG_SCHEMA, TS_TYPE
from optask.core.timeutils import IST
from optask.providers.base import TemporaryProviderError


def spot_of(raw: bytes, key: str) -> float:
    try:
        return float(orjson.loads(raw)["data"][key]["last_price"])
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        raise TemporaryProviderError(f"Kite returned no usable spot for {key}") from None


def sampling(raw: bytes) -> tuple[float | None, float | None]:
    """(sample span, spot offset) in ms from an envelope's call times: first call sent to last answered, and
    the spot call's midpoint against the option calls' midpoint. None for envelopes without times."""
    try:
        env = orjson.loads(raw)
        calls = [tuple(map(float, at)) for at in env.get("fetched") or []]
        spot_at = env.get("spot_fetched")
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return None, None
    if not calls:
        return None, None
    every = calls + ([tuple(map(float, spot_at))] if spot_at else [])
    span = (max(t1 for _, t1 in every) - min(t0 for t0, _ in every)) * 1000
    if not spot_at:
        return round(span, 1), None
    options_mid = sum((t0 + t1) / 2 for t0, t1 in calls) / len(calls)
    spot_mid = (float(spot_at[0]) + float(spot_at[1])) / 2
    return round(span, 1), round((spot_mid - options_mid) * 1000, 1)


def candles_table(index: str, ts: dt.datetime, rows: list[dict], spot: float | None = None) -> pa.Table:
    n = len(rows)
    col = {k: [r[k] for r in rows] for k in ("token", "symbol", "expiry", "kind", "strike", "side", "open", "high",
                                              "low", "close", "volume", "oi")}
    nan = pa.array([None] * n, pa.float64())
    return pa.table({
        "ts": pa.array([ts] * n, TS_TYPE), "index": [index] * n,
        "expiry": pa.array([dt.date.fromisoformat(e) for e in col["expiry"]], pa.date32()),
        "expiry_kind": col["kind"], "strike": pa.array(col["strike"], pa.float64()), "side": col["side"],
        "symbol": col["symbol"], "token": pa.array(col["token"], pa.int64()),
        "spot": pa.array([spot] * n, pa.float64()) if spot is not None else nan,
        "ltp": pa.array(col["close"], pa.float64()), "bid": nan, "ask": nan,
        "bid_qty": pa.array([None] * n, pa.int64()), "ask_qty": pa.array([None] * n, pa.int64()),
        "volume": pa.array(col["volume"], pa.int64()), "oi": pa.array(col["oi"], pa.int64()),
        "open": pa.array(col["open"], pa.float64()), "high": pa.array(col["high"], pa.float64()),
        "low": pa.array(col["low"], pa.float64()), "close": pa.array(col["close"], pa.float64()),
        "last_trade_time": pa.array([ts] * n, TS_TYPE), "source": ["backfill"] * n,
    }, schema=RAW_LEG_SCHEMA)


def _num(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def parse_quote_payload(raw: bytes, index: str, ts: dt.datetime, source: str = "live") -> tuple[pa.Table, dict[str, int]]:
    """Kite envelope -> normalized legs and counted issues. Never raises on bad input.

    Instruments a response omits are counted as missing, never invented; an empty book (zero
    bid and ask, as on a holiday) is not data: bid/ask become null and the leg is flagged.
    """
    issues: dict[str, int] = {}

    def count(reason: str, n: int = 1) -> None:
        issues[reason] = issues.get(reason, 0) + n

    try:
        env = orjson.loads(raw)
        meta: dict[str, list] = env["instruments"]
        bodies: list[str] = env["quote_bodies"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return RAW_LEG_SCHEMA.empty_table(), {"malformed_payload": 1}
    if source == "live" and env.get("fallback"):  # taken over REST while the ticker was down
        source = "rest_fallback"
    quotes = _quotes(bodies, count)
    try:  # its own call (one index at a time) or the options' call (a whole minute in the fewest calls)
        spot_quote = orjson.loads(env["spot_body"])["data"][env["spot_key"]] if env.get("spot_body") \
            else quotes[env["spot_key"]]
        spot = _num(spot_quote["last_price"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        spot = float("nan")
        count("missing_spot")
    rows = _rows(meta, quotes, count)
    requested = set(meta) | {env.get("spot_key")} | {k for keys in env.get("requested") or [] for k in keys}
    unknown = set(quotes) - requested
    if unknown:
        count("unrequested_instrument", len(unknown))
    return _table(rows, index, ts, spot, source), issues


def _quotes(bodies: list[str], count) -> dict[str, dict]:
    """Every quote of the response bodies by Kite key; a body that is not Kite's JSON is counted."""
    quotes: dict[str, dict] = {}
    for body in bodies:
        try:
            data = orjson.loads(body)["data"]
            if not isinstance(data, dict):
                raise TypeError
            for key, q in data.items():
                if key in quotes:
                    count("duplicate_instrument")
                quotes[key] = q
        except (orjson.JSONDecodeError, KeyError, TypeError):
            count("malformed_body")
    return quotes


def _rows(meta: dict[str, list], quotes: dict[str, dict], count) -> list[tuple]:
    """One tuple per requested instrument that was quoted (per instrument: Kite's nested JSON)."""
    rows = []
    for key, (token, expiry, strike, side, kind) in meta.items():
        q = quotes.get(key)
        if not isinstance(q, dict):
            count("missing_instrument")
            continue
        if q.get("instrument_token") not in (None, token):
            count("unknown_token")
            continue
        depth = q.get("depth") or {}
        buy = (depth.get("buy") or [{}])[0] or {}
        sell = (depth.get("sell") or [{}])[0] or {}
        ohlc = q.get("ohlc") or {}
        bid, ask = _num(buy.get("price")), _num(sell.get("price"))
        if bid == 0 and ask == 0:
            bid = ask = float("nan")
            count("empty_book")
        ltt = q.get("last_trade_time")
        rows.append((token, key.split(":", 1)[1], expiry, strike, side, kind, _num(q.get("last_price")), bid, ask,
                     _num(buy.get("quantity")), _num(sell.get("quantity")), _num(q.get("volume")), _num(q.get("oi")),
                     _num(ohlc.get("open")), _num(ohlc.get("high")), _num(ohlc.get("low")), _num(ohlc.get("close")),
                     ltt if isinstance(ltt, str) else None))
        if not np.isfinite(rows[-1][6]):
            count("non_numeric_price")
    return rows


def _ints(values) -> pa.Array:
    arr = np.asarray(values, dtype=float)
    mask = ~np.isfinite(arr)
    return pa.array(np.where(mask, 0, arr).astype(np.int64), mask=mask, type=pa.int64())


def _ltt(values) -> pa.Array:
    out = []
    for v in values:
        try:
            out.append(dt.datetime.fromisoformat(v).replace(tzinfo=IST) if v else None)
        except ValueError:
            out.append(None)
    return pa.array(out, TS_TYPE)


def _table(rows: list[tuple], index: str, ts: dt.datetime, spot: float, source: str) -> pa.Table:
    n = len(rows)
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in range(18)]
    return pa.table({
        "ts": pa.array([ts] * n, TS_TYPE), "index": pa.array([index] * n, pa.string()),
        "expiry": pa.array([dt.date.fromisoformat(e) for e in cols[2]], pa.date32()),
        "expiry_kind": pa.array(cols[5], pa.string()), "strike": pa.array(cols[3], pa.float64()),
        "side": pa.array(cols[4], pa.string()), "symbol": pa.array(cols[1], pa.string()),
        "token": pa.array(cols[0], pa.int64()), "spot": pa.array([spot] * n, pa.float64()),
        "ltp": pa.array(cols[6], pa.float64()), "bid": pa.array(cols[7], pa.float64()),
        "ask": pa.array(cols[8], pa.float64()), "bid_qty": _ints(cols[9]), "ask_qty": _ints(cols[10]),
        "volume": _ints(cols[11]), "oi": _ints(cols[12]), "open": pa.array(cols[13], pa.float64()),
        "high": pa.array(cols[14], pa.float64()), "low": pa.array(cols[15], pa.float64()),
        "close": pa.array(cols[16], pa.float64()), "last_trade_time": _ltt(cols[17]),
        "source": pa.array([source] * n, pa.string()),
    }, schema=RAW_LEG_SCHEMA)
