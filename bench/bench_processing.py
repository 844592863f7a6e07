"""Processing: IV throughput against py_vollib, and process_snapshot for a full-universe minute and day.

Goals: implied_vol >= 50x py_vollib on one core with < 1e-9 accuracy; a full-universe minute
processed in < 20 ms.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from _common import INDICES, REPEATS, full_universe_provider, machine, minutes, one_core, peak_rss_mb, record

from optask.core.pricing import bs_price, greeks, implied_vol, year_fraction
from optask.pipeline import process_snapshot

RATE = 0.065


def realistic_grid(n: int) -> dict[str, np.ndarray]:
    """NIFTY and BANKNIFTY chains (ATM +/- 50, four expiries) over the day, tiled to n options."""
    provider = full_universe_provider()
    parts = []
    for ts in minutes()[::5]:
        for index in ("NIFTY", "BANKNIFTY"):
            t = provider.snapshot(index, ts).table
            parts.append(t.select(["ts", "expiry", "strike", "side", "spot", "bid", "ask", "ltp"]))
    table = pa.concat_tables(parts)
    reps = -(-n // table.num_rows)
    idx = np.tile(np.arange(table.num_rows), reps)[:n]
    col = {c: table[c].to_numpy() for c in ("strike", "spot", "bid", "ask")}
    ts = table["ts"].cast(pa.int64()).to_numpy().astype("datetime64[ns]")
    exp = table["expiry"].to_numpy().astype("datetime64[D]")
    t = np.maximum(year_fraction(ts, exp), 1e-6)
    mid = (col["bid"] + col["ask"]) / 2
    price = np.where(col["bid"] > 0, mid, table["ltp"].to_numpy())
    is_call = table["side"].to_numpy(zero_copy_only=False) == "CE"
    return {"price": price[idx], "spot": col["spot"][idx], "strike": col["strike"][idx], "t": t[idx],
            "is_call": is_call[idx]}


ROUNDS = 10  # per repeat: ours on a tenth of the grid, then py_vollib on 300 options, ten times over


def vollib_seconds(g: dict[str, np.ndarray], sample: np.ndarray) -> float:
    """py_vollib, one option at a time as it is used."""
    from py_vollib.black_scholes_merton.implied_volatility import implied_volatility as vollib_iv

    start = time.perf_counter()
    for i in sample:
        try:
            vollib_iv(g["price"][i], g["spot"][i], g["strike"][i], g["t"][i], RATE, 0.0, "c" if g["is_call"][i] else "p")
        except Exception:  # noqa: BLE001 - py_vollib raises below intrinsic; counted as done
            pass
    return time.perf_counter() - start


def bench_iv() -> None:
    """Ours on 1M options and py_vollib on 3,000 per repeat, on one core, alternating in ten rounds of a tenth
    each: a busy neighbour slows both sides of a repeat alike, so every repeat's ratio is fair and the goal is
    judged on each one."""
    n = 1_000_000
    g = realistic_grid(n)
    iv = implied_vol(g["price"], g["spot"], g["strike"], g["t"], RATE, g["is_call"])  # warm; checked below
    ok = np.flatnonzero(np.isfinite(iv) & (iv > 0))
    slices = np.array_split(np.arange(n), ROUNDS)
    parts = [tuple(g[k][s] for k in ("price", "spot", "strike", "t")) + (RATE, g["is_call"][s]) for s in slices]
    vollib_seconds(g, ok[:300])
    ours_runs, theirs_runs = [], []
    for r in range(REPEATS):
        sample = np.random.default_rng(r + 1).choice(ok, 300 * ROUNDS, replace=False).reshape(ROUNDS, 300)
        ours_s = theirs_s = 0.0
        for part, theirs in zip(parts, sample, strict=True):
            start = time.perf_counter()
            implied_vol(*part)
            ours_s += time.perf_counter() - start
            theirs_s += vollib_seconds(g, theirs)
        ours_runs.append(n / ours_s)
        theirs_runs.append(sample.size / theirs_s)
    ok = np.isfinite(iv) & (iv > 0)
    # accuracy on the same grid: reprice at the recovered vol and recover again
    p2 = bs_price(g["spot"][ok], g["strike"][ok], g["t"][ok], RATE, iv[ok], g["is_call"][ok])
    iv2 = implied_vol(p2, g["spot"][ok], g["strike"][ok], g["t"][ok], RATE, g["is_call"][ok])
    vega = greeks(g["spot"][ok], g["strike"][ok], g["t"][ok], RATE, iv[ok], g["is_call"][ok])["vega"] * 100
    sel = vega > 1e-6 * g["spot"][ok]
    err = np.abs(iv2 - iv[ok])[sel]
    ours, theirs = float(np.median(ours_runs)), float(np.median(theirs_runs))
    ratios = sorted(o / t for o, t in zip(ours_runs, theirs_runs, strict=True))
    print(f"implied_vol: median {ours:,.0f} IV/s on {n:,} NIFTY/BANKNIFTY options "
          f"({np.isnan(iv).mean():.2%} NaN: no volatility reproduces the quote)")
    print(f"py_vollib:   median {theirs:,.0f} IV/s on samples of 3,000 (in rounds between ours, same core)")
    print(f"ratio per repeat: {', '.join(f'{x:,.1f}x' for x in ratios)}; median {ratios[len(ratios) // 2]:,.1f}x "
          f"(goal >= 50x in every repeat)   max recovery error where vega > 1e-6 spot: {err.max():.2e} (goal < 1e-9)")
    record("implied_vol throughput, one core", "IV/s", ours_runs, goal=("ratio", ">=", 50.0), baseline=theirs_runs,
           baseline_name="py_vollib, per option, alternating on the same core", ratio="ours/baseline")
    record("implied_vol recovery error (max, vega > 1e-6 spot)", "vol", [float(err.max())], goal=("ours", "<", 1e-9),
           note="deterministic: the same grid gives the same error")


def bench_process() -> None:
    provider = full_universe_provider()
    mins = minutes()
    ts = mins[120]
    table = pa.concat_tables([provider.snapshot(i, ts).table for i in INDICES])
    process_snapshot(table, RATE, 0.0)
    runs = []
    for _ in range(30):
        start = time.perf_counter()
        process_snapshot(table, RATE, 0.0)
        runs.append(time.perf_counter() - start)
    print(f"process_snapshot, full-universe minute ({table.num_rows:,} legs, {len(INDICES)} indices, ATM +/- 50): "
          f"median {1000 * np.median(runs):.1f} ms (min {1000 * min(runs):.1f}, max {1000 * max(runs):.1f}, "
          f"n={len(runs)}) (goal < 20 ms)")
    record("process_snapshot, a full-universe minute, one core", "ms", [1000 * r for r in runs],
           goal=("ours", "<", 20.0))
    rss0 = peak_rss_mb()
    total = 0.0
    legs = 0
    for ts in mins:
        for index in INDICES:
            snap = provider.snapshot(index, ts)
            start = time.perf_counter()
            out = process_snapshot(snap, RATE, 0.0)
            total += time.perf_counter() - start
            legs += out.legs.num_rows
    print(f"process_snapshot, whole simulated day per index-minute ({len(mins)} x {len(INDICES)}, {legs:,} legs): "
          f"{total:.1f} s processing; peak RSS {peak_rss_mb():.0f} MB (was {rss0:.0f} MB before the day)")


if __name__ == "__main__":
    import subprocess
    import sys

    one_core()
    if sys.argv[1:] == ["--process-only"]:
        bench_process()
    else:
        print(f"machine: {machine()} (pinned to one core)")
        bench_iv()
        # a fresh process, so the day's peak memory is not the 1M-option grid's
        subprocess.run([sys.executable, __file__, "--process-only"], check=True)
