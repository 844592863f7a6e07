"""Vectorized Black-Scholes: price, implied volatility and greeks over numpy arrays.

Time to expiry is in years of 365 calendar days, measured to 15:30 IST on expiry day
(`year_fraction`); rates and dividend yield are continuously compounded annual rates.
Scalars broadcast against arrays.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

MINUTES_PER_YEAR = 365.0 * 24 * 60


def bs_price(spot, strike, t, rate, vol, is_call, div=0.0) -> np.ndarray:
    """Black-Scholes-Merton price; at t <= 0 or vol <= 0 the discounted intrinsic value."""
    spot, strike, t, rate, vol, is_call, div = np.broadcast_arrays(
        *(np.asarray(x, dtype=float) for x in (spot, strike, t, rate, vol, is_call, div))
    )
    is_call = is_call.astype(bool)
    df_r = np.exp(-rate * np.maximum(t, 0.0))
    df_q = np.exp(-div * np.maximum(t, 0.0))
    fwd = spot * df_q / df_r
    sd = vol * np.sqrt(np.maximum(t, 0.0))
    live = sd > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = np.where(live, (np.log(fwd / strike) + 0.5 * sd * sd) / np.where(live, sd, 1.0), 0.0)
    d2 = d1 - sd
    call = df_r * (fwd * ndtr(d1) - strike * ndtr(d2))
    put = df_r * (strike * ndtr(-d2) - fwd * ndtr(-d1))
    intrinsic_call = df_r * np.maximum(fwd - strike, 0.0)
    intrinsic_put = df_r * np.maximum(strike - fwd, 0.0)
    price = np.where(is_call, np.where(live, call, intrinsic_call), np.where(live, put, intrinsic_put))
    return price


EXPIRY_CLOSE_IST = (15, 30)


def year_fraction(ts, expiry) -> np.ndarray:
    """Years of 365 days from `ts` (aware datetime) to 15:30 IST on each expiry date.

    The one time-to-expiry convention of optask: calendar time, continuous, to the close of
    the expiry day; negative after expiry. `expiry` is an array of datetime64[D] or dates.
    """
    exp = np.asarray(expiry, dtype="datetime64[D]")
    # 15:30 IST is 10:00 UTC.
    close_utc = exp.astype("datetime64[m]") + np.timedelta64(10 * 60, "m")
    now = np.datetime64(int(ts.timestamp() * 1_000_000), "us")
    return (close_utc - now).astype("timedelta64[us]").astype(np.float64) / (365.0 * 86_400e6)
