"""Checks of the data itself: prices and books, stale quotes, IV outliers against the smile, no-arbitrage
among quoted legs, and how far apart a minute's quotes were taken. Pure functions of whole-day tables."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from optask.core.pricing import year_fraction
from optask.quality.model import (
    ARB_TICKS,
    IV_ABS,
    IV_NOISE,
    MIN_PRICE,
    STALE_MINUTES,
    STALE_TICKS,
    TICK,
    Finding,
    iso_minutes,
    rows_findings,
)


def _price(bid: np.ndarray, ask: np.ndarray, ltp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The price a check trusts (the mid of a two-sided book, else ltp) and its half spread."""
    sane = (bid > 0) & (ask > 0) & (ask >= bid)
    return np.where(sane, 0.5 * (bid + ask), ltp), np.where(sane, 0.5 * (ask - bid), 0.0)


def _np(t: pa.Table, name: str) -> np.ndarray:
    """A column as float64: a read-only view of Arrow's buffer where it can be one (no copy of a day's column)."""
    return t[name].to_numpy(zero_copy_only=False).astype(float, copy=False)


#: The order of the checks that look across strikes: a minute's chain of one expiry and side, by strike.
BY_MINUTE = [("ts", "ascending"), ("expiry", "ascending"), ("side", "ascending"), ("strike", "ascending")]


def check_values(index: str, legs: pa.Table, by_minute: pa.Table | None = None,
                 quotes: list[Finding] | None = None) -> tuple[list[Finding], int]:
    """Bad prices, crossed books, stale quotes, IV outliers; returns findings and legs checked.
    `by_minute`: the legs sorted in BY_MINUTE order, and `quotes`: `check_quotes` of them, when the caller has
    them (one sort for two checks; the legs let go in between)."""
    if legs.num_rows == 0:
        return [], 0
    out = quotes if quotes is not None else check_quotes(index, legs)
    out = out + _iv_outliers(index, by_minute if by_minute is not None else legs.sort_by(BY_MINUTE))
    return out, legs.num_rows


def check_quotes(index: str, legs: pa.Table) -> list[Finding]:
    """Bad prices, crossed books and stale quotes: rows sorted by contract, then minute."""
    legs = legs.sort_by([("expiry", "ascending"), ("side", "ascending"), ("strike", "ascending"), ("ts", "ascending")])
    ltp, bid, ask, spot = _np(legs, "ltp"), _np(legs, "bid"), _np(legs, "ask"), _np(legs, "spot")
    out = []
    with np.errstate(invalid="ignore"):
        bad = ~(ltp > 0) | (bid < 0) | (ask < 0)
        crossed = (bid > 0) & (ask > 0) & (bid > ask)
    out += rows_findings(index, "bad_price", legs, bad, "ltp not positive, or a negative bid/ask")
    out += rows_findings(index, "crossed_book", legs, crossed & ~bad, "bid above ask")
    # stale: runs of an unchanged quote per contract (rows sorted by contract, then minute)
    same_contract = np.r_[False, pc.and_(pc.and_(
        pc.equal(legs["expiry"].slice(1), legs["expiry"].slice(0, legs.num_rows - 1)),
        pc.equal(legs["side"].slice(1), legs["side"].slice(0, legs.num_rows - 1))),
        pc.equal(legs["strike"].slice(1), legs["strike"].slice(0, legs.num_rows - 1))).to_numpy(zero_copy_only=False)]
    b0, a0 = np.nan_to_num(bid), np.nan_to_num(ask)
    unchanged = same_contract & np.r_[False, (ltp[1:] == ltp[:-1]) & (b0[1:] == b0[:-1]) & (a0[1:] == a0[:-1])]
    del b0, a0, same_contract, bid, ask
    starts = np.flatnonzero(~unchanged)
    first = starts[np.cumsum(~unchanged) - 1]
    delta = np.nan_to_num(_np(legs, "delta"))
    expected_move = np.abs(delta[first]) * np.abs(spot - spot[first])
    stale = ((np.arange(legs.num_rows) - first) >= STALE_MINUTES) & (expected_move > STALE_TICKS * TICK) & (ltp >= MIN_PRICE)
    if stale.any():
        reasons = [f"quote unchanged for {int(i - first[i])} minutes while the index moved "
                   f"{abs(spot[i] - spot[first[i]]):.1f}" for i in np.flatnonzero(stale)]
        out += rows_findings(index, "stale_quote", legs, stale, reasons)
    return out


def _prev(x: np.ndarray) -> np.ndarray:
    """x[i-1] at i (x[0] at 0)."""
    return np.r_[x[:1], x[:-1]]


def _next(x: np.ndarray) -> np.ndarray:
    """x[i+1] at i (x[-1] at the end)."""
    return np.r_[x[1:], x[-1:]]


def _iv_outliers(index: str, t: pa.Table) -> list[Finding]:
    """Off the line through its strike neighbours (same minute, expiry, side) by more than price noise allows.
    `t`: the legs in BY_MINUTE order."""
    bid, ask, ltp = _np(t, "bid"), _np(t, "ask"), _np(t, "ltp")
    iv, vega, k = _np(t, "iv"), np.abs(_np(t, "vega")), _np(t, "strike")
    px, half = _price(bid, ask, ltp)
    n = t.num_rows
    group = np.ones(n - 1, dtype=bool)
    for col in ("ts", "expiry", "side"):
        group &= pc.equal(t[col].slice(1), t[col].slice(0, n - 1)).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (px >= MIN_PRICE) & np.isfinite(iv) & (half <= 0.25 * px) & (vega > 0)
        noise = TICK / vega  # the IV error of a price off by one tick (prices are tick-rounded)
        both = np.zeros(n, dtype=bool)
        both[1:-1] = group[:-1] & group[1:] & ok[:-2] & ok[2:]
        w = np.where(both, (k - _prev(k)) / (_next(k) - _prev(k)), 0.0)
        line = _prev(iv) * (1 - w) + _next(iv) * w
        allowed = IV_ABS + IV_NOISE * (noise + _prev(noise) + _next(noise)) / 3
        outlier = both & ok & (np.abs(iv - line) > allowed)
    if not outlier.any():
        return []
    reasons = [f"iv {iv[i]:.3f} off its neighbours' {line[i]:.3f} by more than {allowed[i]:.3f}" for i in np.flatnonzero(outlier)]
    return rows_findings(index, "iv_outlier", t, outlier, reasons)


def check_arbitrage(index: str, legs: pa.Table, rate: float = 0.065,
                    by_minute: pa.Table | None = None) -> tuple[list[Finding], int]:
    """Per minute and expiry, among legs quoted on both sides: calls non-increasing and puts non-decreasing in
    strike, both convex, put-call parity against the chain's implied forward; each beyond the half spreads
    plus ARB_TICKS. `by_minute` as for check_values."""
    if legs.num_rows == 0:
        return [], 0
    t = by_minute if by_minute is not None else legs.sort_by(BY_MINUTE)
    n = t.num_rows
    px, half = _price(_np(t, "bid"), _np(t, "ask"), _np(t, "ltp"))
    k = _np(t, "strike")
    is_call = pc.equal(t["side"], "CE").to_numpy(zero_copy_only=False)
    group = np.ones(n - 1, dtype=bool)
    for col in ("ts", "expiry", "side"):
        group &= pc.equal(t[col].slice(1), t[col].slice(0, n - 1)).to_numpy(zero_copy_only=False)
    tol = ARB_TICKS * TICK
    quoted = half > 0  # "beyond the spread" needs a two-sided book: last trades alone are not judged
    out: list[Finding] = []
    checked = 0
    with np.errstate(invalid="ignore"):
        group = group & quoted[:-1] & quoted[1:]
        step = np.where(is_call[1:], px[:-1] - px[1:], px[1:] - px[:-1])  # >= 0 when monotone
        mono = group & (step < -(half[:-1] + half[1:] + tol))
        checked += int(group.sum())
        mono_rows = np.r_[False, mono]
        out += rows_findings(index, "not_monotonic", t, mono_rows,
                              "price moves the wrong way from the previous strike (calls must fall, puts rise)")
        g3 = group[:-1] & group[1:]
        k1, k2, k3 = k[:-2], k[1:-1], k[2:]
        fly = px[:-2] * (k3 - k2) - px[1:-1] * (k3 - k1) + px[2:] * (k2 - k1)
        fly_tol = (half[:-2] + 2 * half[1:-1] + half[2:] + tol) * (k3 - k1)
        convex = g3 & (fly < -fly_tol)
        checked += int(g3.sum())
        out += rows_findings(index, "not_convex", t, np.r_[False, convex, False], "butterfly around this strike has negative value")
    out += _parity(index, t, px, half, rate)
    checked += int(is_call.sum())
    return out, checked


def _parity(index: str, t: pa.Table, px: np.ndarray, half: np.ndarray, rate: float) -> list[Finding]:
    """C - P = (F - K) x DF per strike quoted on both sides, F the chain's implied forward (median over strikes).
    Calls and puts paired by numpy over combined codes of (minute, expiry, strike): no frame, no merge."""
    ts, expiry = t["ts"].cast(pa.int64()).to_numpy(), t["expiry"].cast(pa.int32()).to_numpy()
    strike = _np(t, "strike")
    is_call = pc.equal(t["side"], "CE").to_numpy(zero_copy_only=False)
    rows = np.arange(t.num_rows)
    key = _codes(ts, expiry, strike)
    calls, puts = rows[is_call], rows[~is_call]
    _, ic, ip = np.intersect1d(key[calls], key[puts], return_indices=True)
    rc, rp = calls[ic], puts[ip]
    if not len(rc):
        return []
    rc_order = np.argsort(rc, kind="stable")  # pairs in the calls' row order
    rc, rp = rc[rc_order], rp[rc_order]
    years = year_fraction(ts[rc].astype("datetime64[ns]"), expiry[rc].astype("datetime64[D]"))
    df = np.exp(-rate * np.maximum(years, 0.0))
    implied = strike[rc] + (px[rc] - px[rp]) / df
    fwd = _group_median(_codes(ts[rc], expiry[rc]), implied)
    gap = np.abs(px[rc] - px[rp] - (fwd - strike[rc]) * df)
    allowed = half[rc] + half[rp] + ARB_TICKS * TICK
    quoted = (half[rc] > 0) & (half[rp] > 0)  # "beyond the spread" needs one
    broken = quoted & (gap > allowed)
    flagged = np.zeros(t.num_rows, dtype=bool)
    flagged[rc[broken]] = True
    reasons = {int(r): f"C - P off parity by {g:.2f} (allowed {a:.2f})"
               for r, g, a in zip(rc[broken], gap[broken], allowed[broken], strict=True)}
    return rows_findings(index, "parity", t, flagged, [reasons[i] for i in np.flatnonzero(flagged)])


def _codes(*columns: np.ndarray) -> np.ndarray:
    """One int64 per row, equal where the rows are equal in every column."""
    out = np.zeros(len(columns[0]), np.int64)
    for col in columns:
        values, inverse = np.unique(col, return_inverse=True)
        out = out * len(values) + inverse.ravel()
    return out


def _group_median(groups: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each row's group median of x, NaN skipped (as pandas' groupby median)."""
    order = np.lexsort((x, groups))  # NaN sorts last within its group
    g, v = groups[order], x[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    valid = np.add.reduceat(~np.isnan(v), starts)
    lo = starts + np.maximum(valid - 1, 0) // 2
    hi = starts + np.maximum(valid, 1) // 2
    med = np.where(valid % 2 == 1, v[lo], (v[np.minimum(hi, len(v) - 1)] + v[lo]) / 2)
    med = np.where(valid > 0, med, np.nan)
    out = np.empty(len(x))
    out[order] = np.repeat(med, np.diff(np.r_[starts, len(v)]))
    return out


def check_sampling(index: str, parquet, day: dt.date, max_span_ms: float) -> list[Finding]:
    """Minutes whose quotes were sampled further apart than `max_span_ms` (the summary's sample_span_ms)."""
    if not max_span_ms:
        return []
    try:
        t = parquet.read_table("summary", index, day, columns=["ts", "sample_span_ms"])
    except (OSError, KeyError, pa.ArrowInvalid):
        return []  # unreadable files are reported by the completeness pass; older files have no such column
    if "sample_span_ms" not in t.column_names or not t.num_rows:
        return []
    per = t.group_by("ts").aggregate([("sample_span_ms", "max")])
    span = per["sample_span_ms_max"].to_numpy(zero_copy_only=False).astype(float)
    slow = np.flatnonzero(np.nan_to_num(span, nan=0.0) > max_span_ms)
    minutes = iso_minutes(per["ts"].take(pa.array(slow)).to_pylist())
    return [Finding(index, "slow_sample", "parquet", "summary", minute=m,
                    reason=f"quotes taken {span[i] / 1000:.1f} s apart (MAX_SAMPLE_SPAN_MS {max_span_ms:g})")
            for m, i in zip(minutes, slow, strict=True)]
