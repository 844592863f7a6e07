"""Drills: a session through the real stack at an accelerated clock, faults injected, judged only by
the product itself (end-of-day verification, its own alerts), never repaired by the drill.

A `Drill` owns a data root with a short special session (a weekend day, from the overrides file),
starts `optask up` on it as an operator would (or a multi-node stack), plays the session at
`speed` x real time, and offers the faults as methods: kill Redis, the worker or `up` itself, a
venue outage or an expired token (Kite test server), a full disk, InfluxDB down, memory pressure,
beats that double, stall or step back, calendar changes, a node lost. `verdict()` reads what the
product says afterwards. The chaos suite (`tests/chaos/`) and `optask soak` are built on it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from optask.infra.procutil import free_port
from optask.infra.redis_server import recorded_redis_url

#: A Sunday: the drills' sessions come from the overrides file, so they never meet a real one.
DRILL_DAY = dt.date(2026, 11, 8)


class DrillError(AssertionError):
    """The drill's stack did not do what was awaited in time; the message says what."""


@dataclass
class Verdict:
    score: float
    status: str
    scores: dict[str, float]
    duplicate_keys: int
    unreadable_files: int
    findings: dict[str, int]
    alerts_fired: list[str]
    alerts_resolved: list[str]
    stored: dict[str, int]
    expected: int
    healed: int  # minutes rebuilt by repair or end of day

    def summary(self) -> str:
        return (f"score {self.score} {self.status}; duplicates {self.duplicate_keys}; unreadable {self.unreadable_files}; "
                f"alerts fired {sorted(set(self.alerts_fired))}, resolved {sorted(set(self.alerts_resolved))}; "
                f"findings {self.findings}")


@dataclass
class Drill:
    root: Path
    minutes: int = 20
    speed: float = 30.0
    indices: tuple[str, ...] = ("NIFTY", "SENSEX")
    strikes: int = 3
    provider: str = "simulated"
    day: dt.date = DRILL_DAY
    days: int = 1  # calendar days the clock plays from `day` (write_calendar says which are sessions)
    open_at: str = "10:00"
    env: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None  # a Redis outside the data root (else `up` runs the bundled one inside it)
    kite: object | None = None
    ticker: object | None = None  # a KiteTickerTestServer: the stack streams (KITE_FETCH=ticker)
    up: subprocess.Popen | None = None
    extra: list[subprocess.Popen] = field(default_factory=list)
    _out: object | None = None

    # --- set-up ----------------------------------------------------------------------------------

    @property
    def data(self) -> Path:
        return self.root / "data"

    def close_at(self) -> str:
        t = dt.datetime.combine(self.day, dt.time.fromisoformat(self.open_at)) + dt.timedelta(minutes=self.minutes)
        return t.strftime("%H:%M")

    def write_calendar(self, sessions: list[dict] | None = None, holidays: list[str] | None = None) -> None:
        """The overrides file every process reads (each reads it anew, so a change applies at once)."""
        self.data.mkdir(parents=True, exist_ok=True)
        doc = {"sessions": sessions if sessions is not None else
               [{"date": self.day.isoformat(), "open": self.open_at, "close": self.close_at()}],
               "holidays": holidays or []}
        tmp = self.data / ".calendar_overrides.json.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.data / "calendar_overrides.json")

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, "BASE_DATA_DIR": str(self.data), "OPTASK_INDICES": ",".join(self.indices),
               "OPTASK_STRIKES_AROUND_ATM": str(self.strikes), "OPTASK_PROVIDER": self.provider,
               "OPTASK_SIMULATED_SESSION_DAY": self.day.isoformat(), "OPTASK_SIMULATED_SESSION_SPEED": f"{self.speed:g}",
               "OPTASK_SIMULATED_SESSION_DAYS": str(self.days),
               "PROCESSING_MAX_WORKERS": "2", "HEALTH_CHECK_INTERVAL": "5", "ALERT_FOR_S": "4",
               "CPU_WARN_PCT": "100", "CPU_CRIT_PCT": "100", "MEMORY_WARN_PCT": "100", "MEMORY_CRIT_PCT": "100",
               "DISK_WARN_FREE_GB": "0", "DISK_CRIT_FREE_GB": "0", "RESTART_WINDOW_S": "600",
               "MAX_RESTART_ATTEMPTS": "5"}
        for var in ("REDIS_URL", "REDIS_HOST", "INFLUXDB_URL", "CSV_DATA_ROOT", "JSON_SNAPSHOTS_ROOT"):
            env.pop(var, None)
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        if self.kite is not None:
            env.update(KITE_ROOT_URL=self.kite.url, KITE_API_KEY="drill-key", KITE_QUOTE_RATE_PER_S="50",
                       KITE_HISTORICAL_RATE_PER_S="200", KITE_TIMEOUT_S="2")
            env.setdefault("KITE_ACCESS_TOKEN", "drill-token-1")
        if self.ticker is not None:
            env.update(KITE_FETCH="ticker", KITE_TICKER_URL=self.ticker.url, KITE_TICKER_STALE_S="2",
                       KITE_TICKER_WAIT_S="1.5", KITE_TICKER_CUT_DELAY_MS="100")
        env.update(self.env)
        return env

    def start(self) -> Drill:
        """`optask up` on the drill's data root; returns once it runs (or raises with its output)."""
        if not (self.data / "calendar_overrides.json").exists():
            self.write_calendar()
        self.env.setdefault("FLOWER_PORT", str(free_port()))
        self.env.setdefault("METRICS_PORT", str(free_port()))
        self.env.setdefault("API_PORT", str(free_port()))
        log = open(self.root / "up.out", "ab")  # noqa: SIM115 - the child's stdout for the drill's life
        self.up = subprocess.Popen([sys.executable, "-m", "optask.cli", "up"], env=self.process_env(), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.wait(lambda: "Running (pid" in self.output() or self.up.poll() is not None, 120, "optask up to run")
        if self.up.poll() is not None:
            raise DrillError(f"optask up exited {self.up.returncode}:\n{self.output()}")
        return self

    def output(self) -> str:
        path = self.root / "up.out"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- reading the product -------------------------------------------------------------------

    def redis(self):
        import redis

        url = self.redis_url or recorded_redis_url(self.data)
        return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)

    def stored(self, day: dt.date | None = None) -> dict[str, int]:
        from optask.infra.ledger import Ledger

        try:
            ledger = Ledger(self.redis())
            return {i: len(ledger.stored_minutes(i, day or self.day)) for i in self.indices}
        except Exception:  # noqa: BLE001 - Redis down during a fault: nothing to say now
            return {}

    def position(self) -> int:
        """Minutes of the session the shared clock has played."""
        from optask.infra.session_clock import anchor_key

        try:
            anchor = float(self.redis().get(anchor_key(self.day, self.speed, self.days)))
        except Exception:  # noqa: BLE001
            return -1
        return int((time.time() - anchor) * self.speed // 60)

    def wait(self, predicate, timeout: float, what: str, every: float = 0.25):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        raise DrillError(f"timed out after {timeout:.0f} s waiting for {what}\n--- up output ---\n{self.output()[-3000:]}")

    def wait_position(self, minute: int, timeout: float = 180) -> None:
        self.wait(lambda: self.position() >= minute, timeout, f"session minute {minute}")

    def wait_eod(self, timeout: float = 300, day: dt.date | None = None) -> dict:
        """Until end of day has closed the session (the product's own record of it)."""
        from optask.infra.ledger import Ledger

        def closed():
            try:
                return Ledger(self.redis()).eod((day or self.day).isoformat())
            except Exception:  # noqa: BLE001
                return None

        return self.wait(closed, timeout, "end of day")

    def alerts(self) -> list[dict]:
        from optask.ops.alerts import HISTORY

        return [json.loads(x) for x in self.redis().lrange(HISTORY, 0, -1)]

    def verdict(self, day: dt.date | None = None) -> Verdict:
        """What the product says about the day: its verification, its stores, its alerts."""
        from optask.quality.results import DayVerification
        from optask.storage.sinks import count_day_rows

        day = day or self.day
        results = DayVerification.from_dict(json.loads((self.data / "reports" / "eod" / day.isoformat()
                                                        / "verification.json").read_text()))
        duplicates = 0
        try:
            count_day_rows(self.data, list(self.indices), day, key_check=True)
        except AssertionError as exc:
            duplicates = int(str(exc).split(": ")[1].split()[0])
        findings: dict[str, int] = {}
        for f in results.findings:
            findings[f.kind] = findings.get(f.kind, 0) + 1
        alerts = self.alerts()
        healed = 0
        try:
            from optask.infra.ledger import Ledger

            ledger = Ledger(self.redis())
            attempts = [a for i in self.indices for a in ledger.repair_attempts(i, day).values()]
            healed = sum(1 for a in attempts if a["last"] == "stored")
            healed += int((ledger.eod(day.isoformat()) or {}).get("repaired", 0))
        except Exception:  # noqa: BLE001 - Redis gone: the verification above is the verdict anyway
            pass
        return Verdict(
            score=results.score, status=results.overall_status,
            scores={i: r.score for i, r in results.indices.items()}, duplicate_keys=duplicates,
            unreadable_files=findings.get("unreadable_file", 0), findings=findings,
            alerts_fired=[a["name"] for a in alerts if a["kind"] == "firing"],
            alerts_resolved=[a["name"] for a in alerts if a["kind"] == "resolved"],
            stored=self.stored(day), expected=max((c.expected for r in results.indices.values()
                                                   for c in r.completeness.values()), default=self.minutes),
            healed=healed,
        )

    # --- faults ----------------------------------------------------------------------------------

    def family(self) -> list[psutil.Process]:
        procs = []
        for p in [self.up, *self.extra]:
            if p is not None and p.poll() is None:
                try:
                    procs += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
                except psutil.Error:
                    pass
        return procs

    def child(self, what: str) -> psutil.Process:
        """A process of the stack by what its command line says (`redis-server`, `--queues=optask`, ` beat`)."""
        for p in self.family():
            try:
                if what in " ".join(p.cmdline()):
                    return p
            except psutil.Error:
                continue
        raise DrillError(f"no process of the stack matches {what!r}")

    def kill(self, what: str, sig: int = signal.SIGKILL) -> int:
        p = self.child(what)
        p.send_signal(sig)
        return p.pid

    def kill_up(self) -> None:
        """SIGKILL `optask up` itself; its children die with it (PR_SET_PDEATHSIG). Processes the drill started
        beside it (a second beat, another node) are not its children and live on."""
        family = [psutil.Process(self.up.pid), *psutil.Process(self.up.pid).children(recursive=True)]
        self.up.kill()
        self.up.wait(10)
        _, alive = psutil.wait_procs(family, timeout=30)
        if alive:
            raise DrillError(f"children outlived a killed optask up: {[p.cmdline() for p in alive]}")

    def stop(self) -> int | None:
        """SIGTERM to up (as systemd stops it), then make sure nothing of the drill is left."""
        code = None
        family = self.family()
        if self.up is not None and self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                code = self.up.wait(120)
            except subprocess.TimeoutExpired:
                self.up.kill()
        for p in self.extra:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=30)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        return code

    def start_beat(self, name: str = "beat-extra") -> subprocess.Popen:
        """A second beat on the same Redis, as an operator's mistake would start one."""
        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115
        env = {**self.process_env(), "REDIS_URL": self.redis_url or recorded_redis_url(self.data)}
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel=INFO",
                                 f"--schedule={self.root / (name + '-schedule')}"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.extra.append(proc)
        return proc

    def start_node(self, name: str, indices: list[str]) -> subprocess.Popen:
        """Another worker node on the same Redis and data root (as a second machine would run it): its own
        hostname, the queues of `indices` and the shared fallback queue."""
        from optask.infra.queues import FALLBACK_QUEUE, process_queue

        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115
        env = {**self.process_env(), "REDIS_URL": self.redis_url or recorded_redis_url(self.data)}
        queues = ",".join([FALLBACK_QUEUE, *(process_queue(i) for i in indices)])
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "worker", "--loglevel=INFO",
                                 "--concurrency=1", f"--hostname={name}@%h", f"--queues={queues}",
                                 "--without-gossip", "--without-mingle"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.extra.append(proc)
        return proc

    def kill_node(self, proc: subprocess.Popen) -> None:
        """SIGKILL a node's whole process group (the machine lost): no warm shutdown, nothing withdrawn."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def step_clock_back(self, minutes: int = 1) -> None:
        """The shared clock reads `minutes` earlier from now on (a clock stepping back)."""
        from optask.infra.session_clock import anchor_key

        client = self.redis()
        key = anchor_key(self.day, self.speed, self.days)
        client.set(key, repr(float(client.get(key)) + minutes * 60 / self.speed), keepttl=True)

    def set_token(self, token: str) -> subprocess.CompletedProcess:
        """What the operator does when told the Kite token expired."""
        env = {**self.process_env(), "REDIS_URL": self.redis_url or recorded_redis_url(self.data)}
        return subprocess.run([sys.executable, "-m", "optask.cli", "kite", "set-token", token], env=env,
                              capture_output=True, text=True, timeout=60)
