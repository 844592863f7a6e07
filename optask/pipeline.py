"""The pure middle: a snapshot's legs in; enriched legs, CE/PE merged rows and the chain summary out.

Everything here is a function of its input tables (plus rate and dividend yield), vectorized
over legs with numpy and pyarrow: no Python loop over legs or strikes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from optask.core.config import get_settings
from optask.core.pricing import greeks, implied_vol, year_fraction
from optask.core.schema import LEG_SCHEMA, PER_SIDE_COLUMNS, RAW_LEG_SCHEMA, SUMMARY_SCHEMA

REQUIRED = ("ts", "index", "expiry", "strike", "side", "ltp")
#: A book whose spread is wider than this fraction of its mid is not trusted for the iv.
MAX_SANE_SPREAD = 0.5


class ChainError(ValueError):
    """The input is not an option chain at all; the message says what is missing."""


@dataclass
class ValidationReport:
    rows_in: int = 0
    rows_out: int = 0
    removed: dict[str, int] = field(default_factory=dict)


@dataclass
class ProcessedMinute:
    legs: pa.Table
    merged: pa.Table
    summary: pa.Table
    report: ValidationReport


def _settings_rates() -> tuple[float, float]:
    m = get_settings().market
    return m.risk_free_rate, m.dividend_yield


# --- validate -----------------------------------------------------------------------------------

def _coerce(table: pa.Table) -> pa.Table:
    """Every RAW_LEG_SCHEMA column, in order and type; absent optional columns become nulls."""
    n = table.num_rows
    columns = []
    for f in RAW_LEG_SCHEMA:
        if f.name in table.column_names:
            col = table[f.name]
            try:
                columns.append(col.cast(f.type) if col.type != f.type else col)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ChainError(f"column {f.name!r} of type {col.type} cannot be read as {f.type}: {exc}") from None
        else:
            columns.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(columns, schema=RAW_LEG_SCHEMA)


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64, NaN where null."""
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=float)


def _codes(col: pa.ChunkedArray) -> np.ndarray:
    """Equal values, equal codes (int64 >= 0); null -1."""
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    return pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _repeated(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """Rows whose key (the tuple of columns) appeared in an earlier row."""
    n = len(keys[0])
    if n < 2:
        return np.zeros(n, dtype=bool)
    order = np.lexsort(keys[::-1])  # stable: among equal keys the earliest row comes first
    same = np.all([k[order][1:] == k[order][:-1] for k in keys], axis=0)
    out = np.zeros(n, dtype=bool)
    out[order[1:][same]] = True
    return out


def _group_mode(group: np.ndarray, values: np.ndarray) -> dict:
    """The most common value per group (ties: the smallest), without a Python loop over rows."""
    order = np.lexsort((values, group))
    g, v = group[order], values[order]
    runs = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (v[1:] != v[:-1])])  # one run per (group, value)
    counts = np.diff(np.r_[runs, len(g)])
    rg, rv = g[runs], v[runs]
    best = np.lexsort((rv, -counts, rg))
    first = np.r_[True, rg[best][1:] != rg[best][:-1]]
    return dict(zip(rg[best][first].astype(np.int64).tolist(), rv[best][first].tolist(), strict=True))


def _off_grid(strike: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Strikes off their chain's grid: the step is the most common gap between a group's listed strikes."""
    off = np.zeros(len(strike), dtype=bool)
    if len(strike) < 3:
        return off
    order = np.lexsort((strike, group))
    s, g = strike[order], group[order]
    gaps = np.round(np.diff(s), 6)
    same = (np.diff(g) == 0) & (gaps > 1e-9)
    if not same.any():
        return off
    step_by_group = _group_mode(g[1:][same], gaps[same])
    step_of = np.array([step_by_group.get(int(x), np.nan) for x in np.unique(g)])[np.searchsorted(np.unique(g), g)]
    resid = np.round(np.mod(s, np.where(np.isnan(step_of), 1.0, step_of)), 6)
    origin_by_group = _group_mode(g, resid)
    origin = np.array([origin_by_group[int(x)] for x in np.unique(g)])[np.searchsorted(np.unique(g), g)]
    off[order] = ~np.isnan(step_of) & (np.abs(resid - origin) > 1e-6)
    return off


def as_leg_table(legs) -> pa.Table:
    """Legs as migrating code holds them (Arrow, a pandas DataFrame, a list of dicts or leg objects) -> Arrow.

    An Arrow table passes through untouched, so the fast path costs nothing.
    """
    if isinstance(legs, pa.Table):
        return legs
    if isinstance(legs, pa.RecordBatch):
        return pa.Table.from_batches([legs])
    if isinstance(legs, pd.DataFrame):
        return pa.Table.from_pandas(legs, preserve_index=False)
    if isinstance(legs, list | tuple):
        if not legs:
            return RAW_LEG_SCHEMA.empty_table()
        first = legs[0]
        if isinstance(first, dict):
            return pa.Table.from_pylist(list(legs))
        names = [f.name for f in dataclasses.fields(first)] if dataclasses.is_dataclass(first) else (
            list(vars(first)) if hasattr(first, "__dict__") else None)
        if names:
            try:
                return pa.table({n: [getattr(leg, n) for leg in legs] for n in names})
            except AttributeError as exc:
                raise ChainError(f"legs must all be of one kind: {exc}") from None
    raise ChainError(f"legs must be a pyarrow Table, a pandas DataFrame, or a list of dicts or leg objects "
                     f"(such as MockDataGenerator.generate_option_chain returns); got {type(legs).__name__}")


def validate(table: pa.Table) -> tuple[pa.Table, ValidationReport]:
    """Coerce to the leg schema and drop legs with impossible values; count what was removed and why."""
    if not isinstance(table, pa.Table):
        raise ChainError(f"expected a pyarrow Table of option legs, got {type(table).__name__}")
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ChainError(f"not an option chain: missing column(s) {', '.join(missing)} "
                         f"(have: {', '.join(table.column_names) or 'none'})")
    t = _coerce(table)
    report = ValidationReport(rows_in=t.num_rows)
    ltp, bid, ask, strike = (_floats(t[c]) for c in ("ltp", "bid", "ask", "strike"))
    side = t["side"]
    index, expiry, ts = _codes(t["index"]), _codes(t["expiry"].cast(pa.int32())), _codes(t["ts"].cast(pa.int64()))
    side_code = _codes(side)
    reasons = {
        "missing_key": ((index < 0) | (expiry < 0) | (ts < 0) | np.isnan(strike)
                        | ~pc.fill_null(pc.is_in(side, pa.array(["CE", "PE"])), False).to_numpy(zero_copy_only=False)),
        "bad_price": ~(ltp > 0) | (bid < 0) | (ask < 0),
        "crossed_book": (bid > 0) & (ask > 0) & (bid > ask),
    }
    group = index * (int(expiry.max(initial=0)) + 2) + expiry + 1  # (index, expiry), nulls a group of their own
    reasons["off_grid_strike"] = _off_grid(np.nan_to_num(strike, nan=0.0), group) & ~reasons["missing_key"]
    keep = np.ones(t.num_rows, dtype=bool)
    for name, mask in reasons.items():
        hit = keep & mask
        if hit.any():
            report.removed[name] = int(hit.sum())
        keep &= ~mask
    # a key seen before, among every row (as pandas' duplicated(keep="first")): NaN equals NaN, -0.0 equals 0.0
    dup = _repeated((index, ts, expiry, np.isnan(strike), np.nan_to_num(strike, nan=0.0) + 0.0, side_code)) & keep
    if dup.any():
        report.removed["duplicate_key"] = int(dup.sum())
    keep &= ~dup
    clean = t.filter(pa.array(keep)) if not keep.all() else t
    report.rows_out = clean.num_rows
    return clean, report


# --- enrich -------------------------------------------------------------------------------------

_IV_SOURCES = pa.array(["mid", "ltp"], pa.string())  # iv_source: 0 from the mid of the book, 1 from ltp


def enrich(legs: pa.Table, rate: float | None = None, div: float | None = None) -> pa.Table:
    """IV and greeks per leg, from the mid of a two-sided sane book, else from ltp (recorded in iv_source)."""
    if rate is None or div is None:
        r, q = _settings_rates()
        rate = r if rate is None else rate
        div = q if div is None else div
    n = legs.num_rows

    def arr(name: str) -> np.ndarray:
        return legs[name].to_numpy(zero_copy_only=False).astype(float) if n else np.empty(0)

    bid, ask, ltp, spot, strike = arr("bid"), arr("ask"), arr("ltp"), arr("spot"), arr("strike")
    mid = 0.5 * (bid + ask)
    with np.errstate(invalid="ignore", divide="ignore"):
        sane = (bid > 0) & (ask > 0) & (ask >= bid) & ((ask - bid) / mid <= MAX_SANE_SPREAD)
    price = np.where(sane, mid, ltp)
    is_call = (legs["side"].to_numpy(zero_copy_only=False) == "CE") if n else np.empty(0, dtype=bool)
    ts = legs["ts"].to_numpy(zero_copy_only=False).astype("datetime64[ns]") if n else np.empty(0, "datetime64[ns]")
    expiry = legs["expiry"].to_numpy(zero_copy_only=False).astype("datetime64[D]") if n else np.empty(0, "datetime64[D]")
    t = year_fraction(ts, expiry)
    iv = implied_vol(price, spot, strike, t, rate, is_call, div)
    g = greeks(spot, strike, t, rate, iv, is_call, div)
    out = legs
    for name, values in (("iv", iv), *((k, g[k]) for k in ("delta", "gamma", "theta", "vega"))):
        out = out.append_column(name, pa.array(values, type=pa.float64()))
    source = pa.DictionaryArray.from_arrays(pa.array((~sane).astype(np.int8)), _IV_SOURCES)
    out = out.append_column("iv_source", source.cast(pa.string()))
    return out.select(LEG_SCHEMA.names).cast(LEG_SCHEMA)


# --- merge --------------------------------------------------------------------------------------

_META = ("expiry_kind", "spot", "source")


def merge(legs: pa.Table) -> pa.Table:
    """One row per (ts, index, expiry, strike) with ce_* and pe_* columns; a one-sided strike keeps NaNs.

    Legs as `validate` leaves them (no null key, one leg per key and side): one sort pairs each CE with its PE.
    """
    keys = ["ts", "index", "expiry", "strike"]
    per_side = [c for c in PER_SIDE_COLUMNS if c in legs.column_names]
    if any(legs[k].null_count for k in keys):
        raise ChainError("merge needs validated legs: a key column has nulls")
    is_call = pc.equal(legs["side"], "CE").to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(is_call | pc.equal(legs["side"], "PE").to_numpy(zero_copy_only=False))
    names = pc.dictionary_encode(legs["index"].combine_chunks())
    rank = np.argsort(np.argsort(np.array(names.dictionary.to_pylist(), dtype=object)))  # string order
    index_rank = rank[names.indices.to_numpy(zero_copy_only=False)[rows]]
    cols = (legs["ts"].cast(pa.int64()).to_numpy()[rows], legs["expiry"].cast(pa.int32()).to_numpy()[rows],
            legs["strike"].to_numpy(zero_copy_only=False)[rows])
    order = np.lexsort((~is_call[rows], cols[2], cols[1], cols[0], index_rank))  # CE before PE within a key
    sorted_keys = [index_rank[order], *(c[order] for c in cols)]
    new = np.r_[True, np.any([k[1:] != k[:-1] for k in sorted_keys], axis=0)] if len(order) else np.zeros(0, bool)
    group = np.cumsum(new) - 1
    ce_row, pe_row = np.full(int(new.sum()), -1), np.full(int(new.sum()), -1)
    calls = is_call[rows][order]
    ce_row[group[calls]], pe_row[group[~calls]] = rows[order][calls], rows[order][~calls]
    if np.bincount(group, minlength=len(ce_row)).max(initial=0) > 2 or (ce_row >= 0).sum() != calls.sum():
        raise ChainError("merge needs validated legs: a strike has two legs of one side")
    head = legs.select(keys).take(pa.array(rows[order][new]))

    def side(at: np.ndarray, prefix: str) -> pa.Table:
        t = legs.select(list(_META) + per_side).take(pa.array(at, mask=at < 0))
        return t.rename_columns([f"_{prefix}{m}" for m in _META] + [f"{prefix}_{c}" for c in per_side])

    ce, pe = side(ce_row, "ce"), side(pe_row, "pe")
    meta = {m: pc.coalesce(ce[f"_ce{m}"], pe[f"_pe{m}"]) for m in _META}
    out = {**{k: head[k] for k in keys}, "expiry_kind": meta["expiry_kind"], "spot": meta["spot"],
           **{f"ce_{c}": ce[f"ce_{c}"] for c in per_side}, **{f"pe_{c}": pe[f"pe_{c}"] for c in per_side},
           "source": meta["source"]}
    return pa.table(out)


# --- summarize ----------------------------------------------------------------------------------


def _group_argmin(values: np.ndarray, codes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row of the smallest value in each group (rows sorted by group); NaN never wins."""
    order = np.lexsort((np.where(np.isnan(values), np.inf, values), codes))
    return order[starts]


def _col(t: pa.Table, name: str, fill: float | None = None) -> np.ndarray:
    a = t[name].to_numpy(zero_copy_only=False)
    a = a.astype(float) if a.dtype.kind in "iuf" or a.dtype == object else a
    return np.nan_to_num(a, nan=fill) if fill is not None else a


def parity_forwards(k: np.ndarray, c_px: np.ndarray, p_px: np.ndarray, years: np.ndarray, rate: float,
                    codes: np.ndarray, starts: np.ndarray, spot: np.ndarray) -> np.ndarray:
    """Per group (rows sorted by group, `starts` its first rows): the forward implied by put-call parity at the
    strike where CE and PE trade closest, K + (C - P) e^{rT}; the group's spot where no strike has both."""
    with np.errstate(invalid="ignore"):
        fwd_i = k + (c_px - p_px) * np.exp(rate * np.maximum(years, 0.0))
    diff = np.abs(c_px - p_px)
    best = _group_argmin(diff, codes, starts)
    return np.where(np.isfinite(diff[best]), fwd_i[best], spot)


def summarize(legs: pa.Table, rate: float | None = None, merged: pa.Table | None = None) -> pa.Table:
    """Per (ts, index, expiry): spot, ATM strike and IV, PCR by OI and volume, exact max pain, OI totals, legs."""
    if rate is None:
        rate = _settings_rates()[0]
    if legs.num_rows == 0:
        return SUMMARY_SCHEMA.empty_table()
    m = merged if merged is not None else merge(legs)  # sorted by index, ts, expiry, strike
    key = pa.table({"index": m["index"], "ts": m["ts"], "expiry": m["expiry"]})
    change = np.zeros(m.num_rows, dtype=bool)
    change[0] = True
    for name in ("index", "ts", "expiry"):
        col = key[name]
        change[1:] |= ~pc.equal(col.slice(1), col.slice(0, m.num_rows - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(change)
    sizes = np.diff(np.r_[starts, m.num_rows])
    codes = np.repeat(np.arange(len(starts)), sizes)
    k = _col(m, "strike")
    c_oi, p_oi = _col(m, "ce_oi", 0.0), _col(m, "pe_oi", 0.0)
    c_vol, p_vol = _col(m, "ce_volume", 0.0), _col(m, "pe_volume", 0.0)

    def group_sum(v: np.ndarray) -> np.ndarray:
        return np.add.reduceat(v, starts)

    def grouped_cumsum(v: np.ndarray) -> np.ndarray:
        c = np.cumsum(v)
        return c - np.repeat(c[starts] - v[starts], sizes)

    # Max pain, exact: payout(K_j) = sum_{i<j} cOI_i (K_j - K_i) + sum_{i>j} pOI_i (K_i - K_j), by grouped prefix sums.
    call_n, call_kn = grouped_cumsum(c_oi) - c_oi, grouped_cumsum(c_oi * k) - c_oi * k
    put_tot, put_ktot = np.repeat(group_sum(p_oi), sizes), np.repeat(group_sum(p_oi * k), sizes)
    put_le, put_kle = grouped_cumsum(p_oi), grouped_cumsum(p_oi * k)
    payout = (k * call_n - call_kn) + ((put_ktot - put_kle) - k * (put_tot - put_le))
    pain = _group_argmin(payout, codes, starts)
    # ATM: the strike nearest the forward implied by put-call parity where both sides trade; else spot.
    ts = m["ts"].cast(pa.int64()).to_numpy().astype("datetime64[ns]")
    t = year_fraction(ts, m["expiry"].to_numpy(zero_copy_only=False).astype("datetime64[D]"))
    spot, c_px, p_px = _col(m, "spot"), _col(m, "ce_ltp"), _col(m, "pe_ltp")
    fwd = parity_forwards(k, c_px, p_px, t, rate, codes, starts, spot[starts])
    atm_row = _group_argmin(np.abs(k - np.repeat(fwd, sizes)), codes, starts)
    pair = np.vstack([_col(m, "ce_iv")[atm_row], _col(m, "pe_iv")[atm_row]])
    seen = (~np.isnan(pair)).sum(axis=0)
    atm_iv = np.where(seen > 0, np.nansum(pair, axis=0) / np.maximum(seen, 1), np.nan)
    ce_tot, pe_tot = group_sum(c_oi), group_sum(p_oi)
    ce_vt, pe_vt = group_sum(c_vol), group_sum(p_vol)
    with np.errstate(invalid="ignore", divide="ignore"):
        pcr_oi = np.where(ce_tot > 0, pe_tot / ce_tot, np.nan)
        pcr_vol = np.where(ce_vt > 0, pe_vt / ce_vt, np.nan)
    legs_per_group = group_sum((~np.isnan(c_px) | m["ce_token"].is_valid().to_numpy(zero_copy_only=False)).astype(float)
                               + (~np.isnan(p_px) | m["pe_token"].is_valid().to_numpy(zero_copy_only=False)))
    head = m.take(pa.array(starts))
    return pa.table({
        "ts": head["ts"], "index": head["index"], "expiry": head["expiry"], "expiry_kind": head["expiry_kind"],
        "spot": spot[starts], "atm_strike": k[atm_row], "atm_iv": atm_iv, "pcr_oi": pcr_oi, "pcr_volume": pcr_vol,
        "max_pain": k[pain], "ce_oi_total": ce_tot.astype(np.int64), "pe_oi_total": pe_tot.astype(np.int64),
        "legs": legs_per_group.astype(np.int64),
        "sample_span_ms": pa.nulls(len(starts), pa.float64()), "spot_offset_ms": pa.nulls(len(starts), pa.float64()),
    }, schema=SUMMARY_SCHEMA)


def process_snapshot(snapshot, rate: float | None = None, div: float | None = None) -> ProcessedMinute:
    """validate -> enrich -> merge -> summarize, for a Snapshot (or a bare leg table)."""
    table = snapshot.table if hasattr(snapshot, "table") else snapshot
    processed = _process(table, rate, div)
    if hasattr(snapshot, "ts"):
        processed.summary = _with_sampling(processed.summary, [snapshot])
    return processed


def process_snapshots(snapshots: list, rate: float | None = None, div: float | None = None) -> ProcessedMinute:
    """Many minutes of one index in one pass (backfill, repair, replay): the rows `process_snapshot` gives each
    minute, in minute order."""
    table = pa.concat_tables([s.table for s in snapshots], promote_options="default")
    processed = _process(table, rate, div)
    processed.summary = _with_sampling(processed.summary, snapshots)
    return processed


def _process(table: pa.Table, rate: float | None, div: float | None) -> ProcessedMinute:
    clean, report = validate(table)
    legs = enrich(clean, rate, div)
    merged = merge(legs)
    return ProcessedMinute(legs=legs, merged=merged, summary=summarize(legs, rate, merged), report=report)


def _with_sampling(summary: pa.Table, snapshots: list) -> pa.Table:
    """Each snapshot's sampling times (span, spot offset) on every expiry's row of its minute; null if unknown."""
    if not summary.num_rows:
        return summary
    minute_of = summary["ts"].cast(pa.int64()).to_numpy()
    for name in ("sample_span_ms", "spot_offset_ms"):
        by_minute = {int(s.ts.timestamp()) * 10**9: getattr(s, name, None) for s in snapshots}
        if all(v is None for v in by_minute.values()):
            continue
        values = [by_minute.get(int(m)) for m in minute_of]  # one per expiry row, not per leg
        summary = summary.set_column(summary.schema.get_field_index(name), name,
                                     pa.array([None if v is None else float(v) for v in values], pa.float64()))
    return summary
