"""Health: is optask working right now, and if not, what is wrong and what is being done about it.

Each check is a small pure function of measured inputs that returns OK / WARN / CRIT with a
one-line reason and the measured value; `measure()` is the only part that does I/O, and it works
with the stack down (Redis unreachable is itself the finding, and says what to start). The checks
run from the shell (`optask health`, `python -m optask.health`), as a beat task (a Celery
deployment monitors itself), and in the foreground (`--start`). Each run is kept in Redis for
`--status`, the metrics exporter and `optask up`'s one-line summary; alerts follow from it
(`optask.alerts`), and so do the self-healing actions, each logged, counted and listed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from optask.config import Settings, get_settings
from optask.coordination import PREFIX

log = logging.getLogger(__name__)

OK, WARN, CRIT = "OK", "WARN", "CRIT"
RANK = {OK: 0, WARN: 1, CRIT: 2}
LAST_REPORT = f"{PREFIX}:health:last"
ACTIONS = f"{PREFIX}:health:actions"
DEPTHS = f"{PREFIX}:health:depths"
#: A per-index queue whose depth grew over this many consecutive checks, with a consumer attached, is stuck.
STUCK_SAMPLES = 3


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    reason: str
    value: object = None

    def as_dict(self) -> dict:
        return asdict(self)


def worst(results: list[CheckResult]) -> str:
    return max((r.status for r in results), key=RANK.__getitem__, default=OK)


def _level(value: float, warn: float, crit: float, higher_is_worse: bool = True) -> str:
    if higher_is_worse:
        return CRIT if value >= crit else WARN if value >= warn else OK
    return CRIT if value <= crit else WARN if value <= warn else OK


# --- the checks: pure functions of measured inputs ---------------------------------------------

def check_system(cpu_pct: float, mem_pct: float, disk_free_gb: float, where: str, mon) -> list[CheckResult]:
    disk = _level(disk_free_gb, mon.disk_warn_free_gb, mon.disk_crit_free_gb, higher_is_worse=False)
    return [
        CheckResult("system.cpu", _level(cpu_pct, mon.cpu_warn_pct, mon.cpu_crit_pct), f"CPU {cpu_pct:.0f}% used", cpu_pct),
        CheckResult("system.memory", _level(mem_pct, mon.memory_warn_pct, mon.memory_crit_pct),
                    f"memory {mem_pct:.0f}% used", mem_pct),
        CheckResult("system.disk", disk, f"{disk_free_gb:.1f} GB free under {where}"
                    + ("" if disk == OK else "; free space or move BASE_DATA_DIR"), round(disk_free_gb, 2)),
    ]


def check_redis(info: dict | None, latency_ms: float | None, error: str | None) -> list[CheckResult]:
    if info is None:
        return [CheckResult("redis.reachable", CRIT, error or "Redis unreachable", None)]
    out = [CheckResult("redis.reachable", WARN if latency_ms > 100 else OK, f"ping {latency_ms:.1f} ms", round(latency_ms, 2))]
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    if limit:
        pct = 100.0 * used / limit
        out.append(CheckResult("redis.memory", _level(pct, 80, 95), f"{used / 2**20:.0f} MB of maxmemory "
                               f"{limit / 2**20:.0f} MB ({pct:.0f}%); Celery needs noeviction and headroom", round(pct, 1)))
    else:
        out.append(CheckResult("redis.memory", OK, f"{used / 2**20:.0f} MB used, no maxmemory", used))
    if not int(info.get("aof_enabled", 0)):
        out.append(CheckResult("redis.aof", WARN, "AOF persistence is off: queued tasks and the ledger are lost "
                               "if Redis restarts; run it with --appendonly yes", 0))
    elif info.get("aof_last_write_status", "ok") != "ok" or info.get("aof_last_bgrewrite_status", "ok") != "ok":
        out.append(CheckResult("redis.aof", CRIT, f"AOF write {info.get('aof_last_write_status')}, last rewrite "
                               f"{info.get('aof_last_bgrewrite_status')}: check the Redis disk", 0))
    else:
        out.append(CheckResult("redis.aof", OK, "AOF on, last write and rewrite ok", 1))
    return out


def check_queues(depths: dict[str, int], ages: dict[str, float | None], mon) -> list[CheckResult]:
    out = []
    for q in sorted(depths):
        age = ages.get(q)
        status = _level(age, mon.queue_age_warn_s, mon.queue_age_crit_s) if age is not None else OK
        text = f"{depths[q]} waiting" + (f", oldest {age:.0f} s" if age is not None else "")
        out.append(CheckResult(f"broker.{q}", status, text, depths[q]))
    return out


def check_workers(consumers: dict[str, list[str]] | None, depth_history: dict[str, list[int]],
                  required: list[str], error: str | None = None) -> list[CheckResult]:
    """Workers answer pings and each required queue has a consumer that drains it.

    A queue whose depth only grew over the last STUCK_SAMPLES checks although a worker says it
    consumes it is the known failure after a broker reconnect: counted as down.
    """
    if consumers is None:
        return [CheckResult("workers.alive", CRIT, error or "no Celery worker answered a ping", 0)]
    hosts = sorted({h for hs in consumers.values() for h in hs})
    out = [CheckResult("workers.alive", OK if hosts else CRIT,
                       f"{len(hosts)} answering: {', '.join(hosts)}" if hosts else "no Celery worker answered a ping",
                       len(hosts))]
    for q in required:
        history = depth_history.get(q, [])
        growing = len(history) >= STUCK_SAMPLES and all(b > a for a, b in zip(history[-STUCK_SAMPLES:],
                                                                                history[-STUCK_SAMPLES + 1:], strict=False))
        if not consumers.get(q):
            out.append(CheckResult(f"workers.{q}", CRIT, f"no worker consumes {q}", 0))
        elif growing:
            out.append(CheckResult(f"workers.{q}", CRIT, f"{', '.join(consumers[q])} answer pings but {q} only grows "
                                   f"({' -> '.join(map(str, history[-STUCK_SAMPLES:]))}): not consuming", history[-1]))
        else:
            out.append(CheckResult(f"workers.{q}", OK, f"consumed by {', '.join(consumers[q])}", len(consumers[q])))
    return out


def check_beat(last_tick_age_s: float | None, interval_s: float) -> CheckResult:
    if last_tick_age_s is None:
        return CheckResult("beat", CRIT, "beat has never ticked (is `celery -A tasks beat` or `optask up` running?)", None)
    status = OK if last_tick_age_s <= 2.5 * interval_s else CRIT
    return CheckResult("beat", status, f"last tick {last_tick_age_s:.0f} s ago", round(last_tick_age_s, 1))


def check_freshness(in_session: bool, minutes_since: dict[str, float | None], unrepaired: dict[str, int],
                    mon) -> list[CheckResult]:
    """Minutes (of the session clock) since each index last stored a *live* minute; repairs don't count,
    so a backfill that keeps the data complete cannot hide a live pipeline that stopped."""
    out = []
    for index, since in minutes_since.items():
        missing = unrepaired.get(index, 0)
        if not in_session:
            out.append(CheckResult(f"freshness.{index}", OK, "market closed" + (
                f"; {missing} missed minutes today not yet repaired" if missing else ""), since))
            continue
        if since is None:
            status, text = CRIT, "nothing stored yet this session"
        else:
            status = _level(since, mon.freshness_warn_minutes, mon.freshness_crit_minutes)
            text = f"last live minute stored {since:.1f} min ago"
        if missing:
            text += f"; {missing} missed minutes not yet repaired"
            status = max(status, WARN, key=RANK.__getitem__)
        out.append(CheckResult(f"freshness.{index}", status, text, since))
    return out


def check_provider(name: str, last_error: dict | None, last_ok: dict | None, now: float) -> CheckResult:
    if last_error is None or (last_ok and last_ok["at"] > last_error["at"]):
        return CheckResult("provider", OK, f"{name}: last fetch ok" if last_ok else f"{name}: no fetch yet", None)
    age = now - last_error["at"]
    text = f"{last_error['provider']}: {last_error['kind']} {age:.0f} s ago: {last_error['message']}"
    if last_error.get("permanent"):
        return CheckResult("provider", CRIT, text, last_error["kind"])
    return CheckResult("provider", WARN if age < 600 else OK, text, last_error["kind"])


def check_ticker(streaming: bool, in_session: bool, state: dict[str, str], now: float, fallbacks: int) -> CheckResult | None:
    """KITE_FETCH=ticker: the stream's own heartbeat. Down or stale in session is WARN, not CRIT: those
    minutes are fetched over REST (`fallbacks` counts them), so nothing is lost, only freshness."""
    if not streaming:
        return None
    from optask.ticker import STATE_TTL_S

    if not state or now - float(state.get("at", 0)) > STATE_TTL_S:
        status = WARN if in_session else OK
        return CheckResult("ticker", status, f"no `optask ticker` running; minutes come over REST ({fallbacks} so far)",
                           fallbacks)
    if state.get("healthy") != "1":
        return CheckResult("ticker", WARN if in_session else OK,
                           f"stream down or stale ({state.get('last_error') or 'no data'}); minutes come over REST "
                           f"({fallbacks} so far)", fallbacks)
    return CheckResult("ticker", OK, f"streaming {state.get('subscribed')} instruments on {state.get('connected')} "
                       f"connection(s), last cut {state.get('last_cut') or 'none yet'}", fallbacks)


def check_influx(enabled: bool, reachable: bool | None, error: str | None, spool: dict[str, int]) -> CheckResult:
    if not enabled:
        return CheckResult("influxdb", OK, "disabled (INFLUXDB_URL empty)", None)
    if not reachable:
        return CheckResult("influxdb", WARN, f"unreachable ({error}); {spool['files']} batches spooled on disk, "
                           "replayed when it answers", spool["files"])
    if spool["files"]:
        return CheckResult("influxdb", WARN, f"reachable; {spool['files']} spooled batches still to replay", spool["files"])
    return CheckResult("influxdb", OK, "reachable, nothing spooled", 0)


def check_eod(eod: dict | None, last_session: dt.date | None, last_session_has_data: bool) -> CheckResult:
    """The last verification's verdict; WARN when a session with stored data has not been verified."""
    unverified = last_session is not None and last_session_has_data and (
        eod is None or eod["day"] < last_session.isoformat())
    if eod is None:
        return CheckResult("eod", WARN if unverified else OK, f"{last_session} has data but no end-of-day verification"
                           if unverified else "no end-of-day verification yet (no collected session)", None)
    score, status = eod["summary"]["data_quality_score"], eod["overall_status"]
    level = {"PASS": OK, "WARN": WARN}.get(status, CRIT)
    stale = unverified
    text = f"{eod['day']}: {status}, score {score:.1f}" + (f" (no verification of {last_session} yet)" if stale else "")
    return CheckResult("eod", max(level, WARN, key=RANK.__getitem__) if stale else level, text, score)


# --- measuring: the I/O edge --------------------------------------------------------------------

def queue_names(settings: Settings) -> list[str]:
    from optask.backfill import MAINTENANCE_QUEUE

    return ["optask", MAINTENANCE_QUEUE, *(f"process.{i}" for i in settings.market.indices)]


def queue_oldest_age(client, queue: str) -> float | None:
    """Age of the oldest waiting task (kombu pushes left, pops right), from the `sent_at` header optask stamps."""
    raw = client.lindex(queue, -1)
    if raw is None:
        return None
    try:
        sent = json.loads(raw)["headers"].get("sent_at")
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, time.time() - float(sent)) if sent else None


def redis_url_if_running(settings: Settings) -> tuple[str | None, str | None]:
    """The Redis optask uses, without starting one: (url, None) or (None, why not)."""
    from optask.services import bundled_redis_url

    url = settings.redis.effective_url()
    if url:
        return url, None
    url = bundled_redis_url(settings.data.root)
    if url:
        return url, None
    return None, (f"no Redis configured and the bundled one is not running (data root {settings.data.root}): "
                  "is `optask up` running?")


@dataclass
class Measurements:
    now: float
    clock_minute: dt.datetime
    cpu_pct: float
    mem_pct: float
    disk_free_gb: float
    disk_where: str
    redis_info: dict | None = None
    redis_latency_ms: float | None = None
    redis_error: str | None = None
    depths: dict[str, int] = field(default_factory=dict)
    ages: dict[str, float | None] = field(default_factory=dict)
    depth_history: dict[str, list[int]] = field(default_factory=dict)
    consumers: dict[str, list[str]] | None = None
    workers_error: str | None = None
    beat_age_s: float | None = None
    in_session: bool = False
    minutes_since: dict[str, float | None] = field(default_factory=dict)
    unrepaired: dict[str, int] = field(default_factory=dict)
    provider_error: dict | None = None
    provider_ok: dict | None = None
    influx_reachable: bool | None = None
    influx_error: str | None = None
    spool: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0})
    eod: dict | None = None
    last_session: dt.date | None = None
    last_session_has_data: bool = False
    ticker: dict[str, str] = field(default_factory=dict)
    ticker_fallbacks: int = 0


def _disk_free(root: Path) -> tuple[float, str]:
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent
    return shutil.disk_usage(where).free / 1e9, str(root)


def last_eod(settings: Settings) -> dict | None:
    """The newest end-of-day verification results under reports/eod/."""
    base = settings.data.reports_root / "eod"
    if not base.is_dir():
        return None
    for day_dir in sorted((p for p in base.iterdir() if p.is_dir()), reverse=True):
        path = day_dir / "verification.json"
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                continue
    return None


def measure(settings: Settings | None = None, worker_timeout_s: float = 1.0) -> Measurements:
    """Everything the checks need, gathered once; never raises for a component that is down."""
    import psutil
    import redis

    from optask.calendar import get_calendar
    from optask.clock import get_clock
    from optask.coordination import heartbeats
    from optask.ledger import Ledger
    from optask.storage.influx import InfluxSink
    from optask.timeutils import IST, floor_minute

    settings = settings or get_settings()
    free_gb, where = _disk_free(settings.data.root)
    clock_minute = floor_minute(get_clock(settings).now())
    m = Measurements(now=time.time(), clock_minute=clock_minute, cpu_pct=psutil.cpu_percent(interval=0.2),
                     mem_pct=psutil.virtual_memory().percent, disk_free_gb=free_gb, disk_where=where)
    calendar = get_calendar(settings.data.calendar_overrides)
    m.in_session = calendar.in_session(clock_minute)
    today = clock_minute.astimezone(IST).date()
    s = calendar.session(today)
    m.last_session = today if s and clock_minute >= s.close else calendar.previous_trading_day(today)
    m.eod = last_eod(settings)
    m.last_session_has_data = any((settings.data.parquet_root / "summary" / f"index={i}" / f"date={m.last_session}").is_dir()
                                  for i in settings.market.indices)
    sink = InfluxSink.from_settings(settings)
    if sink is not None:
        m.spool = sink.spool_size()
        m.influx_reachable, m.influx_error = _http_ok(settings.influx.url.rstrip("/") + "/health")
    url, why = redis_url_if_running(settings)
    if url is None:
        m.redis_error, m.workers_error = why, "no Redis, so no broker: workers cannot be asked"
        return m
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        t0 = time.perf_counter()
        client.ping()
        m.redis_latency_ms = (time.perf_counter() - t0) * 1000
        m.redis_info = client.info()
    except (redis.RedisError, OSError) as exc:
        from optask.config import mask_url

        m.redis_error = f"Redis {mask_url(url)} unreachable ({type(exc).__name__}: {exc}); start it or `optask up`"
        m.workers_error = "no broker: workers cannot be asked"
        return m
    from optask.metrics import provider_state

    names = queue_names(settings)
    pipe = client.pipeline(transaction=False)
    for q in names:
        pipe.llen(q)
    m.depths = dict(zip(names, pipe.execute(), strict=True))
    m.ages = {q: queue_oldest_age(client, q) for q in names}
    for q, d in m.depths.items():  # keep a short history per queue to see one that only grows
        key = f"{DEPTHS}:{q}"
        client.rpush(key, d)
        client.ltrim(key, -10, -1)
        m.depth_history[q] = [int(x) for x in client.lrange(key, 0, -1)]
    beats = heartbeats(client)
    if "beat" in beats:
        m.beat_age_s = m.now - float(beats["beat"]["at"])
    ledger = Ledger(client)
    speed = settings.market.simulated_session_speed if settings.market.simulated_session_day else 1.0
    for index in settings.market.indices:
        beat = beats.get(f"process_index:{index}")  # wall time of the last live store, scaled to session minutes
        m.minutes_since[index] = round((m.now - float(beat["at"])) * speed / 60, 2) if beat else None
        m.unrepaired[index] = len(ledger.missed(index, today))
    m.provider_error, m.provider_ok = provider_state(client)
    if settings.market.provider == "kite" and settings.kite.fetch == "ticker":
        from optask.metrics import KEY
        from optask.ticker import ticker_state

        m.ticker = ticker_state(client)
        m.ticker_fallbacks = sum(int(v) for v in client.hvals(f"{KEY}:ticker_fallback"))
    m.consumers, m.workers_error = _consumers(settings, url, names, worker_timeout_s)
    return m


def _http_ok(url: str) -> tuple[bool, str | None]:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status < 500, None
    except OSError as exc:
        return False, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def _consumers(settings: Settings, url: str, names: list[str], timeout: float) -> tuple[dict | None, str | None]:
    """Queue -> hostnames of workers consuming it (Celery remote control); None when none answered."""
    from optask.stack import celery_client

    client = celery_client(settings, url)
    try:
        replies = client.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - the broker refusing is a finding, not a crash
        return None, f"remote control failed: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    if not replies:
        return None, "no Celery worker answered a ping (is `optask up` or `celery -A tasks worker` running?)"
    out: dict[str, list[str]] = {q: [] for q in names}
    for host, queues in replies.items():
        for q in queues:
            out.setdefault(q["name"], []).append(host)
    return out, None


def evaluate(m: Measurements, settings: Settings | None = None) -> list[CheckResult]:
    """Every check, from one set of measurements (pure)."""
    settings = settings or get_settings()
    mon = settings.monitoring
    required = [f"process.{i}" for i in settings.market.indices]
    results = check_system(m.cpu_pct, m.mem_pct, m.disk_free_gb, m.disk_where, mon)
    results += check_redis(m.redis_info, m.redis_latency_ms, m.redis_error)
    if m.redis_info is not None:
        results += check_queues(m.depths, m.ages, mon)
        results += check_workers(m.consumers, m.depth_history, required, m.workers_error)
        results.append(check_beat(m.beat_age_s, beat_interval_s(settings)))
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


def beat_interval_s(settings: Settings) -> float:
    market = settings.market
    if market.simulated_session_day is not None and market.simulated_session_speed > 1:
        return max(60.0 / market.simulated_session_speed, 1.0)
    return 60.0


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
    import redis

    try:
        raw = client.get(LAST_REPORT)
    except (redis.RedisError, OSError):
        return None
    return json.loads(raw) if raw else None


def recent_actions(client, n: int = 20) -> list[dict]:
    return [json.loads(x) for x in client.lrange(ACTIONS, 0, n - 1)]


def record_action(client, action: str, target: str, result: str) -> dict:
    """Every self-healing action: logged, counted in metrics, listed by `--status`."""
    from optask.metrics import count

    entry = {"at": time.time(), "action": action, "target": target, "result": result}
    log.warning("self-healing: %s %s: %s", action, target, result)
    client.lpush(ACTIONS, json.dumps(entry))
    client.ltrim(ACTIONS, 0, 199)
    count(client, "actions", action)
    return entry


# --- the monitor: checks, alerts, self-healing --------------------------------------------------

class EnhancedHealthMonitor:
    """The seed platform's monitor, kept: `get_enhanced_monitor().start_monitoring()`."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()

    def _client(self):
        import redis

        url, _ = redis_url_if_running(self.settings)
        return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3) if url else None

    def check(self) -> HealthReport:
        """Measure and evaluate once; nothing is stored or sent."""
        results = evaluate(measure(self.settings), self.settings)
        return HealthReport(time.time(), worst(results), results)

    def run_once(self) -> HealthReport:
        """Check, keep the report in Redis, heal what can be healed, then send what alerts are due."""
        import redis

        from optask.alerts import Alerter

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
        """Actions for conditions that fix themselves: a worker that stopped consuming gets its pool restarted."""
        from optask.stack import celery_client

        actions = []
        stuck = [c for c in report.checks if c.name.startswith("workers.process.") and c.status == CRIT
                 and "not consuming" in c.reason]
        if stuck:
            url, _ = redis_url_if_running(self.settings)
            app = celery_client(self.settings, url)
            try:
                for c in stuck:
                    queue = c.name.removeprefix("workers.")
                    hosts = _consumers(self.settings, url, [queue], 1.0)[0] or {}
                    replies = app.control.pool_restart(destination=hosts.get(queue) or None, reply=True, timeout=2) or []
                    actions.append(record_action(client, "pool_restart", queue, json.dumps(replies)[:300] or "no reply"))
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
        from optask.alerts import Alerter

        client = self._client()
        stored = last_report(client) if client is not None else None
        report = stored or self.check().as_dict()
        actions = recent_actions(client) if client is not None else []
        alerter = Alerter(self.settings, client)
        return {"report": report, "actions": actions, "alerts": alerter.active(), "delivery": alerter.delivery_state()}


def get_enhanced_monitor(settings: Settings | None = None) -> EnhancedHealthMonitor:
    return EnhancedHealthMonitor(settings)


def main(argv: list[str] | None = None) -> int:
    """`python -m optask.health --status|--check|--alerts|--start`: the same as `optask health`."""
    import argparse

    from optask.cli import run_health

    parser = argparse.ArgumentParser(prog="python -m optask.health", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    for flag in ("--status", "--check", "--alerts", "--start"):
        group.add_argument(flag, action="store_true")
    args = parser.parse_args(argv)
    mode = next(f for f in ("status", "check", "alerts", "start") if getattr(args, f))
    return run_health(mode)


if __name__ == "__main__":
    raise SystemExit(main())

