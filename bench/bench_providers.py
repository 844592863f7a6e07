"""Simulated market: a full trading day (375 minutes) of the full universe on one core. Goal: < 5 s."""

from __future__ import annotations

import time

from _common import INDICES, full_universe_provider, machine, minutes, one_core


def main() -> None:
    one_core()
    provider = full_universe_provider()  # cold: the day's paths and expiries are built inside the timing
    mins = minutes()
    legs = raw_bytes = 0
    start = time.perf_counter()
    for ts in mins:
        for index in INDICES:
            snap = provider.snapshot(index, ts)
            legs += snap.table.num_rows
            raw_bytes += len(snap.raw)
    took = time.perf_counter() - start
    print(f"machine: {machine()} (pinned to one core)")
    print(f"full universe: {len(INDICES)} indices, 4 expiry kinds, ATM +/- 50, {len(mins)} minutes")
    print(f"legs: {legs:,} ({legs / len(mins):,.0f} per minute), raw payload {raw_bytes / 1e6:,.1f} MB")
    print(f"seconds per day: {took:.2f} s (goal < 5 s)   legs/s: {legs / took:,.0f}")


if __name__ == "__main__":
    main()
