"""The soak: a whole 375-minute session of the full universe through `optask up` at an accelerated clock,
with a schedule of faults from the chaos suite, judged by the product itself (`optask.chaos.Drill`).

It reports what an operator would want to know before trusting a release: the faults injected, the
alerts raised and resolved, the minutes that were healed without anyone, the end-of-day score per
index, duplicated keys, the wall time, and the peak memory of every process of the stack (VmHWM,
the kernel's own high-water mark, read while each process lives).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from optask.testkit.chaos import Drill, Verdict


@dataclass
class Fault:
    at: int  # session minute
    name: str
    inject: object  # callable(Drill)
    done_at: float | None = None


def default_schedule(minutes: int) -> list[Fault]:
    """The chaos suite's faults, spread over the session (at proportional minutes for a shorter soak)."""

    def stall_beat(d: Drill) -> None:  # a tick 50 s late
        beat = d.child(" beat --loglevel")
        beat.send_signal(signal.SIGSTOP)
        time.sleep(50 / d.speed)
        beat.send_signal(signal.SIGCONT)

    def restart_up(d: Drill) -> None:
        d.kill_up()
        time.sleep(2)
        d.start()

    plan = [(0.16, "Redis SIGKILL (restarted from its AOF)", lambda d: d.kill("redis-server")),
            (0.32, "worker SIGKILL mid-write", lambda d: d.kill("--queues=optask,")),
            (0.48, "beat tick 50 s late", stall_beat),
            (0.60, "second beat started", lambda d: d.start_beat()),
            (0.68, "clock steps back a minute", lambda d: d.step_clock_back(1)),
            (0.80, "optask up SIGKILL, restarted", restart_up)]
    return [Fault(max(2, int(minutes * f)), name, fn) for f, name, fn in plan]


def role(cmdline: list[str]) -> str:
    """A process's part in the stack, from its command line."""
    text = " ".join(cmdline)
    if "redis-server" in text:
        return "redis"
    for verb in ("health", "metrics", "flower", "beat", "serve", "ticker"):
        if f" {verb}" in text and ("optask.cli" in text or "celery" in text):
            return {"health": "monitor", "serve": "api"}.get(verb, verb)
    if " worker" in text:
        name = "maintenance worker" if "queues=maintenance" in text else "worker"
        return name
    if "optask.cli up" in text or text.endswith(" up"):
        return "optask up"
    return Path(cmdline[0]).name if cmdline else "?"


@dataclass
class MemoryWatch:
    """Peak RSS per role: the largest VmHWM seen of any process in that role (pool children apart)."""

    drill: Drill
    every_s: float = 1.0
    peaks: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)  # the largest VmRSS seen since it was last emptied
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        for p in self.drill.family():
            try:
                name = role(p.cmdline())
                parent = p.parent()
                if name in ("worker", "maintenance worker") and parent and " worker" in " ".join(parent.cmdline()):
                    name += " (pool child)"
                with open(f"/proc/{p.pid}/status") as fh:
                    status = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in fh)
                              if k in ("VmHWM", "VmRSS")}
            except (psutil.Error, OSError, ValueError):
                continue
            self.peaks[name] = max(self.peaks.get(name, 0.0), status.get("VmHWM", 0.0))
            self.current[name] = max(self.current.get(name, 0.0), status.get("VmRSS", 0.0))

    def __enter__(self) -> MemoryWatch:
        def loop() -> None:
            while not self._stop.wait(self.every_s):
                self.sample()

        threading.Thread(target=loop, name="soak-memory", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


@dataclass
class SoakResult:
    verdict: Verdict
    faults: list[Fault]
    wall_s: float
    peaks_mb: dict[str, float]
    minutes: int
    indices: tuple[str, ...]
    strikes: int
    speed: float

    def rows(self) -> list[tuple[str, str]]:
        v = self.verdict
        fired = sorted(set(v.alerts_fired))
        resolved = sorted(set(v.alerts_resolved))
        return [
            ("session", f"{self.minutes} minutes x {len(self.indices)} indices, ATM +/- {self.strikes}, "
                        f"{self.speed:g}x real time"),
            ("faults injected", "; ".join(f"min {f.at}: {f.name}" for f in self.faults if f.done_at)),
            ("alerts raised", f"{len(fired)}: {', '.join(fired) or '-'}"),
            ("alerts resolved", f"{len(resolved)}: {', '.join(resolved) or '-'}"),
            ("minutes self-healed", str(v.healed)),
            ("final score per index", ", ".join(f"{i} {s:g}" for i, s in v.scores.items()) + f" ({v.status})"),
            ("minutes stored", ", ".join(f"{i} {n}/{self.minutes}" for i, n in v.stored.items())),
            ("duplicate keys", str(v.duplicate_keys)),
            ("unreadable files", str(v.unreadable_files)),
            ("wall time", f"{self.wall_s / 60:.1f} min"),
            ("peak RSS per process", ", ".join(f"{k} {mb:.0f} MB" for k, mb in sorted(self.peaks_mb.items()))),
        ]

    def markdown(self, machine: str, day: str) -> str:
        lines = [f"Soak of {day} on {machine}:", "", "| measure | result |", "|---|---|"]
        lines += [f"| {k} | {re.sub(r'[|]', '/', val)} |" for k, val in self.rows()]
        return "\n".join(lines)


def run_soak(root: Path, minutes: int = 375, speed: float = 30.0, strikes: int = 50,
             indices: tuple[str, ...] | None = None, schedule: list[Fault] | None = None,
             echo=print) -> SoakResult:
    from optask.core.schema import INDICES

    indices = tuple(indices or INDICES)
    drill = Drill(root, minutes=minutes, speed=speed, indices=indices, strikes=strikes, open_at="09:15")
    faults = schedule if schedule is not None else default_schedule(minutes)
    started = time.monotonic()
    try:
        with MemoryWatch(drill) as watch:
            drill.start()
            echo(f"optask up running on {drill.data}; {minutes} session minutes at {speed:g}x")
            for fault in faults:
                drill.wait_position(fault.at, timeout=max(300.0, 3 * minutes * 60 / speed))
                echo(f"session minute {fault.at}: {fault.name}")
                fault.inject(drill)
                fault.done_at = time.monotonic()
            drill.wait_eod(timeout=minutes * 60 / speed + 900)
            echo("end of day closed; waiting for the alerts to resolve")
            fired = set(drill.verdict().alerts_fired)
            try:
                drill.wait(lambda: fired <= set(drill.verdict().alerts_resolved), 180, "every alert resolved", every=2)
            except AssertionError as exc:
                echo(str(exc).splitlines()[0])
            verdict = drill.verdict()
            watch.sample()
            peaks = dict(watch.peaks)
    finally:
        drill.stop()
    return SoakResult(verdict, faults, time.monotonic() - started, peaks, minutes, indices, strikes, speed)
