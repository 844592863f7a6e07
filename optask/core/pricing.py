"""Vectorized Black-Scholes: price, implied volatility and greeks over numpy arrays.

Time to expiry is in years of 365 calendar days, measured to 15:30 IST on expiry day
(`year_fraction`); rates and dividend yield are continuously compounded annual rates.
Scalars broadcast against arrays.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

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
    """Years of 365 days from `ts` (aware datetime, or datetime64 UTC array) to 15:30 IST on each expiry date.

    The one time-to-expiry convention of optask: calendar time, continuous, to the close of
    the expiry day; negative after expiry. `expiry` is an array of datetime64[D] or dates.
    """
    exp = np.asarray(expiry, dtype="datetime64[D]")
    # 15:30 IST is 10:00 UTC.
    close_utc = exp.astype("datetime64[m]") + np.timedelta64(10 * 60, "m")
    if hasattr(ts, "timestamp"):
        now = np.datetime64(int(ts.timestamp() * 1_000_000), "us")
    else:  # an array of UTC instants (datetime64), one per option
        now = np.asarray(ts).astype("datetime64[us]")
    return (close_utc - now).astype("timedelta64[us]").astype(np.float64) / (365.0 * 86_400e6)


# --- implied volatility -----------------------------------------------------------------------
#
# Solved in Black's normalised form (Jäckel's "Let's be rational" set-up): with forward F,
# x = ln(F/K) and the undiscounted price normalised by sqrt(F K), every option becomes an
# out-of-the-money call b(x, s) with x <= 0 and s = vol * sqrt(t):
#     b(x, s) = e^{x/2} N(x/s + s/2) - e^{-x/2} N(x/s - s/2),   0 <= b < e^{x/2}.
# b is convex in s below s_c = sqrt(2|x|) and concave above. Below s_c we iterate on ln b
# (nearly linear there, so the deep wings converge); above it on ln(e^{x/2} - b) (the
# upper asymptote). Each step is Halley's, kept inside a bracket that shrinks every step,
# with bisection whenever a step leaves it, so every element converges.

_SQRT_2PI = np.sqrt(2.0 * np.pi)
_S_MAX = 40.0


def _norm_call(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    h = x / s
    return np.exp(0.5 * x) * ndtr(h + 0.5 * s) - np.exp(-0.5 * x) * ndtr(h - 0.5 * s)


def _solve_s(x: np.ndarray, beta: np.ndarray, tol: float = 1e-13, max_iter: int = 40) -> np.ndarray:
    """s with b(x, s) = beta for x <= 0 and 0 < beta < e^{x/2}, vectorized and bracketed."""
    s_c = np.sqrt(2.0 * np.abs(x))
    b_c = np.where(s_c > 0, _norm_call(x, np.maximum(s_c, 1e-300)), 0.0)
    low = beta < b_c
    upper = np.exp(0.5 * x)
    lo = np.where(low, 0.0, s_c)
    hi = np.where(low, s_c, _S_MAX)
    # Initial guesses. Below s_c, the deep-wing asymptotic b ~ s^3/(x^2 sqrt(2 pi)) exp(-x^2/(2 s^2) - s^2/8),
    # solved by two fixed-point steps. Above it, the exact inverse at x = 0, b = 2 N(s/2) - 1, lifted to s_c.
    s = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        xl, bl = x[low], beta[low]
        ax = np.maximum(np.abs(xl), 1e-300)
        lb = np.log(bl)
        s_low = ax / np.sqrt(np.maximum(-2.0 * lb, 1e-300))
        const = -2.0 * np.log(ax) - np.log(_SQRT_2PI) - lb
        for _ in range(2):
            rhs = 3.0 * np.log(s_low) - 0.125 * s_low**2 + const
            s_low = np.where(rhs > 0, ax / np.sqrt(2.0 * np.maximum(rhs, 1e-300)), s_low)
        s[low] = np.clip(s_low, 1e-8, hi[low])
        high = ~low
        s_high = np.sqrt(s_c[high] ** 2 + (2.0 * ndtri(np.minimum(0.5 * (1.0 + beta[high] / upper[high]),
                                                                   1.0 - 1e-16))) ** 2)
        s[high] = np.clip(s_high, lo[high], hi[high])
    s = np.where(np.isfinite(s) & (s > lo) & (s < hi), s, 0.5 * (lo + hi))
    s = np.where(s <= 0, 0.5 * hi, s)
    # Per element, once: the region's sign, the target of its log objective, and e^{+-x/2}.
    sgn = np.where(low, 1.0, -1.0).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_target = np.log(np.where(low, beta, upper - beta)).ravel()
    out = s.ravel().copy()
    at = np.arange(x.size)  # the unfinished elements, and their state below, compacted as elements finish
    xi, bi, si, ui, sg = x.ravel(), beta.ravel(), out.copy(), upper.ravel(), sgn
    em, target, lo_i, hi_i = np.exp(-0.5 * xi), log_target, lo.ravel(), hi.ravel()
    for _ in range(max_iter):
        if at.size == 0:
            break
        h = xi / si
        b = ui * ndtr(h + 0.5 * si) - em * ndtr(h - 0.5 * si)
        v = np.exp(-0.5 * h * h - 0.125 * si * si) / _SQRT_2PI
        # keep the bracket: b increases with s
        too_low = b < bi
        lo_i = np.where(too_low, si, lo_i)
        hi_i = np.where(too_low, hi_i, si)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # g = ln b - ln beta below s_c, ln(u - beta) - ln(u - b) above: g = sgn (ln denom - ln target)
            denom = np.where(sg > 0, b, ui - b)
            g = sg * (np.log(denom) - target)
            g1 = v / denom
            g2 = v * (xi * xi / si**3 - 0.25 * si) / denom - sg * g1 * g1
            newton = g / g1
            step = newton / (1.0 - 0.5 * newton * g2 / g1)
            step = np.where(np.isfinite(step), step, newton)
            s_new = si - step
        exact = b == bi
        converged = (np.abs(step) <= tol * si) | exact
        bad = ~converged & (~np.isfinite(s_new) | (s_new < lo_i) | (s_new > hi_i))
        s_new = np.where(bad, 0.5 * (lo_i + hi_i), s_new)
        s_new = np.where(exact, si, s_new)
        finished = converged | (hi_i - lo_i <= tol * si)
        if not finished.any():  # the first step rarely finishes anything: no copy of the state
            si = s_new
            continue
        out[at[finished]] = s_new[finished]
        going = ~finished
        at, si = at[going], s_new[going]
        xi, bi, ui, sg, em, target, lo_i, hi_i = (a[going] for a in (xi, bi, ui, sg, em, target, lo_i, hi_i))
    out[at] = si
    sf = out
    return sf.reshape(x.shape)


def implied_vol(price, spot, strike, t, rate, is_call, div=0.0) -> np.ndarray:
    """Black-Scholes-Merton implied volatility; NaN exactly where no volatility gives the price.

    That is: t <= 0, price below the discounted intrinsic value, or at or above the
    no-arbitrage upper bound (S e^{-qt} for a call, K e^{-rt} for a put). A price equal to
    intrinsic gives 0.
    """
    price, spot, strike, t, rate, is_call, div = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (price, spot, strike, t, rate, is_call, div))
    )
    is_call = is_call.astype(bool)
    out = np.full(price.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        df_r = np.exp(-rate * t)
        fwd = spot * np.exp((rate - div) * t)
        undisc = price / df_r
        intrinsic = np.where(is_call, np.maximum(fwd - strike, 0.0), np.maximum(strike - fwd, 0.0))
        bound = np.where(is_call, fwd, strike)
        # out-of-the-money call equivalent, normalised
        otm = undisc - intrinsic
        x = -np.abs(np.log(fwd / strike))
        beta = otm / np.sqrt(fwd * strike)
    valid = (t > 0) & np.isfinite(price) & (spot > 0) & (strike > 0) & (undisc >= intrinsic) & (undisc < bound)
    zero = valid & (otm <= 0)
    out[zero] = 0.0
    solve = valid & (otm > 0) & (beta < np.exp(0.5 * x))
    if solve.any():
        s = _solve_s(x[solve], beta[solve])
        out[solve] = s / np.sqrt(t[solve])
    return out


def greeks(spot, strike, t, rate, vol, is_call, div=0.0) -> dict[str, np.ndarray]:
    """delta, gamma, theta (per calendar day) and vega (per 1 vol point); NaN where vol or t is not positive."""
    spot, strike, t, rate, vol, is_call, div = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (spot, strike, t, rate, vol, is_call, div))
    )
    is_call = is_call.astype(bool)
    ok = (t > 0) & (vol > 0) & np.isfinite(vol)
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.sqrt(t)
        sd = vol * sq
        d1 = (np.log(spot / strike) + (rate - div + 0.5 * vol * vol) * t) / sd
        d2 = d1 - sd
        dq, dr = np.exp(-div * t), np.exp(-rate * t)
        pdf = np.exp(-0.5 * d1 * d1) / _SQRT_2PI
        delta = np.where(is_call, dq * ndtr(d1), dq * (ndtr(d1) - 1.0))
        gamma = dq * pdf / (spot * sd)
        vega = spot * dq * pdf * sq / 100.0
        common = -spot * dq * pdf * vol / (2.0 * sq)
        theta_call = common - rate * strike * dr * ndtr(d2) + div * spot * dq * ndtr(d1)
        theta_put = common + rate * strike * dr * ndtr(-d2) - div * spot * dq * ndtr(-d1)
        theta = np.where(is_call, theta_call, theta_put) / 365.0
    nan = np.nan
    return {k: np.where(ok, v, nan) for k, v in
            {"delta": delta, "gamma": gamma, "theta": theta, "vega": vega}.items()}
