"""Measuring for the health checks: the only part that does I/O, and it never raises for a component that is
down (Redis unreachable is itself the finding, and says what to start)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from optask.core.calendar import get_calendar
from optask.core.clock import clock_speed
from optask.core.config import Settings, get_settings, mask_url
from optask.core.timeutils import IST, floor_minute
from optask.infra.celery_client import celery_client
from optask.infra.coordination import PREFIX, heartbeats
from optask.infra.counters import KEY, provider_state
from optask.infra.deliveries import parked
from optask.infra.ledger import Ledger
from optask.infra.queues import queue_names, queue_oldest_age
from optask.infra.redis_client import connect
from optask.infra.redis_server import url_if_running
from optask.infra.session_clock import get_clock
from optask.jobs.ticker import ticker_state
from optask.providers.kite.session import token_meta
from optask.storage.influx import InfluxSink

DEPTHS = f"{PREFIX}:health:depths"


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
    spool: dict[str, int] = field(default_factory=lambda: {"files": 0, "bytes": 0, "dead": 0})
    eod: dict | None = None
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
    settings = settings or get_settings()
    free_gb, where = _disk_free(settings.data.root)
    clock_minute = floor_minute(get_clock(settings).now())
    m = Measurements(now=time.time(), clock_minute=clock_minute, cpu_pct=psutil.cpu_percent(interval=0.2),
                     mem_pct=psutil.virtual_memory().percent, disk_free_gb=free_gb, disk_where=where)
    calendar = get_calendar(settings.data.calendar_overrides)
    m.in_session = calendar.in_session(clock_minute)
    today = clock_minute.astimezone(IST).date()
    m.last_session = calendar.last_closed_session(clock_minute)
    m.eod = last_eod(settings)
    m.last_session_has_data = any((settings.data.parquet_root / "summary" / f"index={i}" / f"date={m.last_session}").is_dir()
                                  for i in settings.market.indices)
    sink = InfluxSink.from_settings(settings)
    if sink is not None:
        m.spool = sink.spool_size()
        m.influx_reachable, m.influx_error = _http_ok(settings.influx.url.rstrip("/") + "/health")
    url, why = url_if_running(settings)
    if url is None:
        m.redis_error, m.workers_error = why, "no Redis, so no broker: workers cannot be asked"
        return m
    client = connect(url, timeout_s=2)
    try:
        t0 = time.perf_counter()
        client.ping()
        m.redis_latency_ms = (time.perf_counter() - t0) * 1000
        m.redis_info = client.info()
    except (redis.RedisError, OSError) as exc:
        m.redis_error = f"Redis {mask_url(url)} unreachable ({type(exc).__name__}: {exc}); start it or `optask up`"
        m.workers_error = "no broker: workers cannot be asked"
        return m
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
    m.parked = parked(client)
    if settings.market.provider == "kite":
        m.kite_token = token_meta(client, settings.kite.api_key)
        upcoming = [x for x in calendar.sessions(today, today + dt.timedelta(days=14)) if x.open > clock_minute]
        m.next_open = upcoming[0].open if upcoming else None
    beats = heartbeats(client)
    if "beat" in beats:
        m.beat_age_s = m.now - float(beats["beat"]["at"])
    ledger = Ledger(client)
    speed = clock_speed(settings)
    for index in settings.market.indices:
        beat = beats.get(f"process_index:{index}")  # wall time of the last live store, scaled to session minutes
        m.minutes_since[index] = round((m.now - float(beat["at"])) * speed / 60, 2) if beat else None
        m.unrepaired[index] = len(ledger.missed(index, today))
    m.provider_error, m.provider_ok = provider_state(client)
    if settings.market.provider == "kite" and settings.kite.fetch == "ticker":
        m.ticker = ticker_state(client)
        m.ticker_fallbacks = sum(int(v) for v in client.hvals(f"{KEY}:ticker_fallback"))
    m.consumers, m.workers_error = consumers(settings, url, names, worker_timeout_s)
    return m


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
