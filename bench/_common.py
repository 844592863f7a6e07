"""Shared bits of the benchmark scripts: a full-universe day from the simulated market, and memory."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from optask.core.calendar import MarketCalendar
from optask.core.schema import INDICES

DAY = dt.date(2026, 11, 23)
FULL_ATM = 50
#: Repeats of every measure (median and min-max are reported; `optask bench --repeats` sets it).
REPEATS = max(3, int(os.environ.get("BENCH_REPEATS", "3")))


def record(measure: str, unit: str, ours: list[float], goal: tuple[str, str, float] | None = None,
           baseline: list[float] | None = None, baseline_name: str | None = None, ratio: str = "baseline/ours",
           note: str = "") -> None:
    """One measure for `optask bench`: appended as a JSON line to $OPTASK_BENCH_RECORD when it is set.

    `goal` is (on, op, value): on "ours" (the figure) or "ratio"; op one of < <= > >=.
    """
    path = os.environ.get("OPTASK_BENCH_RECORD")
    if not path:
        return
    doc = {"measure": measure, "unit": unit, "ours": [float(x) for x in ours],
           "goal": dict(zip(("on", "op", "value"), goal, strict=True)) if goal else None,
           "baseline": [float(x) for x in baseline] if baseline else None, "baseline_name": baseline_name,
           "ratio": ratio, "script": os.path.basename(__import__("sys").argv[0]), "note": note}
    with open(path, "a") as fh:
        fh.write(json.dumps(doc) + "\n")


def minutes(n: int | None = None) -> list[dt.datetime]:
    mins = [m.to_pydatetime() for m in MarketCalendar().session_minutes(DAY)]
    return mins[:n] if n else mins


def full_universe_provider(strikes: int = FULL_ATM):
    from optask.providers.simulated import SimulatedProvider

    return SimulatedProvider(strikes_around_atm=strikes)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, unlike ru_maxrss, is not inherited across exec."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spread(values: list[float], unit: str) -> str:
    """Median (min-max) of a measure's repeats, as every script prints it."""
    return f"{statistics.median(values):.1f} {unit} ({min(values):.1f}-{max(values):.1f})"


@contextlib.contextmanager
def serving(env: dict, cwd: Path):
    """`optask serve` on a free loopback port in a process of its own, answering /healthz: (process, url)."""
    import httpx

    from optask.infra.procutil import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = subprocess.Popen([sys.executable, "-m", "optask.cli", "serve", "--port", str(port)], env=env, cwd=cwd,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield api, url
    finally:
        api.terminate()
        api.wait(20)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def one_core() -> None:
    """Pin this process to one core, so figures compare with single-threaded baselines."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


__all__ = ["DAY", "FULL_ATM", "INDICES", "REPEATS", "full_universe_provider", "machine", "minutes", "one_core",
           "peak_rss_mb", "record", "serving", "spread"]
