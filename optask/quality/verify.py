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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from optask.core.calendar import get_calendar
from optask.core.config import Settings, get_settings
from optask.infra.procutil import trim_malloc
from optask.quality.market_checks import (
    BY_MINUTE,
    check_arbitrage,
    check_quotes,
    check_sampling,
    check_values,
)
from optask.quality.model import (
    ARB_TICKS,
    IV_ABS,
    IV_NOISE,
    KINDS,
    LEG_COLUMNS,
    MIN_PRICE,
    STALE_MINUTES,
    STALE_TICKS,
    SUMMARY_CAP,
    WEIGHTS,
    Finding,
    iso_minutes,
)
from optask.quality.report import write_report
from optask.quality.results import (
    BeforeRepair,
    Completeness,
    DayVerification,
    IndexVerification,
    VerificationSummary,
)
from optask.quality.score import score_index, status_of
from optask.quality.store_checks import (
    check_consistency,
    check_csv_file,
    check_integrity,
    check_legs_universe,
    check_minutes,
    compare_minutes,
    csv_minutes,
    missing_ranges,
)
from optask.storage.base import TABLES
from optask.storage.csv import CsvStore, Sidecar
from optask.storage.influx import InfluxReadError, points_per_minute
from optask.storage.parquet import ParquetStore

__all__ = ["KINDS", "DayVerification", "DayVerifier", "Finding", "check_sampling", "compare_minutes", "missing_ranges",
           "verify_day", "verify_index"]


# --- reading the stores (the I/O edge) -----------------------------------------------------------

@dataclass
class IndexDay:
    """What one index-day's verification read, and what it found."""

    index: str
    findings: list[Finding] = field(default_factory=list)
    completeness: dict[str, Completeness] = field(default_factory=dict)  # by key ("parquet.legs")
    denominators: dict[str, float] = field(default_factory=dict)
    legs_per_minute: dict[str, int] = field(default_factory=dict)


def _read_parquet(store, index: str, day: dt.date, table: str, columns: list[str] | None) -> tuple[pa.Table, list[Finding]]:
    """The table, or what could be read of it, with a finding per unreadable file."""
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


def release_memory() -> None:
    """Give back what a table's checks freed (Arrow's pool, then glibc's arenas) before the next table is read."""
    pa.default_memory_pool().release_unused()
    trim_malloc()


@dataclass
class StorePass:
    """One store's pass over an index-day: findings and completeness per table, rows per minute."""

    findings: dict[str, list[Finding]] = field(default_factory=dict)
    completeness: dict[str, Completeness] = field(default_factory=dict)  # by table
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: int = 0
    after: list[Finding] = field(default_factory=list)  # findings reported after the tables' (sampling, market)
    legs: dict[str, float] = field(default_factory=dict)  # the market checks' denominators


def verify_index(index: str, day: dt.date, settings: Settings, expected: pd.DatetimeIndex,
                 passes: tuple[StorePass, StorePass] | None = None) -> IndexDay:
    """Assemble an index-day from its Parquet and CSV passes (run here unless given), in the order of the
    module docstring's checks, then InfluxDB and the cross-store consistency."""
    pq_part, csv_part = passes or (parquet_pass(index, day, settings, expected), csv_pass(index, day, settings, expected))
    out = IndexDay(index)
    counts: dict[str, dict[str, dict[str, int]]] = {t: {} for t in TABLES}
    for table in TABLES:
        for name, part in (("parquet", pq_part), ("csv", csv_part)):
            out.findings += part.findings.get(table, [])
            out.completeness[f"{name}.{table}"] = part.completeness[table]
            if table in part.counts:
                counts[table][name] = part.counts[table]
    if settings.influx.enabled:
        _influx(index, day, settings, expected, out, counts)
    out.findings += pq_part.after
    compared = 0
    for table in TABLES:
        f, n = check_consistency(index, counts[table], table)
        out.findings += f
        compared += n
    out.legs_per_minute = counts["legs"].get("parquet", {})
    out.denominators = {"cells": len(expected) * len(out.completeness), "rows": pq_part.rows + csv_part.rows,
                        "compared": compared, **pq_part.legs}
    return out


def parquet_pass(index: str, day: dt.date, settings: Settings, expected: pd.DatetimeIndex) -> StorePass:
    """Each Parquet table read with the columns its checks need, checked, and let go before the next; the legs'
    market checks run while the legs are in hand."""
    store = ParquetStore.from_settings(settings)
    out = StorePass(legs={"legs_expected": 0, "legs": 0, "relations": 0, "legs_missing": 0})
    market: list[Finding] = []
    for table, keys in TABLES.items():
        cols = LEG_COLUMNS if table == "legs" else [k for k in keys if k != "index"]
        t, found = _read_parquet(store, index, day, table, cols)
        present = pd.DatetimeIndex(pc.unique(t["ts"]).to_pandas()) if t.num_rows else pd.DatetimeIndex([], tz="UTC")
        out.completeness[table], missing = check_minutes(index, expected, present, "parquet", table)
        found += missing + check_integrity(index, t, keys, expected, "parquet", table)
        out.findings[table] = found
        out.rows += t.num_rows
        if t.num_rows:
            out.counts[table] = _rows_per_minute(t["ts"])
        held = [t]
        del t  # the market checks let the legs go once they have sorted them
        if table == "legs":
            market, out.legs = _market_checks(index, held, settings, expected)
        held.clear()
        release_memory()
    out.after = check_sampling(index, store, day, settings.data.max_sample_span_ms) + market
    return out


def _rows_per_minute(ts: pa.ChunkedArray) -> dict[str, int]:
    per = pa.table({"ts": ts}).group_by("ts", use_threads=False).aggregate([([], "count_all")])
    return dict(zip(iso_minutes(per["ts"].to_pylist()), per["count_all"].to_pylist(), strict=True))


def _market_checks(index: str, held: list[pa.Table], settings: Settings,
                   expected: pd.DatetimeIndex) -> tuple[list[Finding], dict[str, float]]:
    """The legs' universe, values and no-arbitrage checks (reported after the store checks). The legs come in
    `held`, which this empties once they are sorted for the checks across strikes, so that one copy of the
    day's legs is in memory at a time."""
    legs = held.pop()
    leg_findings, want, missing = check_legs_universe(index, legs, expected)
    if not legs.num_rows:
        return leg_findings, {"legs_expected": want, "legs": 0, "relations": 0, "legs_missing": missing}
    quotes = check_quotes(index, legs)
    by_minute = legs.sort_by(BY_MINUTE)
    del legs
    release_memory()
    value_findings, n_legs = check_values(index, by_minute, by_minute, quotes)
    arb_findings, relations = check_arbitrage(index, by_minute, settings.market.risk_free_rate, by_minute)
    return (leg_findings + value_findings + arb_findings,
            {"legs_expected": want, "legs": n_legs, "relations": relations, "legs_missing": missing})


def csv_pass(index: str, day: dt.date, settings: Settings, expected: pd.DatetimeIndex) -> StorePass:
    """Each daily CSV against its sidecar, its minutes, duplicate keys and rows per minute, read (streamed)
    with only its key columns and let go before the next."""
    csv = CsvStore(settings.data.csv_root)
    out = StorePass()
    for table, keys in reversed(TABLES.items()):  # the legs last: their read meets the Parquet pass's lighter tables
        path = csv.path(table, index, day)
        meta = Sidecar.load(path)
        text, error = None, None
        try:
            text = csv.read_day(table, index, day, columns=[k for k in keys if k != "index"])
        except (OSError, pa.ArrowInvalid) as exc:
            error = f"{type(exc).__name__}: {exc}"
        found = check_csv_file(index, table, path, meta, text, error)
        minutes, per_minute = csv_minutes(text) if text is not None and text.num_rows else (pd.DatetimeIndex([], tz="UTC"), {})
        out.completeness[table], missing = check_minutes(index, expected, minutes, "csv", table)
        found += missing
        if text is not None and text.num_rows:
            typed = text.set_column(text.column_names.index("ts"), "ts", _parsed_times(text["ts"]))
            found += [f for f in check_integrity(index, typed, keys, expected, "csv", table)
                      if f.kind == "duplicate_key" or f.kind == "outside_session"]
            out.counts[table] = per_minute
            out.rows += text.num_rows
            del typed
        out.findings[table] = found
        del text
        release_memory()
    return out


def _parsed_times(text: pa.ChunkedArray) -> pa.Array:
    """CSV `ts` text -> UTC timestamps (null where malformed), parsing each distinct value once (a day's
    legs have 237,000 rows and 375 distinct minutes)."""
    codes = pc.dictionary_encode(text.combine_chunks())
    parsed = pd.to_datetime(codes.dictionary.to_pandas(), errors="coerce", utc=True)
    return pa.array(parsed).take(codes.indices)


def _influx(index: str, day: dt.date, settings: Settings, expected: pd.DatetimeIndex, out: IndexDay,
            counts: dict) -> None:
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
        c, missing = check_minutes(index, expected, present, "influx", table)
        out.completeness[c.key] = c
        out.findings += missing
        counts[table]["influx"] = {pd.Timestamp(k, unit="s", tz="UTC").isoformat(): v for k, v in per.items()}


def verify_day(day: dt.date, indices: list[str] | None = None, settings: Settings | None = None) -> DayVerification:
    """Verify every index of a day from the stores (see the module docstring)."""
    settings = settings or get_settings()
    indices = list(indices or settings.market.indices)
    calendar = get_calendar(settings.data.calendar_overrides)
    if calendar.session(day) is None:
        raise ValueError(f"{day} is not a market session (weekend or holiday); nothing to verify")
    expected = calendar.session_minutes(day).as_unit("ns")
    started = time.perf_counter()
    # Parquet and CSV side by side (pyarrow and numpy release the GIL), one index at a time each: two cores
    # busy, and at most one index's tables of each store in memory.
    with ThreadPoolExecutor(1, "verify-parquet") as pq_pool, ThreadPoolExecutor(1, "verify-csv") as csv_pool:
        pq_parts = [pq_pool.submit(parquet_pass, i, day, settings, expected) for i in indices]
        csv_parts = [csv_pool.submit(csv_pass, i, day, settings, expected) for i in indices]
        parts = [verify_index(i, day, settings, expected, (p.result(), c.result()))
                 for i, p, c in zip(indices, pq_parts, csv_parts, strict=True)]
    verdicts = {part.index: _verdict(part) for part in parts}
    findings = [f for part in parts for f in part.findings]
    statuses = [r.status for r in verdicts.values()]
    by_kind: dict[str, list[Finding]] = {}
    for f in findings:
        by_kind.setdefault(f.kind, []).append(f)
    summary = VerificationSummary(
        data_quality_score=round(float(np.mean([r.score for r in verdicts.values()])), 2) if parts else 100.0,
        indices=len(parts), findings=len(findings), findings_by_kind={k: len(v) for k, v in by_kind.items()},
        examples={k: v[:SUMMARY_CAP] for k, v in by_kind.items()},
        missing_minutes={i: {key: len(c.missing) for key, c in r.completeness.items()} for i, r in verdicts.items()},
        seconds=round(time.perf_counter() - started, 3))
    return DayVerification(
        day=day.isoformat(), generated_at=time.time(), weights=WEIGHTS,
        thresholds={"stale_minutes": STALE_MINUTES, "stale_ticks": STALE_TICKS, "min_price": MIN_PRICE,
                    "iv_abs": IV_ABS, "iv_noise": IV_NOISE, "arb_ticks": ARB_TICKS},
        indices=verdicts, findings=findings,
        overall_status="FAIL" if "FAIL" in statuses else "WARN" if "WARN" in statuses else "PASS", summary=summary)


def _verdict(part: IndexDay) -> IndexVerification:
    """An index-day's score, status and counts from what its verification found."""
    score, penalties = score_index(part.findings, part.denominators)
    by_kind: dict[str, int] = {}
    for f in part.findings:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
    return IndexVerification(part.index, score, status_of(score, part.findings, part.completeness), penalties,
                             part.completeness, by_kind, int(part.denominators.get("legs_missing", 0)),
                             part.legs_per_minute)


class DayVerifier:
    """Verifies days and writes their reports with one set of settings; also the seed platform's entry points,
    kept (`optask.verify.EODDataVerificationSystem` is this class): `run_eod_verification(day)`, a dict, and
    `save_verification_report(results)`."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()

    def verify(self, day: dt.date | str, indices: list[str] | None = None) -> DayVerification:
        return verify_day(dt.date.fromisoformat(day) if isinstance(day, str) else day, indices, self.settings)

    def save(self, results: DayVerification, before: DayVerification | None = None) -> Path:
        """reports/eod/{day}/verification.json and report.html (with the verdict before a repair, if given)."""
        if before is not None:
            results = replace(results, before_repair=BeforeRepair.of(before))
        return write_report(results, self.settings)

    def run_eod_verification(self, day: dt.date | str, indices: list[str] | None = None) -> dict:
        """The seed's: the results as the report's JSON holds them."""
        return self.verify(day, indices).as_dict()

    def save_verification_report(self, results: dict | DayVerification, before: dict | DayVerification | None = None
                                 ) -> str:
        """The seed's: `save` of results as `run_eod_verification` gave them; the HTML page's path."""
        def typed(r: dict | DayVerification) -> DayVerification:
            return DayVerification.from_dict(r) if isinstance(r, dict) else r

        return str(self.save(typed(results), typed(before) if before else None))
