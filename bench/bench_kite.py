"""Kite REST: quote calls and sampling span for one minute of the full universe (six indices, ATM +/- 50)
at Kite's 1 quote call per second, through the official client against `optask/kite_testserver.py`.

Baseline: each index on its own, its spot one call before its options, as optask did before.
optask: the whole minute in one fetch (KITE_FETCH=minute), ceil(instruments / 500) calls.
Goals: 6 calls; sampling span (first call sent to last answered, for the whole minute) <= 6 s.
The calls and span of a minute are read from the test server's own request log.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).parent))
from _common import DAY, FULL_ATM, INDICES, REPEATS, machine, record  # noqa: E402

from optask.core.calendar import MarketCalendar  # noqa: E402
from optask.infra.redis_server import RedisServer  # noqa: E402
from optask.providers.kite import KiteProvider  # noqa: E402
from optask.testkit.baselines import snapshot_spot_first  # noqa: E402
from optask.testkit.kite_server import KiteTestServer  # noqa: E402

RATE = 1.0


def one_minute(server: KiteTestServer, provider: KiteProvider, mode: str, ts) -> dict:
    server.minute = ts
    server.request_log.clear()
    if mode == "minute":
        snaps = provider.fetch_minute(list(INDICES), ts)
    else:
        snaps = {i: snapshot_spot_first(provider, i, ts) for i in INDICES}
    quotes = [t for t, path, _, _ in server.request_log if path == "/quote"]
    legs = sum(s.table.num_rows for s in snaps.values())
    return {"calls": len(quotes), "span_s": max(quotes) - min(quotes) + 1e-3, "legs": legs,
            "worst_index_span_ms": max(s.sample_span_ms for s in snaps.values()),
            "worst_spot_offset_ms": max(abs(s.spot_offset_ms or 0.0) for s in snaps.values())}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="optask-bench-kite-"))
    redis_server = RedisServer(work / "redis").start()
    minutes = [m.to_pydatetime() for m in MarketCalendar().session_minutes(DAY)]
    server = KiteTestServer(minutes[0], strikes_around_atm=FULL_ATM + 10).start()
    print(f"machine: {machine()}; Kite test server, {RATE:g} quote call/s, full universe ATM +/- {FULL_ATM}")
    runs: dict[str, list[dict]] = {"index": [], "minute": []}
    try:
        for r in range(REPEATS):
            for mode in ("index", "minute"):
                client = redis.Redis.from_url(redis_server.url)
                client.flushdb()  # a fresh day for the provider: its spot range is learnt anew
                provider = KiteProvider("bench-key", "bench-token", server.url, work / f"kite-{mode}-{r}", client,
                                        strikes_around_atm=FULL_ATM, quote_rate_per_s=RATE)
                one_minute(server, provider, mode, minutes[100 + 2 * r])  # warm: the dump, the day's spot range
                got = one_minute(server, provider, mode, minutes[101 + 2 * r])
                runs[mode].append(got)
                print(f"  {mode:>6}: {got['calls']} quote calls, {got['legs']:,} legs, minute span "
                      f"{got['span_s']:.2f} s, worst index span {got['worst_index_span_ms']:,.0f} ms, worst spot "
                      f"offset {got['worst_spot_offset_ms']:,.0f} ms")
    finally:
        server.stop()
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    for key in ("calls", "span_s"):
        ours, base = [x[key] for x in runs["minute"]], [x[key] for x in runs["index"]]
        print(f"{key}: one fetch median {statistics.median(ours):g} vs per index {statistics.median(base):g}")
    record("Kite REST: quote calls for one full-universe minute", "calls", [x["calls"] for x in runs["minute"]],
           goal=("ours", "<=", 6), baseline=[x["calls"] for x in runs["index"]],
           baseline_name="spot first, each index alone", ratio="ours/baseline")
    record("Kite REST: sampling span of one full-universe minute at 1 call/s", "s",
           [x["span_s"] for x in runs["minute"]], goal=("ours", "<=", 6.0), baseline=[x["span_s"] for x in runs["index"]],
           baseline_name="spot first, each index alone", ratio="ours/baseline")
    record("Kite REST: worst spot offset from its options in a minute", "ms",
           [x["worst_spot_offset_ms"] for x in runs["minute"]], baseline=[x["worst_spot_offset_ms"] for x in runs["index"]],
           baseline_name="spot first, each index alone", ratio="ours/baseline")


if __name__ == "__main__":
    main()
