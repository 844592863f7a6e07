"""The canonical leg table (DESIGN section 2), shared by every provider, transform and store.

One place so that a column renamed here is renamed everywhere.
"""

from __future__ import annotations

import pyarrow as pa

INDICES: tuple[str, ...] = ("NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY", "SENSEX", "BANKEX")
EXPIRY_KINDS: tuple[str, ...] = ("this_week", "next_week", "this_month", "next_month")
SIDES: tuple[str, ...] = ("CE", "PE")
SOURCES: tuple[str, ...] = ("live", "simulated", "replay", "backfill")

#: The key of a leg: every store keeps at most one row per key.
LEG_KEY: tuple[str, ...] = ("index", "ts", "expiry", "strike", "side")
MERGED_KEY: tuple[str, ...] = ("index", "ts", "expiry", "strike")
SUMMARY_KEY: tuple[str, ...] = ("index", "ts", "expiry")
#: Every stored table and its key: the one map stores, verification and drills read.
TABLE_KEYS: dict[str, tuple[str, ...]] = {"legs": LEG_KEY, "merged": MERGED_KEY, "summary": SUMMARY_KEY}

TS_TYPE = pa.timestamp("ns", tz="UTC")

#: Columns a provider fills (everything but the computed greeks).
RAW_LEG_FIELDS: list[pa.Field] = [
    pa.field("ts", TS_TYPE),
    pa.field("index", pa.string()),
    pa.field("expiry", pa.date32()),
    pa.field("expiry_kind", pa.string()),
    pa.field("strike", pa.float64()),
    pa.field("side", pa.string()),
    pa.field("symbol", pa.string()),
    pa.field("token", pa.int64()),
    pa.field("spot", pa.float64()),
    pa.field("ltp", pa.float64()),
    pa.field("bid", pa.float64()),
    pa.field("ask", pa.float64()),
    pa.field("bid_qty", pa.int64()),
    pa.field("ask_qty", pa.int64()),
    pa.field("volume", pa.int64()),
    pa.field("oi", pa.int64()),
    pa.field("open", pa.float64()),
    pa.field("high", pa.float64()),
    pa.field("low", pa.float64()),
    pa.field("close", pa.float64()),
    pa.field("last_trade_time", TS_TYPE),
]
COMPUTED_FIELDS: list[pa.Field] = [
    pa.field("iv", pa.float64()),
    pa.field("delta", pa.float64()),
    pa.field("gamma", pa.float64()),
    pa.field("theta", pa.float64()),
    pa.field("vega", pa.float64()),
    pa.field("iv_source", pa.string()),  # "mid" (two-sided sane book) or "ltp": which price the iv came from
]
#: live (REST), stream (cut from KiteTicker), rest_fallback (REST while the stream was down), simulated, replay,
#: backfill (rebuilt from history)
SOURCE_FIELD = pa.field("source", pa.string())

RAW_LEG_SCHEMA = pa.schema([*RAW_LEG_FIELDS, SOURCE_FIELD])
LEG_SCHEMA = pa.schema([*RAW_LEG_FIELDS, *COMPUTED_FIELDS, SOURCE_FIELD])

#: Per-side columns that the merged table carries twice, as ce_* and pe_*.
PER_SIDE_COLUMNS: tuple[str, ...] = (
    "symbol", "token", "ltp", "bid", "ask", "bid_qty", "ask_qty", "volume", "oi",
    "open", "high", "low", "close", "last_trade_time", "iv", "delta", "gamma", "theta", "vega", "iv_source",
)

SUMMARY_SCHEMA = pa.schema([
    pa.field("ts", TS_TYPE),
    pa.field("index", pa.string()),
    pa.field("expiry", pa.date32()),
    pa.field("expiry_kind", pa.string()),
    pa.field("spot", pa.float64()),
    pa.field("atm_strike", pa.float64()),
    pa.field("atm_iv", pa.float64()),
    pa.field("pcr_oi", pa.float64()),
    pa.field("pcr_volume", pa.float64()),
    pa.field("max_pain", pa.float64()),
    pa.field("ce_oi_total", pa.int64()),
    pa.field("pe_oi_total", pa.int64()),
    pa.field("legs", pa.int64()),
    # When the quotes behind the minute were taken: first to last quote call (ms), and the spot's call
    # against its options' (ms, positive when the spot was sampled later). Null when the source gives no times.
    pa.field("sample_span_ms", pa.float64()),
    pa.field("spot_offset_ms", pa.float64()),
])
