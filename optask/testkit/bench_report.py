"""One benchmark report: every bench script of the repository in one run, one table.

Each script (`bench/bench_*.py`) measures its figures several times and records each measure as one JSON
line (`bench/_common.record`): optask's runs, the baseline's runs measured in the same process (py_vollib,
the seed's naive per-leg CSV writer, a full re-read instead of the cursor, per-minute instead of batched
replay, one process instead of the maintenance workers), how the ratio is formed and the goal. Here the
records become the table: medians with min-max, the ratio's own spread over the paired runs, and a
verdict that says "straddles" when the runs fall on both sides of the goal, because this machine is
shared and noisy and a best run is not a figure.
"""

from __future__ import annotations

import json
import operator
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = ("bench_providers.py", "bench_processing.py", "bench_storage.py", "bench_pipeline.py", "bench_verify.py",
           "bench_kite.py", "bench_ticker.py", "bench_api.py", "bench_stream.py", "bench_abuse.py")


@dataclass
class Measure:
    measure: str
    unit: str
    ours: list[float]
    goal: dict | None = None  # {"on": "ours" | "ratio", "op": "<=", "value": 4.0}
    baseline: list[float] | None = None
    baseline_name: str | None = None
    ratio: str = "baseline/ours"  # or "ours/baseline": how the ratio reads naturally for this measure
    script: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)

    def ratios(self) -> list[float]:
        """The ratio per repeat, pairing the i-th run of each side (measured side by side)."""
        if not self.baseline:
            return []
        pairs = list(zip(self.ours, self.baseline, strict=False))
        if self.ratio == "ours/baseline":
            return [o / b for o, b in pairs if b]
        return [b / o for o, b in pairs if o]

    def verdict(self) -> str:
        """meets / misses / straddles (some repeats on each side of the goal) / no goal."""
        if not self.goal:
            return "no goal"
        values = self.ratios() if self.goal["on"] == "ratio" else self.ours
        if not values:
            return "not measured"
        ok = [OPS[self.goal["op"]](v, self.goal["value"]) for v in values]
        return "meets" if all(ok) else "misses" if not any(ok) else "straddles"

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        out.update(ours_median=spread(self.ours)[0], ratio_runs=self.ratios(), verdict=self.verdict())
        if self.baseline:
            out["baseline_median"] = spread(self.baseline)[0]
        return out


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def fmt(values: list[float] | None, unit: str = "") -> str:
    if not values:
        return "-"
    med, lo, hi = spread(values)
    text = f"{_num(med)}" if len(values) == 1 else f"{_num(med)} ({_num(lo)}-{_num(hi)}, n={len(values)})"
    return f"{text} {unit}".strip()


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.01:
        return f"{v:.2f}"
    return f"{v:.1e}"


def goal_text(m: Measure) -> str:
    if not m.goal:
        return "-"
    what = "ratio" if m.goal["on"] == "ratio" else "figure"
    unit = "x" if m.goal["on"] == "ratio" else f" {m.unit}"
    return f"{what} {m.goal['op']} {_num(m.goal['value'])}{unit}"


def load(path: Path) -> list[Measure]:
    if not path.exists():
        return []
    return [Measure(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def run_all(scripts: list[str] | None = None, repeats: int = 3, echo=print,
            bench_dir: Path = BENCH_DIR) -> tuple[list[Measure], list[str]]:
    """Run each script in its own process (each pins and measures itself); returns the measures and the
    scripts that failed (their output is echoed)."""
    fd, name = tempfile.mkstemp(prefix="optask-bench-", suffix=".jsonl")
    os.close(fd)
    record = Path(name)
    failed = []
    env = {**os.environ, "OPTASK_BENCH_RECORD": str(record), "BENCH_REPEATS": str(repeats)}
    for var in ("REDIS_URL", "BASE_DATA_DIR", "INFLUXDB_URL", "CSV_DATA_ROOT", "JSON_SNAPSHOTS_ROOT"):
        env.pop(var, None)  # the benches build their own data and servers, never the operator's
    try:
        for script in scripts or SCRIPTS:
            echo(f"--- {script}")
            proc = subprocess.run([sys.executable, str(bench_dir / script)], env=env, cwd=bench_dir,
                                  capture_output=True, text=True)
            for line in proc.stdout.splitlines():
                echo(f"    {line}")
            if proc.returncode != 0:
                failed.append(script)
                echo(proc.stderr[-3000:])
        return load(record), failed
    finally:
        record.unlink(missing_ok=True)
