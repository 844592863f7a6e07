"""Storage: CSV writer against the seed's naive writer, incremental reads, Parquet throughput and memory.

Goals: CSV <= 0.4x the write syscalls of the naive writer and >= 4x faster; read_new at minute 375
costs <= 1.5x minute 1 (a full re-read costs ~375x); Parquet peak memory < 300 MB for a full day.
Write syscalls are counted with `strace -f -c` on a child process running each writer.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).parent))
from _common import DAY, INDICES, REPEATS, full_universe_provider, machine, minutes, peak_rss_mb, record  # noqa: E402

COMPARE_INDICES = ("NIFTY", "BANKNIFTY")
COMPARE_MINUTES = 60


def legs_for(index_list, mins):
    provider = full_universe_provider()
    return [(i, ts, provider.snapshot(i, ts).table) for ts in mins for i in index_list]


def naive_write(root: Path, data) -> None:
    """The seed's pattern: open, append, close once per leg, and re-read the whole file each minute."""
    for index, _ts, table in data:
        path = root / index / DAY.isoformat() / "legs.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path) as fh:
                seen = fh.read()  # duplicate check by re-reading the day
            _ = len(seen)
        else:
            with open(path, "w") as fh:
                fh.write(",".join(table.column_names) + "\n")
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
        for line in buf.getvalue().decode().splitlines():
            with open(path, "a") as fh:
                fh.write(line + "\n")


def optask_write(root: Path, data, redis_url: str) -> None:
    import redis

    from optask.storage.csv import CsvStore

    store = CsvStore(root, redis.Redis.from_url(redis_url))
    for index, ts, table in data:
        store.append_minute("legs", index, ts, table)


def child(variant: str, root: str, redis_url: str) -> None:
    data = legs_for(COMPARE_INDICES, minutes(COMPARE_MINUTES))
    start = time.perf_counter()
    if variant == "naive":
        naive_write(Path(root), data)
    else:
        optask_write(Path(root), data, redis_url)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def run_child(variant: str, redis_url: str) -> tuple[float, int | None]:
    root = tempfile.mkdtemp(prefix=f"bench-{variant}-")
    cmd = [sys.executable, __file__, "--child", variant, root, redis_url]
    counts = None
    if shutil.which("strace"):
        trace = Path(root) / "strace.txt"
        proc = subprocess.run(["strace", "-f", "-c", "-e", "trace=write,pwrite64,writev", "-o", str(trace), *cmd],
                              capture_output=True, text=True, check=True)
        m = re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(write|pwrite64|writev)\s*$",
                       trace.read_text(), re.M)
        counts = sum(int(c) for c, _ in m)
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    shutil.rmtree(root, ignore_errors=True)
    return seconds, counts


def bench_csv(redis_url: str) -> None:
    naive, ours = [], []
    for _ in range(REPEATS):  # alternate, so both sides see the same machine weather
        naive.append(run_child("naive", redis_url))
        ours.append(run_child("optask", redis_url))
    n_legs = sum(t.num_rows for _, _, t in legs_for(COMPARE_INDICES, minutes(COMPARE_MINUTES)[:1])) * COMPARE_MINUTES
    print(f"CSV, {COMPARE_MINUTES} minutes x {'+'.join(COMPARE_INDICES)} (~{n_legs:,} legs), minute by minute, "
          f"{REPEATS} runs each:")
    if naive[0][1] is not None:
        print(f"  write syscalls: optask {ours[0][1]:,} vs naive {naive[0][1]:,} = {ours[0][1] / naive[0][1]:.3f}x "
              "(goal <= 0.4x)")
        record("CSV writer: write syscalls for 60 minutes x 2 indices", "calls", [o[1] for o in ours],
               goal=("ratio", "<=", 0.4), baseline=[n[1] for n in naive], baseline_name="seed's naive per-leg writer",
               ratio="ours/baseline", note="counted by strace -f -c")
    else:
        print("  write syscalls: strace not installed (apt-get install strace); not counted")
    ratios = sorted(n[0] / o[0] for n, o in zip(naive, ours, strict=True))
    print(f"  time (incl. fsync per minute): optask median {sorted(o[0] for o in ours)[REPEATS // 2]:.2f} s vs naive "
          f"{sorted(n[0] for n in naive)[REPEATS // 2]:.2f} s = {ratios[REPEATS // 2]:.1f}x faster "
          f"(min {ratios[0]:.1f}, max {ratios[-1]:.1f}) (goal >= 4x)")
    record("CSV writer: 60 minutes x 2 indices, incl. fsync per minute", "s", [o[0] for o in ours],
           goal=("ratio", ">=", 4.0), baseline=[n[0] for n in naive], baseline_name="seed's naive per-leg writer")


def bench_full_day_csv_and_reads(redis_url: str, root: Path) -> None:
    """Write the day minute by minute; REPEATS consumers each read the first minute and, at the end, the last
    minute with read_new; the full re-read of the day is the baseline."""
    import redis

    from optask.storage.csv import CsvStore

    store = CsvStore(root / "csv", redis.Redis.from_url(redis_url))
    provider = full_universe_provider()
    mins = minutes()
    consumers = [f"bench-{r}" for r in range(REPEATS)]
    write_s = 0.0
    first, last, full = [], [], []
    rows = 0
    for n, ts in enumerate(mins, 1):
        for index in INDICES:
            table = provider.snapshot(index, ts).table
            t0 = time.perf_counter()
            rows += store.append_minute("legs", index, ts, table)
            write_s += time.perf_counter() - t0
        if n in (1, len(mins)):
            for consumer in consumers:
                t0 = time.perf_counter()
                got = store.read_new(consumer, "legs", "NIFTY", DAY)
                (first if n == 1 else last).append(time.perf_counter() - t0)
                assert got.num_rows > 0
        elif n == len(mins) - 1:
            for consumer in consumers:  # catch up, so the last read is the newest minute only
                store.read_new(consumer, "legs", "NIFTY", DAY)
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        whole = store.read_day("legs", "NIFTY", DAY)
        full.append(time.perf_counter() - t0)
    med = sorted(last)[REPEATS // 2]
    print(f"CSV, full-universe day ({len(INDICES)} indices x {len(mins)} minutes, {rows:,} legs): "
          f"{write_s:.1f} s writing, {rows / write_s:,.0f} rows/s")
    print(f"  read_new (NIFTY legs), median of {REPEATS}: minute 1 {sorted(first)[REPEATS // 2] * 1000:.2f} ms, "
          f"minute 375 {med * 1000:.2f} ms (goal <= 1.5x minute 1); full re-read at 375 ({whole.num_rows:,} rows) "
          f"{sorted(full)[REPEATS // 2] * 1000:.1f} ms = {sorted(full)[REPEATS // 2] / med:.0f}x the cursor")
    record("CSV read_new of the newest minute at minute 375 vs minute 1", "ms", [x * 1000 for x in last],
           goal=("ratio", "<=", 1.5), baseline=[x * 1000 for x in first], baseline_name="read_new at minute 1",
           ratio="ours/baseline")
    record("CSV newest minute at 375: cursor vs full re-read", "ms", [x * 1000 for x in last],
           baseline=[x * 1000 for x in full], baseline_name="full re-read of the day")


def bench_parquet(root: Path) -> None:
    from optask.storage.parquet import ParquetStore

    store = ParquetStore(root / "parquet")
    provider = full_universe_provider()
    rss0 = peak_rss_mb()
    write_s = 0.0
    rows = 0
    for ts in minutes():
        for index in INDICES:
            table = provider.snapshot(index, ts).table
            t0 = time.perf_counter()
            store.write_minute("legs", index, ts, table)
            write_s += time.perf_counter() - t0
            rows += table.num_rows
    rss_write = peak_rss_mb()
    t0 = time.perf_counter()
    read_rows = sum(store.read_table("legs", i, DAY).num_rows for i in INDICES)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in INDICES:
        store.compact("legs", i, DAY)
    compact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    read2 = sum(store.read_table("legs", i, DAY).num_rows for i in INDICES)
    read2_s = time.perf_counter() - t0
    assert read_rows == read2 == rows
    print(f"Parquet, full-universe day ({rows:,} legs in {len(INDICES) * len(minutes())} minute files): "
          f"write {rows / write_s:,.0f} rows/s; read {read_rows / read_s:,.0f} rows/s; "
          f"compact {compact_s:.1f} s; read compacted {read2 / read2_s:,.0f} rows/s")
    print(f"  peak RSS writing the day {rss_write:.0f} MB (goal < 300 MB; {rss0:.0f} MB before it); "
          f"peak after reading and compacting {peak_rss_mb():.0f} MB")
    print(json.dumps({"rss_write_mb": rss_write}))


def main() -> None:
    from optask.infra.redis_server import RedisServer

    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="optask-bench-"))
    server = RedisServer(work / "redis").start()
    try:
        bench_csv(server.url)
        bench_full_day_csv_and_reads(server.url, work)
        # a fresh process each repeat, so its peak memory is the Parquet day's alone
        rss = []
        for _ in range(REPEATS):
            out = subprocess.run([sys.executable, __file__, "--parquet-only"], check=True, capture_output=True,
                                 text=True).stdout.splitlines()
            print("\n".join(out[:-1]))
            rss.append(json.loads(out[-1])["rss_write_mb"])
        record("Parquet: peak RSS writing a full-universe day", "MB", rss, goal=("ours", "<", 300.0))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--parquet-only":
        d = Path(tempfile.mkdtemp(prefix="optask-bench-pq-"))
        bench_parquet(d)
        shutil.rmtree(d, ignore_errors=True)
    else:
        main()
