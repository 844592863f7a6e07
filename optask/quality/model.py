"""What verification finds and how much each finding weighs: the kinds, their categories, the thresholds.

See `optask.quality.verify` for the checks, the score formula and the statuses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import pyarrow as pa

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
UNIFIED_TS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:00\+05:30$"
LEG_COLUMNS = ["ts", "expiry", "strike", "side", "spot", "ltp", "bid", "ask", "iv", "delta", "vega"]
ROW_KINDS = ("duplicate_key", "outside_session", "unaligned_ts", "ts_format")
FILE_KINDS = ("unreadable_file", "sidecar_mismatch")


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

    @classmethod
    def from_dict(cls, doc: dict) -> Finding:
        """A finding as `as_dict` wrote it (its severity and category follow from its kind)."""
        return cls(**{f.name: doc[f.name] for f in fields(cls)})


def iso_minutes(values) -> list[str]:
    return [pd.Timestamp(v).tz_convert("UTC").isoformat() if v is not None else None for v in values]


def rows_findings(index: str, kind: str, t: pa.Table, mask: np.ndarray, reason, store="parquet", table="legs") -> list[Finding]:
    """One finding per flagged row (minute, expiry, strike, side where the table has them)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    sub = t.take(pa.array(idx))
    cols = sub.column_names
    minutes = iso_minutes(sub["ts"].to_pylist()) if "ts" in cols else [None] * len(idx)
    expiries = [str(e) for e in sub["expiry"].to_pylist()] if "expiry" in cols else [None] * len(idx)
    strikes = sub["strike"].to_pylist() if "strike" in cols else [None] * len(idx)
    sides = sub["side"].to_pylist() if "side" in cols else [None] * len(idx)
    reasons = reason if isinstance(reason, list) else [reason] * len(idx)
    return [Finding(index, kind, store, table, m, e, k, s, r)
            for m, e, k, s, r in zip(minutes, expiries, strikes, sides, reasons, strict=True)]
