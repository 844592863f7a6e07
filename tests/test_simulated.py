"""The simulated market: realistic shape, deterministic, free of static arbitrage within the tick."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optask.core.calendar import MarketCalendar
from optask.core.schema import INDICES, RAW_LEG_SCHEMA
from optask.providers.base import PermanentProviderError, TemporaryProviderError
from optask.providers.simulated import SPECS, SimFaults, SimulatedProvider, parse_payload

CAL = MarketCalendar()
DAYS = CAL.sessions(dt.date(2025, 1, 1), dt.date(2026, 12, 31))
DAYS = [s for s in DAYS if s.minutes == 375]
TICK = 0.05


def minute(day_idx: int, m: int) -> dt.datetime:
    s = DAYS[day_idx % len(DAYS)]
    return CAL.session_minutes(s.day)[m % 375].to_pydatetime()


def test_all_indices_realistic():
    p = SimulatedProvider()
    ts = minute(100, 30)
    for index in INDICES:
        snap = p.snapshot(index, ts)
        t = snap.table
        assert t.schema == RAW_LEG_SCHEMA and t.num_rows > 0
        df = t.to_pandas()
        spot = df["spot"].iloc[0]
        assert 0.7 < spot / SPECS[index].base_spot < 1.3
        steps = np.diff(np.unique(df["strike"]))
        assert np.allclose(steps, SPECS[index].strike_step)
        assert (df["ltp"] > 0).all() and (df["bid"] <= df["ask"]).all()
        assert np.allclose(np.round(df["ltp"] / TICK) * TICK, df["ltp"])
        assert set(df["source"]) == {"simulated"} and set(df["side"]) == {"CE", "PE"}
        assert df["symbol"].str.startswith(index).all()


def test_weekly_and_monthly_expiries():
    p = SimulatedProvider()
    day = dt.date(2026, 11, 16)
    nifty = p.universe("NIFTY", day)
    assert nifty.expiries["this_week"] != nifty.expiries["next_week"]
    assert nifty.expiries["this_week"].weekday() in (0, 1)  # Tuesday, or Monday before a Tuesday holiday
    assert p.universe("SENSEX", day).expiries["this_week"].weekday() in (2, 3)
    bank = p.universe("BANKNIFTY", day)
    assert bank.expiries["this_week"] == bank.expiries["this_month"] and bank.notes
    assert (bank.expiries["this_month"] + dt.timedelta(days=7)).month != bank.expiries["this_month"].month or \
        not CAL.is_trading_day(bank.expiries["this_month"] + dt.timedelta(days=1))


def test_universe_widens_with_spot():
    p = SimulatedProvider(strikes_around_atm=5)
    day = DAYS[50].day
    first = p.universe("NIFTY", day)
    last = p.universe("NIFTY", day, CAL.session_minutes(day)[-1].to_pydatetime())
    a, b = set(next(iter(first.strikes.values()))), set(next(iter(last.strikes.values())))
    assert a <= b and len(a) == 11
    path = p.day_path("NIFTY", day)
    step = SPECS["NIFTY"].strike_step
    assert min(b) <= round(path.min() / step) * step - 5 * step
    assert max(b) >= round(path.max() / step) * step + 5 * step


def test_spread_wider_away_from_atm():
    p = SimulatedProvider(strikes_around_atm=30)
    df = p.snapshot("NIFTY", minute(7, 100)).table.to_pandas()
    df = df[df["expiry"] == df["expiry"].max()]
    rel = (df["ask"] - df["bid"]) / ((df["ask"] + df["bid"]) / 2)
    dist = (df["strike"] - df["spot"]).abs()
    near, far = rel[dist < dist.quantile(0.2)].median(), rel[dist > dist.quantile(0.8)].median()
    assert far > near


def test_volume_u_shaped_and_growing():
    p = SimulatedProvider()
    day = DAYS[3].day
    mins = CAL.session_minutes(day)
    vols = [p.snapshot("NIFTY", mins[m].to_pydatetime()).table["volume"].to_numpy().sum() for m in (1, 30, 187, 345, 374)]
    assert all(a <= b for a, b in zip(vols, vols[1:], strict=False))
    first_half_hour, mid_half_hour, last_half_hour = vols[1] - vols[0], (vols[2] - vols[1]) / (157 / 29), vols[4] - vols[3]
    assert first_half_hour > mid_half_hour and last_half_hour > mid_half_hour


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 374), st.sampled_from(INDICES))
def test_deterministic_in_any_order(d, m, index):
    ts = minute(d, m)
    a = SimulatedProvider(seed=3)
    b = SimulatedProvider(seed=3)
    b.snapshot(index, minute(d + 1, m + 7))  # other calls first
    sa, sb = a.snapshot(index, ts), b.snapshot(index, ts)
    assert sa.raw == sb.raw and sa.table.equals(sb.table)
    assert not SimulatedProvider(seed=4).snapshot(index, ts).table.equals(sa.table)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 374), st.sampled_from(INDICES))
def test_no_static_arbitrage_within_the_tick(d, m, index):
    p = SimulatedProvider(strikes_around_atm=25)
    df = p.snapshot(index, minute(d, m)).table.to_pandas()
    df["mid"] = (df["bid"] + df["ask"]) / 2
    for expiry, g in df.groupby("expiry"):
        calls = g[g.side == "CE"].sort_values("strike")
        puts = g[g.side == "PE"].sort_values("strike")
        # the quotes' centre (bid/ask sit symmetrically around it unless the bid is floored at zero)
        c = np.where(calls["bid"] > 0, calls["mid"], calls["ask"] - (calls["ask"] - calls["bid"]) / 2).astype(float)
        p_ = puts["mid"].to_numpy()
        assert (np.diff(c) <= TICK + 1e-9).all(), "calls fall with strike"
        assert (np.diff(p_) >= -TICK - 1e-9).all(), "puts rise with strike"
        # convexity within the tick: second differences not below -2 ticks of rounding
        assert (c[:-2] - 2 * c[1:-1] + c[2:] >= -2 * TICK - 1e-9).all()
        assert (p_[:-2] - 2 * p_[1:-1] + p_[2:] >= -2 * TICK - 1e-9).all()
        # put-call parity within the spread
        spot = g["spot"].iloc[0]
        from optask.core.pricing import year_fraction

        t = float(year_fraction(minute(d, m), np.array([expiry], dtype="datetime64[D]"))[0])
        k = calls["strike"].to_numpy()
        parity = spot - k * np.exp(-0.065 * max(t, 0))
        lhs = calls["mid"].to_numpy() - puts["mid"].to_numpy()
        spread = (calls["ask"] - calls["bid"]).to_numpy() / 2 + (puts["ask"] - puts["bid"]).to_numpy() / 2
        assert (np.abs(lhs - parity) <= spread + 2 * TICK + 1e-9).all()


def test_outside_session_and_unknown_index():
    p = SimulatedProvider()
    with pytest.raises(PermanentProviderError, match="outside a market session"):
        p.snapshot("NIFTY", dt.datetime(2026, 11, 22, 5, 0, tzinfo=dt.UTC))
    with pytest.raises(PermanentProviderError, match="unknown index"):
        p.snapshot("FOO", minute(1, 1))


def test_fault_knobs():
    ts = minute(5, 40)
    clean = SimulatedProvider().snapshot("NIFTY", ts).table
    faulty = SimulatedProvider(faults=SimFaults(drop_legs=0.1, bad_prices=0.05, duplicate_legs=0.05,
                                                crossed_book=0.05, stale_quotes=0.1)).snapshot("NIFTY", ts).table
    df = faulty.to_pandas()
    assert faulty.num_rows != clean.num_rows
    assert df.duplicated(["expiry", "strike", "side"]).any()
    assert (df["bid"] > df["ask"]).any()
    assert (df["ltp"].isna() | (df["ltp"] <= 0)).any()
    assert ((df["ts"] - df["last_trade_time"]).dt.total_seconds() >= 3600).any()
    with pytest.raises(TemporaryProviderError):
        SimulatedProvider(faults=SimFaults(missing_minutes=frozenset({ts}))).snapshot("NIFTY", ts)


def test_outage_file(tmp_path):
    flag = tmp_path / "down"
    p = SimulatedProvider(faults=SimFaults(outage_file=flag))
    ts = minute(2, 2)
    p.snapshot("NIFTY", ts)
    flag.touch()
    with pytest.raises(TemporaryProviderError, match="down"):
        p.snapshot("NIFTY", ts)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b'{"legs": {"strike": [1', "malformed_payload"), (b"not json", "malformed_payload"),
     (b'{"spot": 1, "legs": {"strike": [1]}}', "missing_field_expiry")],
)
def test_malformed_payload_never_raises(raw, reason):
    table, issues = parse_payload(raw, "NIFTY", minute(1, 1))
    assert table.num_rows == 0 and reason in issues


def test_strings_and_unknown_sides_are_counted():
    import orjson

    p = SimulatedProvider(strikes_around_atm=2)
    ts = minute(9, 9)
    doc = orjson.loads(p.payload("NIFTY", ts))
    doc["legs"]["ltp"][0] = "12.5abc"
    doc["legs"]["side"][1] = "XX"
    doc["legs"]["strike"][2] = None
    table, issues = parse_payload(orjson.dumps(doc), "NIFTY", ts)
    n = len(doc["legs"]["strike"])
    assert issues["non_numeric_ltp"] == 1 and issues["unidentifiable_leg"] == 2
    assert table.num_rows == n - 2
    assert pa.compute.sum(pa.compute.is_null(table["ltp"], nan_is_null=True)).as_py() == 1


def test_history_matches_snapshot_as_backfill():
    p = SimulatedProvider()
    day = DAYS[20].day
    mins = [m.to_pydatetime() for m in CAL.session_minutes(day)[:3]]
    hist = list(p.history("SENSEX", day, mins))
    assert [h.table.column("source")[0].as_py() for h in hist] == ["backfill"] * 3
    live = p.snapshot("SENSEX", mins[1]).table
    assert hist[1].table.drop_columns(["source"]).equals(live.drop_columns(["source"]))


@pytest.mark.parametrize("faults", [SimFaults(), SimFaults(drop_legs=0.1, bad_prices=0.1, duplicate_legs=0.05,
                                                           crossed_book=0.05, stale_quotes=0.1)])
def test_the_venue_parses_its_document_as_replay_parses_its_payload(faults):
    """The venue builds its table from the message before encoding it; replay decodes the archived text. Both
    must give the same legs, NaN for NaN (a bad price encodes as JSON null)."""
    p = SimulatedProvider(strikes_around_atm=8, faults=faults)
    for index in ("NIFTY", "BANKEX"):
        for m in (0, 187, 374):
            snap = p.snapshot(index, minute(11, m))
            table, issues = parse_payload(snap.raw, index, snap.ts)
            assert issues == snap.issues
            assert table.schema == snap.table.schema and table.to_pandas().equals(snap.table.to_pandas())
