"""Measuring for the health checks: the only part that does I/O, and it never raises for a component that is
down (Redis unreachable is itself the finding, and says what to start)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from optask.core.calendar import get_calendar
from optask.core.clock import Clock, clock_speed
from optask.core.config import Settings, get_settings, mask_url
from optask.core.timeutils import IST, floor_minute
from optask.infra.celery_client import celery_client
from optask.infra.coordination import PREFIX, heartbeats
from optask.infra.counters import KEY, provider_state
from optask.infra.deliveries import parked
from optask.infra.ledger import Ledger
from optask.infra.queues import EOD_HARD_LIMIT_S, queue_names, queue_oldest_age
from optask.infra.redis_client import connect
from optask.infra.redis_server import url_if_running
from optask.infra.session_clock import clock_of, get_clock
from optask.jobs.ticker import ticker_state
from optask.providers.kite.session import token_meta
from optask.quality.report import load_verification
from optask.quality.results import DayVerification
from optask.storage.influx import InfluxSink

DEPTHS = f"{PREFIX}:health:depths"
CPU = f"{PREFIX}:health:cpu"
#: CPU use is judged over this long: a stack starting, or a minute's burst of work, is not a busy machine.
CPU_WINDOW_S = 300
CPU_SAMPLE_EVERY_S = 10
CPU_SAMPLES_KEPT = 100
#: A session closed less than this ago (real seconds) is still having its end of day: the close delay (90 s at
#: most) and end of day's own hard time limit.
EOD_GRACE_S = 90 + EOD_HARD_LIMIT_S


@dataclass
class Measurements:
    now: float
    clock_minute: dt.datetime
    cpu_pct: float  # now (a fifth of a second)
    mem_pct: float
    disk_free_gb: float
    disk_where: str
    clock_speed: float = 1.0  # of the clock health judges by (`judged_clock`)
    cpu_avg_pct: float | None = None  # over CPU_WINDOW_S; None until known
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
    latency_s: dict[str, float | None] = field(default_factory=dict)  # in session: the last live minute's tick->stored
    unrepaired: dict[str, int] = field(default_factory=dict)
    provider_error: dict | None = None
    provider_ok: dict | None = None
    influx_reachable: bool | None = None
    influx_error: str | None = None
    spool: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0, "dead": 0})
    eod: DayVerification | None = None
    last_session: dt.date | None = None
    last_session_has_data: bool = False
    ticker: dict[str, str] = field(default_factory=dict)
    ticker_fallbacks: int = 0
    parked: list[dict] = field(default_factory=list)
    kite_token: dict | None = None  # what `optask kite login` stored: when the token dies
    next_open: dt.datetime | None = None  # the next session's open after now


def _disk_free(root: Path) -> tuple[float, str]:
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent
    return shutil.disk_usage(where).free / 1e9, str(root)


def last_eod(settings: Settings) -> DayVerification | None:
    """The newest end-of-day verification results under reports/eod/ (a report that cannot be read is skipped)."""
    base = settings.data.reports_root / "eod"
    if not base.is_dir():
        return None
    for day_dir in sorted((p for p in base.iterdir() if p.is_dir()), reverse=True):
        if (results := load_verification(settings, day_dir.name)) is not None:
            return results
    return None


def cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU-seconds of this host since boot, all cores (idle and I/O wait are not busy; guest time is
    already counted in user time)."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def sustained_cpu(client, now: float, cpu_s: tuple[float, float], host: str | None = None) -> float | None:
    """This host's CPU use (%) over the last CPU_WINDOW_S, from the samples every check leaves in Redis (a capped
    list per host, at most one sample every CPU_SAMPLE_EVERY_S); None until they span the window."""
    key = f"{CPU}:{host or socket.gethostname()}"
    samples = [json.loads(x) for x in client.lrange(key, 0, -1)]
    if not samples or now - samples[-1][0] >= CPU_SAMPLE_EVERY_S:
        client.rpush(key, json.dumps([now, *cpu_s]))
        client.ltrim(key, -CPU_SAMPLES_KEPT, -1)
    old = [sample for sample in samples if now - sample[0] >= CPU_WINDOW_S]
    if not old:
        return None
    _, busy_then, total_then = old[-1]
    busy, total = cpu_s
    return 100.0 * (busy - busy_then) / (total - total_then) if total > total_then else None


def judged_clock(settings: Settings, beat: dict | None, client, calendar) -> tuple[Clock, float]:
    """The clock health judges by, and its speed: this process's own (OPTASK_SIMULATED_SESSION_DAY), else the one
    beat stamps the minutes with (a stack playing a past session, as `optask up` does outside market hours, seen
    from a shell that has no such setting), else the wall clock."""
    played = None if settings.market.simulated_session_day is not None else clock_of(beat or {}, client, calendar)
    if played is None:
        return get_clock(settings), clock_speed(settings)
    return played, played.speed


def eod_due_day(calendar, now: dt.datetime, speed: float) -> dt.date:
    """The newest session whose end of day is due at `now` (of a clock running `speed` x real time): closed, and
    closed long enough for end of day to have run (EOD_GRACE_S real seconds). A session still being played, live
    or simulated, is not due."""
    day = calendar.last_closed_session(now)
    if (now - calendar.session(day).close).total_seconds() / speed < EOD_GRACE_S:
        day = calendar.previous_trading_day(day)
    return day


def measure(settings: Settings | None = None, worker_timeout_s: float = 1.0) -> Measurements:
    """Everything the checks need, gathered once; never raises for a component that is down."""
    settings = settings or get_settings()
    free_gb, where = _disk_free(settings.data.root)
    calendar = get_calendar(settings.data.calendar_overrides)
    url, why = url_if_running(settings)
    client, beats, info, latency_ms = None, {}, None, None
    if url is not None:
        client = connect(url, timeout_s=2)
        try:
            t0 = time.perf_counter()
            client.ping()
            latency_ms = (time.perf_counter() - t0) * 1000
            info, beats = client.info(), heartbeats(client)
        except (redis.RedisError, OSError) as exc:
            client, why = None, f"Redis {mask_url(url)} unreachable ({type(exc).__name__}: {exc}); start it or `optask up`"
    clock, speed = judged_clock(settings, beats.get("beat"), client, calendar)
    m = Measurements(now=time.time(), clock_minute=floor_minute(clock.now()), cpu_pct=psutil.cpu_percent(interval=0.2),
                     mem_pct=psutil.virtual_memory().percent, disk_free_gb=free_gb, disk_where=where, clock_speed=speed)
    m.in_session = calendar.in_session(m.clock_minute)
    m.last_session = eod_due_day(calendar, m.clock_minute, speed)
    m.eod = last_eod(settings)
    m.last_session_has_data = any((settings.data.parquet_root / "summary" / f"index={i}" / f"date={m.last_session}").is_dir()
                                  for i in settings.market.indices)
    sink = InfluxSink.from_settings(settings)
    if sink is not None:
        m.spool = sink.spool_size()
        m.influx_reachable, m.influx_error = _http_ok(settings.influx.url.rstrip("/") + "/health")
    if client is None:
        m.redis_error = why
        m.workers_error = "no Redis, so no broker: workers cannot be asked" if url is None else "no broker: workers cannot be asked"
        return m
    m.redis_latency_ms, m.redis_info = latency_ms, info
    m.cpu_avg_pct = sustained_cpu(client, m.now, cpu_seconds())
    names = queue_names(settings)
    _measure_queues(m, client, names)
    if settings.market.provider == "kite":
        m.kite_token = token_meta(client, settings.kite.api_key)
        today = m.clock_minute.astimezone(IST).date()
        upcoming = [x for x in calendar.sessions(today, today + dt.timedelta(days=14)) if x.open > m.clock_minute]
        m.next_open = upcoming[0].open if upcoming else None
    if "beat" in beats:
        m.beat_age_s = m.now - float(beats["beat"]["at"])
    _measure_minutes(m, settings, client, beats)
    m.provider_error, m.provider_ok = provider_state(client)
    if settings.market.provider == "kite" and settings.kite.fetch == "ticker":
        m.ticker = ticker_state(client)
        m.ticker_fallbacks = sum(int(v) for v in client.hvals(f"{KEY}:ticker_fallback"))
    m.consumers, m.workers_error = consumers(settings, url, names, worker_timeout_s)
    return m


def _measure_queues(m: Measurements, client, names: list[str]) -> None:
    """Each queue's depth, its oldest task's age, a short history of depths (to see one that only grows), parked tasks."""
    pipe = client.pipeline(transaction=False)
    for q in names:
        pipe.llen(q)
    m.depths = dict(zip(names, pipe.execute(), strict=True))
    m.ages = {q: queue_oldest_age(client, q) for q in names}
    for q, d in m.depths.items():
        key = f"{DEPTHS}:{q}"
        client.rpush(key, d)
        client.ltrim(key, -10, -1)
        m.depth_history[q] = [int(x) for x in client.lrange(key, 0, -1)]
    m.parked = parked(client)


def _measure_minutes(m: Measurements, settings: Settings, client, beats: dict[str, dict]) -> None:
    """Per index: session minutes since the last live store, missed minutes not yet repaired, and in session the
    last live minute's tick-to-stored latency (its tick's dispatch to its store)."""
    ledger = Ledger(client)
    today = m.clock_minute.astimezone(IST).date()
    for index in settings.market.indices:
        beat = beats.get(f"process_index:{index}")  # wall time of the last live store, scaled to session minutes
        m.minutes_since[index] = round((m.now - float(beat["at"])) * m.clock_speed / 60, 2) if beat else None
        m.unrepaired[index] = len(ledger.missed(index, today))
        dispatched = ledger.claimed_at("collect_minute", beat["last_stored"]) if m.in_session and beat and \
            beat.get("last_stored") else None
        m.latency_s[index] = round(float(beat["at"]) - dispatched, 2) if dispatched else None


def _http_ok(url: str) -> tuple[bool, str | None]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status < 500, None
    except OSError as exc:
        return False, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def consumers(settings: Settings, url: str, names: list[str], timeout: float) -> tuple[dict | None, str | None]:
    """Queue -> hostnames of workers consuming it (Celery remote control); None when none answered."""
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
