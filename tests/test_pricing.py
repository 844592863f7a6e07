"""Pricing: implied volatility recovers the volatility to 1e-9, NaN exactly where none exists; greeks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optask.core.pricing import bs_price, greeks, implied_vol, year_fraction

SPOT = 25_000.0
MINUTE = 1.0 / (365 * 24 * 60)


@settings(max_examples=300, deadline=None)
@given(
    moneyness=st.floats(0.5, 1.5), t=st.floats(5 * MINUTE, 1.0), vol=st.floats(0.03, 3.0),
    is_call=st.booleans(), rate=st.floats(0.0, 0.1), div=st.floats(0.0, 0.03),
)
def test_recovers_volatility(moneyness, t, vol, is_call, rate, div):
    k = SPOT * moneyness
    price = bs_price(SPOT, k, t, rate, vol, is_call, div)
    vega = greeks(SPOT, k, t, rate, vol, is_call, div)["vega"] * 100
    iv = implied_vol(price, SPOT, k, t, rate, is_call, div)
    if vega > 1e-6 * SPOT:
        assert abs(iv - vol) < 1e-9
    else:  # no vega: the price barely depends on vol; still a number that reprices it
        assert np.isnan(iv) or abs(bs_price(SPOT, k, t, rate, iv, is_call, div) - price) < 1e-6 * SPOT


def test_grid_vectorized_including_minutes_before_expiry():
    m = np.linspace(0.5, 1.5, 201)
    t = np.array([5 * MINUTE, 30 * MINUTE, 1 / 365, 7 / 365, 30 / 365, 0.25, 1.0])
    v = np.array([0.03, 0.1, 0.2, 0.5, 1.0, 3.0])
    M, T, V, C = np.meshgrid(m, t, v, [True, False], indexing="ij")
    price = bs_price(SPOT, SPOT * M, T, 0.065, V, C)
    iv = implied_vol(price, SPOT, SPOT * M, T, 0.065, C)
    vega = greeks(SPOT, SPOT * M, T, 0.065, V, C)["vega"] * 100
    ok = vega > 1e-6 * SPOT
    assert np.nanmax(np.abs(iv - V)[ok]) < 1e-9
    assert not np.isnan(iv[ok]).any()


def test_nan_exactly_where_no_volatility_exists():
    k = np.array([24_000.0, 24_000.0, 26_000.0, 25_000.0, 25_000.0, 25_000.0])
    call = np.array([True, True, False, True, False, True])
    t = np.array([0.1, 0.1, 0.1, 0.0, -0.01, 0.1])
    df = np.exp(-0.065 * 0.1)
    fwd = SPOT * np.exp(0.065 * 0.1)
    price = np.array([
        (fwd - 24_000) * df - 1.0,  # below intrinsic
        SPOT + 1.0,  # above the call's bound S
        26_000 * df + 1.0,  # above the put's bound K e^{-rt}
        10.0, 10.0,  # t <= 0
        np.nan,
    ])
    assert np.isnan(implied_vol(price, SPOT, k, t, 0.065, call)).all()
    at_intrinsic = implied_vol((fwd - 24_000) * df, SPOT, 24_000.0, 0.1, 0.065, True)
    assert at_intrinsic == 0.0


def test_against_py_vollib():
    vollib = pytest.importorskip("py_vollib.black_scholes_merton.implied_volatility")
    rng = np.random.default_rng(5)
    n = 300
    k = SPOT * rng.uniform(0.85, 1.15, n)
    t = rng.uniform(1 / 365, 0.25, n)
    vol = rng.uniform(0.08, 0.6, n)
    call = rng.random(n) < 0.5
    price = bs_price(SPOT, k, t, 0.065, vol, call, 0.0)
    ours = implied_vol(price, SPOT, k, t, 0.065, call, 0.0)
    theirs = np.array([vollib.implied_volatility(price[i], SPOT, k[i], t[i], 0.065, 0.0, "c" if call[i] else "p")
                       for i in range(n)])
    ok = greeks(SPOT, k, t, 0.065, vol, call)["vega"] * 100 > 1e-6 * SPOT
    assert ok.mean() > 0.8
    assert np.max(np.abs(ours - theirs)[ok]) < 1e-7
    assert np.max(np.abs(ours - vol)[ok]) < 1e-9


def test_greeks_match_finite_differences():
    k, t, r, v = 25_500.0, 20 / 365, 0.065, 0.18
    for call in (True, False):
        g = greeks(SPOT, k, t, r, v, call)
        h = 1.0
        p = lambda s=SPOT, tt=t, vv=v, c=call: float(bs_price(s, k, tt, r, vv, c))  # noqa: E731
        assert g["delta"] == pytest.approx((p(SPOT + h) - p(SPOT - h)) / (2 * h), rel=1e-6)
        assert g["gamma"] == pytest.approx((p(SPOT + h) - 2 * p() + p(SPOT - h)) / h**2, rel=1e-4)
        assert g["vega"] == pytest.approx((p(vv=v + 1e-4) - p(vv=v - 1e-4)) / 2e-4 / 100, rel=1e-6)
        day = 1 / 365
        assert g["theta"] == pytest.approx(p(tt=t - day / 100) * 100 - p() * 100, rel=2e-3)
    assert np.isnan(greeks(SPOT, k, 0.0, r, v, True)["delta"])


def test_year_fraction_to_1530_ist():
    import datetime as dt

    ts = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)  # 14:30 IST
    yf = year_fraction(ts, np.array(["2026-11-23"], dtype="datetime64[D]"))
    assert yf[0] * 365 * 24 == pytest.approx(1.0)
