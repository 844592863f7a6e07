"""The pure middle: validation, enrichment, merged rows and summary on hand-made chains."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from optask.core.pricing import bs_price, year_fraction
from optask.core.schema import LEG_SCHEMA, RAW_LEG_SCHEMA
from optask.pipeline import ChainError, enrich, merge, process_snapshot, summarize, validate

TS = dt.datetime(2026, 11, 23, 4, 0, tzinfo=dt.UTC)
EXPIRY = dt.date(2026, 12, 1)


def chain(strikes, ce_oi, pe_oi, spot=100.0, ce_vol=None, pe_vol=None, vol=0.2, rate=0.0):
    n = len(strikes)
    k = np.repeat(np.asarray(strikes, float), 2)
    side = np.tile(["CE", "PE"], n)
    t = float(year_fraction(TS, np.array([EXPIRY], dtype="datetime64[D]"))[0])
    px = np.maximum(np.round(bs_price(spot, k, t, rate, vol, side == "CE"), 2), 0.5)
    oi = np.ravel(np.column_stack([ce_oi, pe_oi]))
    volume = np.ravel(np.column_stack([ce_vol or [10] * n, pe_vol or [10] * n]))
    return pa.table({
        "ts": pa.array([TS] * 2 * n, pa.timestamp("ns", tz="UTC")), "index": ["NIFTY"] * 2 * n,
        "expiry": pa.array([EXPIRY] * 2 * n, pa.date32()), "expiry_kind": ["next_week"] * 2 * n,
        "strike": k, "side": side, "spot": [spot] * 2 * n, "ltp": px, "bid": px - 0.05, "ask": px + 0.05,
        "oi": pa.array(oi, pa.int64()), "volume": pa.array(volume, pa.int64()),
        "token": pa.array(np.arange(2 * n), pa.int64()), "source": ["simulated"] * 2 * n,
    })


def enriched(t):
    return enrich(validate(t)[0], 0.0, 0.0)


def test_max_pain_pcr_by_hand():
    # strikes 90, 100, 110; CE OI 10, 20, 30; PE OI 40, 20, 10.
    # payout at 90: calls 0; puts (100-90)*20 + (110-90)*10 = 400          -> 400
    # payout at 100: calls (100-90)*10 = 100; puts (110-100)*10 = 100      -> 200
    # payout at 110: calls 20*10 + 10*20 = 400; puts 0                     -> 400
    t = chain([90, 100, 110], [10, 20, 30], [40, 20, 10], ce_vol=[1, 2, 3], pe_vol=[6, 0, 0])
    s = summarize(enriched(t), rate=0.0).to_pylist()[0]
    assert s["max_pain"] == 100.0
    assert s["pcr_oi"] == pytest.approx(70 / 60)
    assert s["pcr_volume"] == pytest.approx(6 / 6)
    assert s["ce_oi_total"] == 60 and s["pe_oi_total"] == 70 and s["legs"] == 6


def test_max_pain_off_centre():
    # heavy put OI at high strikes pulls max pain up: CE 5,5,5,5; PE 0,0,0,100 at 130
    t = chain([100, 110, 120, 130], [5, 5, 5, 5], [0, 0, 0, 100])
    # payouts: 100: 100*30=3000; 110: 5*10 + 100*20=2050; 120: 5*20+5*10 + 1000=1150; 130: 5*30+5*20+5*10=300
    assert summarize(enriched(t), rate=0.0).to_pylist()[0]["max_pain"] == 130.0


def test_atm_from_parity_forward():
    # spot 104 with zero rate: the forward is 104, nearest listed strike 105 (not the spot's 100 bucket)
    t = chain([95, 100, 105, 110], [1] * 4, [1] * 4, spot=104.0)
    s = summarize(enriched(t), rate=0.0).to_pylist()[0]
    assert s["atm_strike"] == 105.0
    assert s["atm_iv"] == pytest.approx(0.2, abs=0.01)


def test_atm_falls_back_to_spot_without_pairs():
    t = chain([95, 100, 105], [1] * 3, [1] * 3, spot=96.0)
    one_sided = t.filter(pa.compute.equal(t["side"], "CE"))
    s = summarize(enriched(one_sided), rate=0.0).to_pylist()[0]
    assert s["atm_strike"] == 95.0


def test_merge_one_row_per_strike_with_nans():
    t = chain([95, 100, 105], [1, 2, 3], [4, 5, 6])
    t = t.slice(0, 5)  # drop the 105 PE
    m = merge(enriched(t))
    assert m.num_rows == 3
    rows = m.to_pylist()
    assert rows[2]["ce_oi"] == 3 and rows[2]["pe_oi"] is None
    assert {"ce_ltp", "pe_ltp", "ce_iv", "pe_iv", "ce_delta", "pe_vega", "ce_iv_source"} <= set(m.column_names)


def test_merge_sorts_by_index_name_then_time_expiry_strike():
    nifty, sensex, bankex = (chain([95, 100], [1, 2], [3, 4]) for _ in range(3))
    legs = pa.concat_tables([  # arrival order is no order: SENSEX, NIFTY, then BANKEX, strikes reversed
        sensex.set_column(1, "index", pa.array(["SENSEX"] * 4)), nifty,
        bankex.set_column(1, "index", pa.array(["BANKEX"] * 4)).take([2, 3, 0, 1])])
    m = merge(enriched(legs))
    assert m["index"].to_pylist() == ["BANKEX", "BANKEX", "NIFTY", "NIFTY", "SENSEX", "SENSEX"]
    assert m["strike"].to_pylist() == [95, 100] * 3 and m["ce_oi"].to_pylist() == [1, 2] * 3


def test_bad_legs_removed_and_counted():
    t = chain([90, 95, 100, 105, 110, 115], [1] * 6, [1] * 6).to_pandas()
    t.loc[0, "ltp"] = -1.0  # negative
    t.loc[1, "ltp"] = np.nan  # NaN
    t.loc[2, ["bid", "ask"]] = [9.0, 5.0]  # crossed
    t.loc[3, "strike"] = 97.3  # off grid
    dup = t.iloc[[4]]
    table = pa.Table.from_pandas(pd_concat(t, dup), preserve_index=False)
    clean, report = validate(table)
    assert report.removed == {"bad_price": 2, "crossed_book": 1, "off_grid_strike": 1, "duplicate_key": 1}
    assert clean.num_rows == 13 - 5 and report.rows_in == 13 and report.rows_out == 8


def pd_concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)


@pytest.mark.parametrize("bad", [pa.table({"strike": [1.0]}), pa.table({}), "not a table"])
def test_not_a_chain(bad):
    with pytest.raises(ChainError, match="option|Table"):
        validate(bad)


def test_iv_source_mid_or_ltp():
    t = chain([95, 100, 105], [1] * 3, [1] * 3).to_pandas()
    t.loc[0, ["bid", "ask"]] = [0.0, 0.0]  # one-sided book: fall back to ltp
    legs = enrich(validate(pa.Table.from_pandas(t, preserve_index=False))[0], 0.0, 0.0)
    src = legs["iv_source"].to_pylist()
    assert src[0] == "ltp" and set(src[1:]) == {"mid"}
    assert legs.schema.equals(LEG_SCHEMA)
    atm = legs.filter(pa.compute.equal(legs["strike"], 100.0))
    assert np.nanmax(np.abs(atm["iv"].to_numpy() - 0.2)) < 0.02


def test_process_snapshot_on_simulated_chain():
    from optask.providers.simulated import SimulatedProvider

    snap = SimulatedProvider().snapshot("BANKNIFTY", TS)
    out = process_snapshot(snap, 0.065, 0.0)
    assert out.legs.num_rows == snap.table.num_rows and out.report.removed == {}
    assert out.merged.num_rows == out.legs.num_rows // 2
    assert out.summary.num_rows == len(set(snap.table["expiry"].to_pylist()))
    assert out.legs.select(RAW_LEG_SCHEMA.names).equals(snap.table)
    iv = out.legs["iv"].to_numpy()
    assert np.isfinite(iv).mean() > 0.95 and np.nanmax(iv) < 1.5
