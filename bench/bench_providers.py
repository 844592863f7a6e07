"""Simulated market: a full trading day (375 minutes) of the full universe on one core. Goal: < 4 s."""

from __future__ import annotations

import time

from _common import INDICES, REPEATS, full_universe_provider, machine, minutes, one_core, record


def one_day() -> tuple[float, int, int]:
    provider = full_universe_provider()  # cold: the day's paths and expiries are built inside the timing
    legs = raw_bytes = 0
    start = time.perf_counter()
    for ts in minutes():
        for index in INDICES:
            snap = provider.snapshot(index, ts)
            legs += snap.table.num_rows
            raw_bytes += len(snap.raw)
    return time.perf_counter() - start, legs, raw_bytes


def main() -> None:
    one_core()
    runs = [one_day() for _ in range(REPEATS)]
    took = sorted(r[0] for r in runs)
    _, legs, raw_bytes = runs[0]
    mins = minutes()
    print(f"machine: {machine()} (pinned to one core)")
    print(f"full universe: {len(INDICES)} indices, 4 expiry kinds, ATM +/- 50, {len(mins)} minutes")
    print(f"legs: {legs:,} ({legs / len(mins):,.0f} per minute), raw payload {raw_bytes / 1e6:,.1f} MB")
    median = took[len(took) // 2]
    print(f"seconds per day: median {median:.2f} s (min {took[0]:.2f}, max {took[-1]:.2f}, n={len(took)}) "
          f"(goal < 4 s)   legs/s: {legs / median:,.0f}")
    record("simulated venue: a full-universe day, one core", "s", [r[0] for r in runs], goal=("ours", "<", 4.0))


if __name__ == "__main__":
    main()
