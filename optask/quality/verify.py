"""End-of-day verification: is a day's data complete and right, store by store, with a score and findings.

Checks, for each index and day, against the calendar and the day's universe:

- completeness per store and table: session minutes against the minutes Parquet (legs, merged,
  summary), CSV (each daily file, read up to its sidecar) and InfluxDB (when enabled) hold; legs per
  minute against the universe (every contract seen earlier in the day must be there each minute).
  Computed from the stores, never from the Redis ledger.
- integrity: duplicate keys, rows outside the session, `ts` not minute-aligned or (CSV) not in the
  unified form, a sidecar that disagrees with its file, an unreadable file.
- values: NaN/zero/negative prices, crossed books, stale quotes (price and book unchanged for
  STALE_MINUTES while the index moved enough to move the option by STALE_TICKS), IV outliers
  against the minute's smile (off the neighbours' line by more than the price noise allows).
- no-arbitrage: calls not decreasing / puts not increasing in strike, either not convex, put-call
  parity broken, each beyond the quoted spreads plus ARB_TICKS.
- consistency: Parquet, CSV and InfluxDB agree on rows per minute.

The checks are plain pyarrow compute and numpy over whole-day Arrow tables, not pandera: the
checks that matter here are relations across rows (runs over minutes, neighbours in strike, pairs
of sides), which a column-schema validator does not express, and one vectorized pass over 1.1M
legs is several times faster than materialising pandas frames for it.

Score (0-100) = 100 - sum over categories of weight x penalty, penalty in [0, 1]:

    category      weight  penalty
    completeness    35    10 x missing (minute, store-table) cells / expected cells
    legs            15    20 x missing legs / expected legs
    integrity       20    50 x bad rows / rows + 0.5 per unreadable file or bad sidecar
    values          15    50 x flagged legs / legs
    arbitrage        5    50 x violations / relations checked
    consistency     10    10 x disagreeing (minute, table) pairs / compared pairs

and any finding costs its category at least MIN_PENALTY[category], so every fault lowers the score.
Status per index: FAIL on corruption (unreadable file, bad sidecar, duplicate keys, rows outside the
session, malformed ts), on a store-table missing more than 1% of the session, or a score below 90;
WARN on any missing minute, missing legs or disagreement between stores, or a score below 99; else
PASS. The day's `data_quality_score` is the mean of the indices' scores and its status the worst.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from optask.calendar import get_calendar
from optask.config import Settings, get_settings
from optask.schema import LEG_KEY, MERGED_KEY, SUMMARY_KEY

TICK = 0.05
#: A quote unchanged this many minutes while its expected move exceeds STALE_TICKS is stale.
STALE_MINUTES = 5
STALE_TICKS = 4
#: IV and stale checks look only at legs worth at least this (deep OTM tick prices are pure noise).
MIN_PRICE = 1.0
#: IV outlier: off the line through its strike neighbours by more than IV_ABS + IV_NOISE x tick / vega.
IV_ABS, IV_NOISE = 0.02, 3.0
#: No-arbitrage tolerance beyond the half spreads, in ticks.
ARB_TICKS = 2
WEIGHTS = {"completeness": 35.0, "legs": 15.0, "integrity": 20.0, "values": 15.0, "arbitrage": 5.0, "consistency": 10.0}
MIN_PENALTY = {"completeness": 0.05, "legs": 0.05, "integrity": 0.25, "values": 0.02, "arbitrage": 0.02,
               "consistency": 0.05}
#: kind -> (category, severity). Severity "error" is corruption or loss; "warning" is suspicious data.
KINDS = {
    "missing_minute": ("completeness", "error"), "store_unavailable": ("completeness", "error"),
    "missing_legs": ("legs", "warning"),
    "duplicate_key": ("integrity", "error"), "outside_session": ("integrity", "error"),
    "unaligned_ts": ("integrity", "error"), "ts_format": ("integrity", "error"),
    "sidecar_mismatch": ("integrity", "error"), "unreadable_file": ("integrity", "error"),
    "bad_price": ("values", "error"), "crossed_book": ("values", "error"),  # validation should never store one
    "stale_quote": ("values", "warning"), "iv_outlier": ("values", "warning"),
    "not_monotonic": ("arbitrage", "warning"), "not_convex": ("arbitrage", "warning"),
    "parity": ("arbitrage", "warning"),
    "store_mismatch": ("consistency", "error"),
    "slow_sample": ("values", "warning"),  # the minute's quotes taken further apart than MAX_SAMPLE_SPAN_MS
}
CORRUPTION = {"duplicate_key", "outside_session", "unaligned_ts", "ts_format", "sidecar_mismatch", "unreadable_file"}
SUMMARY_CAP = 20
TABLES = {"legs": LEG_KEY, "merged": MERGED_KEY, "summary": SUMMARY_KEY}
UNIFIED_TS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:00\+05:30$"
LEG_COLUMNS = ["ts", "expiry", "strike", "side", "spot", "ltp", "bid", "ask", "iv", "delta", "vega"]


@dataclass
class Finding:
    index: str
    kind: str
    store: str = ""
    table: str = ""
    minute: str | None = None
    expiry: str | None = None
    strike: float | None = None
    side: str | None = None
    reason: str = ""

    @property
    def severity(self) -> str:
        return KINDS[self.kind][1]

    def as_dict(self) -> dict:
        return {**asdict(self), "severity": self.severity, "category": KINDS[self.kind][0]}


def _iso(values) -> list[str]:
    return [pd.Timestamp(v).tz_convert("UTC").isoformat() if v is not None else None for v in values]


def _rows_findings(index: str, kind: str, t: pa.Table, mask: np.ndarray, reason, store="parquet", table="legs") -> list[Finding]:
    """One finding per flagged row (minute, expiry, strike, side where the table has them)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    sub = t.take(pa.array(idx))
    cols = sub.column_names
    minutes = _iso(sub["ts"].to_pylist()) if "ts" in cols else [None] * len(idx)
    expiries = [str(e) for e in sub["expiry"].to_pylist()] if "expiry" in cols else [None] * len(idx)
    strikes = sub["strike"].to_pylist() if "strike" in cols else [None] * len(idx)
    sides = sub["side"].to_pylist() if "side" in cols else [None] * len(idx)
    reasons = reason if isinstance(reason, list) else [reason] * len(idx)
    return [Finding(index, kind, store, table, m, e, k, s, r)
            for m, e, k, s, r in zip(minutes, expiries, strikes, sides, reasons, strict=True)]


# --- pure checks ---------------------------------------------------------------------------------

def check_minutes(index: str, expected: pd.DatetimeIndex, present: pd.DatetimeIndex, store: str, table: str) -> dict:
    """Completeness of one store-table: counts, missing minutes (ISO), gap ranges, findings."""
    present = pd.DatetimeIndex(present).unique()
    missing = expected.difference(present)
    return {
        "expected": len(expected), "present": len(expected) - len(missing),
        "missing": [m.isoformat() for m in missing], "gaps": missing_ranges(missing),
        "findings": [Finding(index, "missing_minute", store, table, m.isoformat(), reason="minute missing from the store")
                     for m in missing],
    }


def check_integrity(index: str, t: pa.Table, keys: tuple[str, ...], expected: pd.DatetimeIndex,
                    store: str, table: str) -> list[Finding]:
    """Duplicate keys, rows outside the session, ts not minute-aligned."""
    if t.num_rows == 0:
        return []
    out: list[Finding] = []
    key_cols = [k for k in keys if k in t.column_names]
    counts = t.select(key_cols).group_by(key_cols).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts["count_all"], 1))
    if dup.num_rows:
        out += _rows_findings(index, "duplicate_key", dup, np.ones(dup.num_rows, bool),
                              [f"{n} rows share this key" for n in dup["count_all"].to_pylist()], store, table)
    ts_ns = _ns(t["ts"])
    unaligned = ts_ns % 60_000_000_000 != 0
    out += _rows_findings(index, "unaligned_ts", t, unaligned, "ts is not on a minute boundary", store, table)
    outside = ~np.isin(ts_ns - ts_ns % 60_000_000_000, expected.asi8) & ~unaligned
    out += _rows_findings(index, "outside_session", t, outside, "row outside the session's minutes", store, table)
    return out


def check_legs_universe(index: str, legs: pa.Table, expected: pd.DatetimeIndex) -> tuple[list[Finding], int, int]:
    """Every contract seen earlier in the day must be there in each later minute the store holds.

    Returns findings, expected leg-minutes and missing leg-minutes. A presence matrix contract x minute.
    """
    if legs.num_rows == 0:
        return [], 0, 0
    keys = legs.select(["expiry", "strike", "side"])
    codes = pc.dictionary_encode(pc.binary_join_element_wise(
        keys["expiry"].cast(pa.string()), keys["strike"].cast(pa.string()), keys["side"], "|")).combine_chunks()
    k = codes.indices.to_numpy()
    m = np.searchsorted(expected.asi8, _ns(legs["ts"]))
    inside = (m < len(expected))
    k, m = k[inside], m[inside]
    n_k, n_m = len(codes.dictionary), len(expected)
    present = np.zeros((n_k, n_m), dtype=bool)
    present[k, m] = True
    minute_has_data = present.any(axis=0)
    first = np.where(present.any(axis=1), present.argmax(axis=1), n_m)
    want = (np.arange(n_m)[None, :] >= first[:, None]) & minute_has_data[None, :]
    missing = want & ~present
    mk, mm = np.nonzero(missing)
    labels = codes.dictionary.to_pylist()
    findings = []
    for kk, mi in zip(mk.tolist(), mm.tolist(), strict=True):
        e, s, side = labels[kk].split("|")
        findings.append(Finding(index, "missing_legs", "parquet", "legs", expected[mi].isoformat(), e, float(s), side,
                                "contract present earlier today is missing in this minute"))
    return findings, int(want.sum()), int(missing.sum())


def _ns(ts) -> np.ndarray:
    """Epoch nanoseconds of a timestamp column, whatever its unit (expected minutes are in ns too)."""
    return ts.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)


def _price(bid: np.ndarray, ask: np.ndarray, ltp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The price a check trusts (the mid of a two-sided book, else ltp) and its half spread."""
    sane = (bid > 0) & (ask > 0) & (ask >= bid)
    return np.where(sane, 0.5 * (bid + ask), ltp), np.where(sane, 0.5 * (ask - bid), 0.0)


def _np(t: pa.Table, name: str) -> np.ndarray:
    return t[name].to_numpy(zero_copy_only=False).astype(float)


def check_values(index: str, legs: pa.Table) -> tuple[list[Finding], int]:
    """Bad prices, crossed books, stale quotes, IV outliers; returns findings and legs checked."""
    if legs.num_rows == 0:
        return [], 0
    legs = legs.sort_by([("expiry", "ascending"), ("side", "ascending"), ("strike", "ascending"), ("ts", "ascending")])
    ltp, bid, ask, spot = _np(legs, "ltp"), _np(legs, "bid"), _np(legs, "ask"), _np(legs, "spot")
    out = []
    with np.errstate(invalid="ignore"):
        bad = ~(ltp > 0) | (bid < 0) | (ask < 0)
        crossed = (bid > 0) & (ask > 0) & (bid > ask)
    out += _rows_findings(index, "bad_price", legs, bad, "ltp not positive, or a negative bid/ask")
    out += _rows_findings(index, "crossed_book", legs, crossed & ~bad, "bid above ask")
    # stale: runs of an unchanged quote per contract (rows sorted by contract, then minute)
    same_contract = np.r_[False, pc.and_(pc.and_(
        pc.equal(legs["expiry"].slice(1), legs["expiry"].slice(0, legs.num_rows - 1)),
        pc.equal(legs["side"].slice(1), legs["side"].slice(0, legs.num_rows - 1))),
        pc.equal(legs["strike"].slice(1), legs["strike"].slice(0, legs.num_rows - 1))).to_numpy(zero_copy_only=False)]
    b0, a0 = np.nan_to_num(bid), np.nan_to_num(ask)
    unchanged = same_contract & np.r_[False, (ltp[1:] == ltp[:-1]) & (b0[1:] == b0[:-1]) & (a0[1:] == a0[:-1])]
    starts = np.flatnonzero(~unchanged)
    first = starts[np.cumsum(~unchanged) - 1]
    delta = np.nan_to_num(_np(legs, "delta"))
    expected_move = np.abs(delta[first]) * np.abs(spot - spot[first])
    stale = ((np.arange(legs.num_rows) - first) >= STALE_MINUTES) & (expected_move > STALE_TICKS * TICK) & (ltp >= MIN_PRICE)
    if stale.any():
        reasons = [f"quote unchanged for {int(i - first[i])} minutes while the index moved "
                   f"{abs(spot[i] - spot[first[i]]):.1f}" for i in np.flatnonzero(stale)]
        out += _rows_findings(index, "stale_quote", legs, stale, reasons)
    out += _iv_outliers(index, legs, bid, ask, ltp)
    return out, legs.num_rows


def _prev(x: np.ndarray) -> np.ndarray:
    """x[i-1] at i (x[0] at 0)."""
    return np.r_[x[:1], x[:-1]]


def _next(x: np.ndarray) -> np.ndarray:
    """x[i+1] at i (x[-1] at the end)."""
    return np.r_[x[1:], x[-1:]]


def _iv_outliers(index: str, legs: pa.Table, bid, ask, ltp) -> list[Finding]:
    """Off the line through its strike neighbours (same minute, expiry, side) by more than price noise allows."""
    t = legs.sort_by([("ts", "ascending"), ("expiry", "ascending"), ("side", "ascending"), ("strike", "ascending")])
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
    return _rows_findings(index, "iv_outlier", t, outlier, reasons)


def check_arbitrage(index: str, legs: pa.Table, rate: float = 0.065) -> tuple[list[Finding], int]:
    """Per minute and expiry, among legs quoted on both sides: calls non-increasing and puts non-decreasing in
    strike, both convex, put-call parity against the chain's implied forward; each beyond the half spreads
    plus ARB_TICKS."""
    if legs.num_rows == 0:
        return [], 0
    t = legs.sort_by([("ts", "ascending"), ("expiry", "ascending"), ("side", "ascending"), ("strike", "ascending")])
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
        out += _rows_findings(index, "not_monotonic", t, mono_rows,
                              "price moves the wrong way from the previous strike (calls must fall, puts rise)")
        g3 = group[:-1] & group[1:]
        k1, k2, k3 = k[:-2], k[1:-1], k[2:]
        fly = px[:-2] * (k3 - k2) - px[1:-1] * (k3 - k1) + px[2:] * (k2 - k1)
        fly_tol = (half[:-2] + 2 * half[1:-1] + half[2:] + tol) * (k3 - k1)
        convex = g3 & (fly < -fly_tol)
        checked += int(g3.sum())
        out += _rows_findings(index, "not_convex", t, np.r_[False, convex, False], "butterfly around this strike has negative value")
    out += _parity(index, t, px, half, rate)
    checked += int(is_call.sum())
    return out, checked


def _parity(index: str, t: pa.Table, px: np.ndarray, half: np.ndarray, rate: float) -> list[Finding]:
    """C - P = (F - K) x DF per strike quoted on both sides, F the chain's implied forward (median over strikes)."""
    from optask.pricing import year_fraction

    frame = pd.DataFrame({"ts": t["ts"].cast(pa.int64()).to_numpy(), "expiry": t["expiry"].cast(pa.int32()).to_numpy(),
                          "strike": _np(t, "strike"), "call": pc.equal(t["side"], "CE").to_numpy(zero_copy_only=False),
                          "px": px, "half": half, "row": np.arange(t.num_rows)})
    pair = frame[frame.call].merge(frame[~frame.call], on=["ts", "expiry", "strike"], suffixes=("_c", "_p"))
    if pair.empty:
        return []
    years = year_fraction(pair["ts"].to_numpy().astype("datetime64[ns]"),
                          pair["expiry"].to_numpy().astype("datetime64[D]"))
    df = np.exp(-rate * np.maximum(years, 0.0))
    implied = pair["strike"].to_numpy() + (pair["px_c"].to_numpy() - pair["px_p"].to_numpy()) / df
    fwd = pd.Series(implied).groupby([pair["ts"], pair["expiry"]]).transform("median").to_numpy()
    gap = np.abs(pair["px_c"].to_numpy() - pair["px_p"].to_numpy() - (fwd - pair["strike"].to_numpy()) * df)
    allowed = pair["half_c"].to_numpy() + pair["half_p"].to_numpy() + ARB_TICKS * TICK
    quoted = (pair["half_c"].to_numpy() > 0) & (pair["half_p"].to_numpy() > 0)  # "beyond the spread" needs one
    broken = quoted & (gap > allowed)
    rows = np.zeros(t.num_rows, dtype=bool)
    rows[pair["row_c"].to_numpy()[broken]] = True
    reasons = {int(r): f"C - P off parity by {g:.2f} (allowed {a:.2f})"
               for r, g, a in zip(pair["row_c"].to_numpy()[broken], gap[broken], allowed[broken], strict=True)}
    return _rows_findings(index, "parity", t, rows, [reasons[i] for i in np.flatnonzero(rows)])


def check_csv_file(index: str, table: str, path: Path, meta, text: pa.Table | None, error: str | None) -> list[Finding]:
    """A daily CSV against its sidecar: readable, length, rows, minutes, header; ts in the unified form."""
    if error:
        return [Finding(index, "unreadable_file", "csv", table, reason=f"{path}: {error}")]
    out = []
    size = path.stat().st_size if path.exists() else 0
    problems = []
    if size < meta.bytes:
        problems.append(f"file has {size} B, sidecar says {meta.bytes} B")
    if text is not None and text.num_rows != meta.rows:
        problems.append(f"file has {text.num_rows} rows, sidecar says {meta.rows}")
    if text is not None and text.num_rows:
        listed = set(meta.minutes or [])
        present = set(_minutes_of_text(text["ts"]))
        if present != listed:
            problems.append(f"minutes in the file and in the sidecar differ ({len(present - listed)} unlisted, "
                            f"{len(listed - present)} listed but absent)")
    if path.exists() and meta.columns:
        with open(path, "rb") as fh:
            header = fh.readline().decode("utf-8", "replace").strip().replace('"', "").split(",")
        if header != meta.columns:
            problems.append("header differs from the sidecar's columns")
    for p in problems:
        out.append(Finding(index, "sidecar_mismatch", "csv", table, reason=f"{path.name}: {p}"))
    if text is not None and text.num_rows:
        bad = ~pc.match_substring_regex(text["ts"], UNIFIED_TS).to_numpy(zero_copy_only=False)
        if bad.any():
            values = text["ts"].to_pylist()
            out += [Finding(index, "ts_format", "csv", table, None, reason=f"ts {values[i]!r} is not in the unified "
                            "form 2026-11-24T09:15:00+05:30") for i in np.flatnonzero(bad)[:1000]]
    return out


def _minutes_of_text(ts_text: pa.ChunkedArray) -> list[str]:
    """Unified IST text -> UTC ISO minutes (the sidecar's form); unparseable values are skipped."""
    uniq = pc.unique(ts_text).to_pylist()
    parsed = pd.to_datetime(pd.Series(uniq), errors="coerce", utc=True)
    return [p.isoformat() for p in parsed if not pd.isna(p)]


def csv_minutes(text: pa.Table) -> tuple[pd.DatetimeIndex, dict[str, int]]:
    """Minutes (UTC) and rows per minute of a CSV table read with ts as text."""
    counts = text.group_by("ts").aggregate([([], "count_all")])
    when = pd.to_datetime(pd.Series(counts["ts"].to_pylist()), errors="coerce", utc=True)
    ok = ~when.isna()
    minutes = pd.DatetimeIndex(when[ok])
    return minutes, dict(zip([m.isoformat() for m in minutes], np.asarray(counts["count_all"])[ok.to_numpy()].tolist(),
                             strict=True))


def check_consistency(index: str, counts: dict[str, dict[str, int]], table: str) -> tuple[list[Finding], int]:
    """Rows per minute of one table in every store that has it; minutes where the stores disagree."""
    stores = [s for s in counts if counts[s]]
    if len(stores) < 2:
        return [], 0
    minutes = sorted(set().union(*(counts[s] for s in stores)))
    out, compared = [], 0
    for m in minutes:
        values = {s: counts[s].get(m) for s in stores}
        if any(v is None for v in values.values()):
            continue  # a missing minute is a completeness finding, not a disagreement
        compared += 1
        if len(set(values.values())) > 1:
            out.append(Finding(index, "store_mismatch", "+".join(stores), table, m,
                               reason="rows per minute differ: " + ", ".join(f"{s} {v}" for s, v in values.items())))
    return out, compared


ROW_KINDS = ("duplicate_key", "outside_session", "unaligned_ts", "ts_format")
FILE_KINDS = ("unreadable_file", "sidecar_mismatch")


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
    minutes = _iso(per["ts"].take(pa.array(slow)).to_pylist())
    return [Finding(index, "slow_sample", "parquet", "summary", minute=m,
                    reason=f"quotes taken {span[i] / 1000:.1f} s apart (MAX_SAMPLE_SPAN_MS {max_span_ms:g})")
            for m, i in zip(minutes, slow, strict=True)]


def score_index(findings: list[Finding], denominators: dict[str, float]) -> tuple[float, dict[str, float]]:
    """100 minus the weighted category penalties (see the module docstring)."""
    penalties: dict[str, float] = {}
    by_cat: dict[str, list[Finding]] = {}
    for f in findings:
        by_cat.setdefault(KINDS[f.kind][0], []).append(f)
    for cat, fs in by_cat.items():
        if cat == "completeness":
            p = 10 * len(fs) / max(denominators["cells"], 1)
        elif cat == "legs":
            p = 20 * len(fs) / max(denominators["legs_expected"], 1)
        elif cat == "integrity":
            rows = sum(1 for f in fs if f.kind in ROW_KINDS)
            files = sum(1 for f in fs if f.kind in FILE_KINDS)
            p = 50 * rows / max(denominators["rows"], 1) + 0.5 * files
        elif cat == "values":
            p = 50 * len(fs) / max(denominators["legs"], 1)
        elif cat == "arbitrage":
            p = 50 * len(fs) / max(denominators["relations"], 1)
        else:
            p = 10 * len(fs) / max(denominators["compared"], 1)
        penalties[cat] = round(min(1.0, max(MIN_PENALTY[cat], p)), 6)
    score = 100.0 - sum(WEIGHTS[c] * p for c, p in penalties.items())
    return round(max(0.0, score), 2), penalties


def status_of(score: float, findings: list[Finding], completeness: dict[str, dict]) -> str:
    worst_missing = max((c["expected"] - c["present"]) / max(c["expected"], 1) for c in completeness.values()) \
        if completeness else 0.0
    if any(f.kind in CORRUPTION for f in findings) or worst_missing > 0.01 or score < 90:
        return "FAIL"
    if any(f.severity == "error" for f in findings) or any(f.kind == "missing_legs" for f in findings) or score < 99:
        return "WARN"
    return "PASS"


def missing_ranges(missing: pd.DatetimeIndex) -> list[tuple[str, str]]:
    """Consecutive missing minutes folded into [first, last] ranges (ISO, UTC)."""
    if len(missing) == 0:
        return []
    m = missing.sort_values()
    breaks = (m[1:] - m[:-1]) != pd.Timedelta(minutes=1)
    starts = [m[0], *m[1:][breaks]]
    ends = [*m[:-1][breaks], m[-1]]
    return [(s.isoformat(), e.isoformat()) for s, e in zip(starts, ends, strict=True)]


def compare_minutes(expected: pd.DatetimeIndex, stored: pd.DatetimeIndex) -> dict:
    """Completeness of one index-day: counts, ratio, gaps, and minutes stored outside the session."""
    stored = pd.DatetimeIndex(stored).unique()
    missing = expected.difference(stored)
    extra = stored.difference(expected)
    return {
        "expected": len(expected),
        "stored": len(expected) - len(missing),
        "completeness": 1.0 if len(expected) == 0 else round((len(expected) - len(missing)) / len(expected), 6),
        "gaps": missing_ranges(missing),
        "outside_session": len(extra),
    }


def completeness(index: str, day: dt.date, settings: Settings | None = None) -> dict:
    """Expected minutes from the calendar against minutes present in the Parquet summary table."""
    from optask.storage.sinks import stored_minutes

    settings = settings or get_settings()
    expected = get_calendar(settings.data.calendar_overrides).session_minutes(day)
    return compare_minutes(expected, stored_minutes(index, day, settings=settings))


# --- reading the stores (the I/O edge) -----------------------------------------------------------

@dataclass
class IndexDay:
    """What one index-day's verification read, and what it found."""

    index: str
    findings: list[Finding] = field(default_factory=list)
    completeness: dict[str, dict] = field(default_factory=dict)
    denominators: dict[str, float] = field(default_factory=dict)
    legs_per_minute: dict[str, int] = field(default_factory=dict)


def _read_parquet(store, index: str, day: dt.date, table: str, columns: list[str] | None) -> tuple[pa.Table, list[Finding]]:
    """The table, or what could be read of it, with a finding per unreadable file."""
    import pyarrow.parquet as pq

    try:
        return store.read_table(table, index, day, columns=columns), []
    except (OSError, pa.ArrowInvalid) as whole:
        day_file, minute_files = store.files(table, index, day)
        good, findings = [], []
        for p in [f for f in [day_file, *minute_files] if f is not None]:
            try:
                pq.read_metadata(p)
                pq.read_table(p, columns=["ts"])
                good.append(p)
            except (OSError, pa.ArrowInvalid) as exc:
                findings.append(Finding(index, "unreadable_file", "parquet", table, reason=f"{p}: {exc}"))
        if not findings:
            findings.append(Finding(index, "unreadable_file", "parquet", table, reason=f"{table}: {whole}"))
        day_good = day_file if day_file in good else None
        rest = store.read_files(day_good, [p for p in minute_files if p in good], index,
                                None if columns is None else list(dict.fromkeys(["ts", *columns])))
        return (rest if rest is not None else pa.table({})), findings


def verify_index(index: str, day: dt.date, settings: Settings, expected: pd.DatetimeIndex) -> IndexDay:
    from optask.storage.csv import CsvStore, Sidecar
    from optask.storage.parquet import ParquetStore

    out = IndexDay(index)
    parquet = ParquetStore(settings.data.parquet_root)
    csv = CsvStore(settings.data.csv_root)
    rows_total = 0
    counts: dict[str, dict[str, dict[str, int]]] = {t: {} for t in TABLES}
    legs = pa.table({})
    for table, keys in TABLES.items():
        cols = LEG_COLUMNS if table == "legs" else [k for k in keys if k != "index"]
        t, unreadable = _read_parquet(parquet, index, day, table, cols)
        out.findings += unreadable
        present = pd.DatetimeIndex(pc.unique(t["ts"]).to_pandas()) if t.num_rows else pd.DatetimeIndex([], tz="UTC")
        c = check_minutes(index, expected, present, "parquet", table)
        out.completeness[f"parquet.{table}"] = {k: v for k, v in c.items() if k != "findings"}
        out.findings += c["findings"]
        out.findings += check_integrity(index, t, keys, expected, "parquet", table)
        rows_total += t.num_rows
        if t.num_rows:
            per = t.group_by("ts").aggregate([([], "count_all")])
            counts[table]["parquet"] = dict(zip(_iso(per["ts"].to_pylist()), per["count_all"].to_pylist(), strict=True))
        if table == "legs":
            legs = t
        path = csv.path(table, index, day)
        meta = Sidecar.load(path)
        text, error = None, None
        try:
            text = csv.read_day(table, index, day, columns=[k for k in keys if k != "index"])
        except (OSError, pa.ArrowInvalid) as exc:
            error = f"{type(exc).__name__}: {exc}"
        out.findings += check_csv_file(index, table, path, meta, text, error)
        minutes, per_minute = csv_minutes(text) if text is not None and text.num_rows else (pd.DatetimeIndex([], tz="UTC"), {})
        c = check_minutes(index, expected, minutes, "csv", table)
        out.completeness[f"csv.{table}"] = {k: v for k, v in c.items() if k != "findings"}
        out.findings += c["findings"]
        if text is not None and text.num_rows:
            typed = text.set_column(text.column_names.index("ts"), "ts",
                                    pa.array(pd.to_datetime(text["ts"].to_pandas(), errors="coerce", utc=True)))
            dups = check_integrity(index, typed, keys, expected, "csv", table)
            out.findings += [f for f in dups if f.kind == "duplicate_key" or f.kind == "outside_session"]
            counts[table]["csv"] = per_minute
            rows_total += text.num_rows
    if settings.influx.enabled:
        _influx(index, day, settings, expected, out, counts)
    out.findings += check_sampling(index, parquet, day, settings.data.max_sample_span_ms)
    leg_findings, want, missing = check_legs_universe(index, legs, expected)
    out.findings += leg_findings
    value_findings, n_legs = check_values(index, legs)
    out.findings += value_findings
    arb_findings, relations = check_arbitrage(index, legs, settings.market.risk_free_rate)
    out.findings += arb_findings
    compared = 0
    for table in TABLES:
        f, n = check_consistency(index, counts[table], table)
        out.findings += f
        compared += n
    out.legs_per_minute = counts["legs"].get("parquet", {})
    out.denominators = {"cells": len(expected) * len(out.completeness), "legs_expected": want, "rows": rows_total,
                        "legs": n_legs, "relations": relations, "compared": compared, "legs_missing": missing}
    return out


def _influx(index: str, day: dt.date, settings: Settings, expected: pd.DatetimeIndex, out: IndexDay,
            counts: dict) -> None:
    from optask.storage.influx import InfluxReadError, points_per_minute

    s = settings.influx
    start = int(expected[0].timestamp()) if len(expected) else 0
    end = int(expected[-1].timestamp()) + 60 if len(expected) else 0
    for table, measurement, field_ in (("legs", "option_leg", "ltp"), ("summary", "chain_summary", "legs")):
        try:
            per = points_per_minute(s.url, s.org, s.bucket, s.token.get_secret_value(), measurement, field_, index,
                                    start, end)
        except InfluxReadError as exc:
            out.findings.append(Finding(index, "store_unavailable", "influx", table, reason=str(exc)))
            continue
        present = pd.DatetimeIndex(pd.to_datetime(sorted(per), unit="s", utc=True))
        c = check_minutes(index, expected, present, "influx", table)
        out.completeness[f"influx.{table}"] = {k: v for k, v in c.items() if k != "findings"}
        out.findings += c["findings"]
        counts[table]["influx"] = {pd.Timestamp(k, unit="s", tz="UTC").isoformat(): v for k, v in per.items()}


def verify_day(day: dt.date, indices: list[str] | None = None, settings: Settings | None = None) -> dict:
    """Verify every index of a day from the stores; the results dict (see the module docstring)."""
    settings = settings or get_settings()
    indices = list(indices or settings.market.indices)
    calendar = get_calendar(settings.data.calendar_overrides)
    if calendar.session(day) is None:
        raise ValueError(f"{day} is not a market session (weekend or holiday); nothing to verify")
    expected = calendar.session_minutes(day).as_unit("ns")
    started = time.perf_counter()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, len(indices))) as pool:  # pyarrow and numpy release the GIL
        parts = list(pool.map(lambda i: verify_index(i, day, settings, expected), indices))
    results: dict = {"day": day.isoformat(), "generated_at": time.time(), "weights": WEIGHTS,
                     "thresholds": {"stale_minutes": STALE_MINUTES, "stale_ticks": STALE_TICKS, "min_price": MIN_PRICE,
                                    "iv_abs": IV_ABS, "iv_noise": IV_NOISE, "arb_ticks": ARB_TICKS},
                     "indices": {}, "findings": []}
    for part in parts:
        score, penalties = score_index(part.findings, part.denominators)
        by_kind: dict[str, int] = {}
        for f in part.findings:
            by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        results["indices"][part.index] = {
            "score": score, "status": status_of(score, part.findings, part.completeness), "penalties": penalties,
            "completeness": part.completeness, "findings_by_kind": by_kind,
            "legs_missing": int(part.denominators.get("legs_missing", 0)), "legs_per_minute": part.legs_per_minute,
        }
        results["findings"] += [f.as_dict() for f in part.findings]
    statuses = [r["status"] for r in results["indices"].values()]
    overall = "FAIL" if "FAIL" in statuses else "WARN" if "WARN" in statuses else "PASS"
    by_kind_all: dict[str, list[dict]] = {}
    for f in results["findings"]:
        by_kind_all.setdefault(f["kind"], []).append(f)
    results["overall_status"] = overall
    results["summary"] = {
        "data_quality_score": round(float(np.mean([r["score"] for r in results["indices"].values()])), 2) if parts else 100.0,
        "indices": len(parts), "findings": len(results["findings"]),
        "findings_by_kind": {k: len(v) for k, v in by_kind_all.items()},
        "examples": {k: v[:SUMMARY_CAP] for k, v in by_kind_all.items()},
        "missing_minutes": {i: {store: len(c["missing"]) for store, c in r["completeness"].items()}
                            for i, r in results["indices"].items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    return results


def missing_minutes(results: dict, index: str) -> list[str]:
    """ISO UTC minutes that any store or table of the index lacks: the repair work list, from the stores."""
    r = results["indices"].get(index)
    if r is None:
        return []
    return sorted({m for c in r["completeness"].values() for m in c["missing"]})


class EODDataVerificationSystem:
    """The seed platform's entry points, kept: `run_eod_verification(day)` and `save_verification_report(results)`."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()

    def run_eod_verification(self, day: dt.date | str, indices: list[str] | None = None) -> dict:
        if isinstance(day, str):
            day = dt.date.fromisoformat(day)
        return verify_day(day, indices, self.settings)

    def save_verification_report(self, results: dict, before: dict | None = None) -> str:
        """reports/eod/{day}/verification.json and report.html (with the score before a repair, if given)."""
        from optask.report import write_report

        return str(write_report(results, self.settings, before=before))
