"""The monitor: measure, evaluate every check, keep the report in Redis, heal what heals itself, alert."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field

import psutil
import redis

from optask.core.config import Settings, get_settings
from optask.core.timeutils import UTC
from optask.infra import counters
from optask.infra.celery_client import celery_client
from optask.infra.coordination import PREFIX
from optask.infra.queues import DEFAULT_QUEUE
from optask.infra.redis_client import connect
from optask.infra.redis_server import url_if_running
from optask.ops.alerts import Alerter
from optask.ops.health.checks import (
    CRIT,
    OK,
    RANK,
    CheckResult,
    check_beat,
    check_cpu,
    check_eod,
    check_freshness,
    check_influx,
    check_kite_token,
    check_parked,
    check_provider,
    check_queues,
    check_redis,
    check_system,
    check_ticker,
    check_workers,
    work_strain,
    worst,
)
from optask.ops.health.measure import CPU_WINDOW_S, Measurements, consumers, measure

log = logging.getLogger("optask.health")

LAST_REPORT = f"{PREFIX}:health:last"
ACTIONS = f"{PREFIX}:health:actions"
HEALING = f"{PREFIX}:health:healing"
#: How long a stuck worker gets to stop after a warm shutdown before it is killed (when it runs here).
HEAL_GRACE_S = 15


def _gone_within(app, host: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not app.control.ping(destination=[host], timeout=1.0):
            return True
        time.sleep(0.5)
    return False


def restart_worker(app, host: str, grace_s: float) -> str:
    """Stop a stuck worker so that its supervisor starts it afresh; returns what happened, in words.

    On this machine its process is watched (a worker in warm shutdown stops answering pings before it exits)
    and killed with its pool if it has not exited within `grace_s`; elsewhere only the request can be sent."""
    stats = (app.control.inspect(destination=[host], timeout=2.0).stats() or {}).get(host) or {}
    pid = stats.get("pid")
    local = host.partition("@")[2] == socket.gethostname() and pid and psutil.pid_exists(pid) \
        and pid not in (os.getpid(), os.getppid())
    if not local:
        app.control.shutdown(destination=[host])
        if _gone_within(app, host, grace_s):
            return f"asked to stop (warm shutdown); it stopped answering within {grace_s} s, its supervisor restarts it"
        return f"asked to stop (warm shutdown), still answering after {grace_s} s on another machine: restart it there"
    worker = psutil.Process(pid)
    procs = [worker, *worker.children(recursive=True)]
    app.control.shutdown(destination=[host])
    try:
        worker.wait(grace_s)
        return f"asked to stop (warm shutdown); pid {pid} exited within {grace_s} s and its supervisor starts it again"
    except psutil.TimeoutExpired:
        pass
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)
    return (f"asked to stop (warm shutdown), pid {pid} still running after {grace_s} s (a hung task?): killed it "
            f"and its {len(procs) - 1} pool process(es); acks_late requeues their tasks and its supervisor "
            "starts it again")


def evaluate(m: Measurements, settings: Settings | None = None) -> list[CheckResult]:
    """Every check, from one set of measurements (pure)."""
    settings = settings or get_settings()
    mon = settings.monitoring
    required = [DEFAULT_QUEUE] + [f"process.{i}" for i in settings.market.indices]  # beat's ticks, then each index
    tick_s = beat_interval_s(m.clock_speed)
    cpu = check_cpu(m.cpu_pct, m.cpu_avg_pct, CPU_WINDOW_S, work_strain(m.ages, m.latency_s, tick_s, mon), mon)
    results = check_system(cpu, m.mem_pct, m.disk_free_gb, m.disk_where, mon)
    results += check_redis(m.redis_info, m.redis_latency_ms, m.redis_error)
    if m.redis_info is not None:
        results += check_queues(m.depths, m.ages, mon)
        results += check_workers(m.consumers, m.depth_history, required, m.workers_error)
        results.append(check_beat(m.beat_age_s, tick_s))
        results.append(check_parked(m.parked))
        token = check_kite_token(settings.market.provider, m.kite_token, dt.datetime.fromtimestamp(m.now, UTC),
                                 m.next_open)
        if token is not None:
            results.append(token)
        results += check_freshness(m.in_session, m.minutes_since, m.unrepaired, mon)
        results.append(check_provider(settings.market.provider, m.provider_error, m.provider_ok, m.now))
        ticker = check_ticker(settings.market.provider == "kite" and settings.kite.fetch == "ticker", m.in_session,
                              m.ticker, m.now, m.ticker_fallbacks)
        if ticker is not None:
            results.append(ticker)
    else:
        results.append(CheckResult("workers.alive", CRIT, m.workers_error or "unknown", None))
    results.append(check_influx(settings.influx.enabled, m.influx_reachable, m.influx_error, m.spool))
    results.append(check_eod(m.eod, m.last_session, m.last_session_has_data))
    return results


def beat_interval_s(speed: float) -> float:
    """How often beat ticks on a clock running `speed` x real time: every minute of it (at least every second)."""
    return max(60.0 / speed, 1.0)


@dataclass
class HealthReport:
    at: float
    status: str
    checks: list[CheckResult]
    actions: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"at": self.at, "status": self.status, "checks": [c.as_dict() for c in self.checks],
                "actions": self.actions}

    def summary(self) -> str:
        """One line: the status and what is not OK."""
        bad = [c for c in self.checks if c.status != OK]
        bad.sort(key=lambda c: -RANK[c.status])
        detail = "; ".join(f"{c.name}: {c.reason}" for c in bad[:3]) + (f"; +{len(bad) - 3} more" if len(bad) > 3 else "")
        return f"health {self.status}" + (f": {detail}" if detail else "")


def last_report(client) -> dict | None:
    try:
        raw = client.get(LAST_REPORT)
    except (redis.RedisError, OSError):
        return None
    return json.loads(raw) if raw else None


def recent_actions(client, n: int = 20) -> list[dict]:
    return [json.loads(x) for x in client.lrange(ACTIONS, 0, n - 1)]


def record_action(client, action: str, target: str, result: str) -> dict:
    """Every self-healing action: logged, counted in metrics, listed by `--status`."""
    entry = {"at": time.time(), "action": action, "target": target, "result": result}
    log.warning("self-healing: %s %s: %s", action, target, result)
    client.lpush(ACTIONS, json.dumps(entry))
    client.ltrim(ACTIONS, 0, 199)
    counters.count(client, "actions", action)
    return entry


# --- the monitor: checks, alerts, self-healing --------------------------------------------------

class HealthMonitor:
    """Checks, keeps the report, heals and alerts: once (`run_once`, the beat task's), or every
    HEALTH_CHECK_INTERVAL s (`start_monitoring`). The seed's `optask.health.get_enhanced_monitor()` gives one."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()

    def _client(self):
        url, _ = url_if_running(self.settings)
        return connect(url, timeout_s=5, connect_timeout_s=3) if url else None

    def check(self) -> HealthReport:
        """Measure and evaluate once; nothing is stored or sent."""
        results = evaluate(measure(self.settings), self.settings)
        return HealthReport(time.time(), worst(results), results)

    def run_once(self) -> HealthReport:
        """Check, keep the report in Redis, heal what can be healed, then send what alerts are due."""
        report = self.check()
        client = self._client()
        if client is not None:
            try:
                report.actions = self.heal(report, client)
                client.set(LAST_REPORT, json.dumps(report.as_dict()))
            except (redis.RedisError, OSError) as exc:
                log.warning("health: could not keep the report in Redis: %s", exc)
        Alerter(self.settings, client).process(report.checks)
        return report

    def heal(self, report: HealthReport, client) -> list[dict]:
        """A worker that answers pings while a queue it consumes only grows is restarted: asked to stop (a warm
        shutdown, which works across machines and containers), then, if it is still there after
        HEAL_GRACE_S and runs on this machine, killed. Its supervisor starts it again: `optask up` within
        its restart limits, compose by the container's restart policy. Each action is recorded as it went."""
        stuck: dict[str, list[str]] = {}
        for c in report.checks:
            if c.name.startswith("workers.") and c.status == CRIT and "not consuming" in c.reason:
                stuck.setdefault(c.name.removeprefix("workers."), [])
        if not stuck:
            return []
        url, _ = url_if_running(self.settings)
        app = celery_client(self.settings, url)
        actions = []
        try:
            hosts: dict[str, list[str]] = {}
            found = consumers(self.settings, url, list(stuck), 2.0)[0] or {}
            for queue in stuck:
                for host in found.get(queue) or []:
                    hosts.setdefault(host, []).append(queue)
            for host, queues in hosts.items():
                if not client.set(f"{HEALING}:{host}", "1", nx=True, ex=HEAL_GRACE_S * 8):
                    continue  # restarted a moment ago: give it time before judging it again
                result = restart_worker(app, host, HEAL_GRACE_S)
                actions.append(record_action(client, "restart_worker", f"{host} ({', '.join(queues)})", result))
        finally:
            app.close()
        return actions

    def start_monitoring(self, interval_s: float | None = None, stop=None, on_report=None) -> None:
        """Check every HEALTH_CHECK_INTERVAL seconds in the foreground until `stop()` is true (or forever)."""
        interval_s = interval_s or self.settings.monitoring.health_check_interval
        while stop is None or not stop():
            started = time.monotonic()
            report = self.run_once()
            if on_report:
                on_report(report)
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    def status(self) -> dict:
        """The last stored report (or a fresh check when none is stored), recent actions, alert and delivery state."""
        client = self._client()
        stored = last_report(client) if client is not None else None
        report = stored or self.check().as_dict()
        actions = recent_actions(client) if client is not None else []
        alerter = Alerter(self.settings, client)
        return {"report": report, "actions": actions, "alerts": alerter.active(), "delivery": alerter.delivery_state()}

