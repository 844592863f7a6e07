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
from dataclasses import asdict, dataclass

from optask.core.timeutils import IST
from optask.jobs.ticker import STATE_TTL_S
from optask.quality.results import DayVerification

OK, WARN, CRIT = "OK", "WARN", "CRIT"
RANK = {OK: 0, WARN: 1, CRIT: 2}
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

def work_strain(ages: dict[str, float | None], latency_s: dict[str, float | None], tick_s: float, mon) -> str | None:
    """How the work suffers, in words, or None: a queue's oldest task waiting QUEUE_AGE_WARN_S or more, or a live
    minute stored more than half a tick after its tick (`tick_s`: 60 s live, less on an accelerated clock)."""
    waiting = {q: a for q, a in ages.items() if a is not None and a >= mon.queue_age_warn_s}
    if waiting:
        q = max(waiting, key=waiting.__getitem__)
        return f"{q}'s oldest task waits {waiting[q]:.0f} s"
    late = {i: s for i, s in latency_s.items() if s is not None and s > tick_s / 2}
    if late:
        i = max(late, key=late.__getitem__)
        return f"{i}'s last minute was stored {late[i]:.0f} s after its tick"
    return None


def check_cpu(now_pct: float, avg_pct: float | None, window_s: float, strain: str | None, mon) -> CheckResult:
    """CPU busy with the work alone is no finding: a stack at 100% that keeps pace is doing its job, and one that
    is starting is busy for a minute. CPU_WARN_PCT (CPU_CRIT_PCT) counts only when the use is sustained, averaged
    over `window_s`, and the work suffers too (`strain`), the CPU then its likely cause."""
    if avg_pct is None:
        return CheckResult("system.cpu", OK, f"CPU {now_pct:.0f}% now; its {window_s / 60:.0f}-minute average is "
                           "not known yet", round(now_pct, 1))
    text = f"CPU {avg_pct:.0f}% over the last {window_s / 60:.0f} min ({now_pct:.0f}% now)"
    level = _level(avg_pct, mon.cpu_warn_pct, mon.cpu_crit_pct)
    if level == OK or strain is None:
        return CheckResult("system.cpu", OK, text + ("" if level == OK else ", and the work keeps pace"),
                           round(avg_pct, 1))
    return CheckResult("system.cpu", level, f"{text}, and {strain}: give this machine more cores or fewer indices "
                       "(WORKER_INDICES)", round(avg_pct, 1))


def check_system(cpu: CheckResult, mem_pct: float, disk_free_gb: float, where: str, mon) -> list[CheckResult]:
    disk = _level(disk_free_gb, mon.disk_warn_free_gb, mon.disk_crit_free_gb, higher_is_worse=False)
    return [
        cpu,
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
    """Every queue's depth and its oldest task's age (the fallback queue `process.any` too)."""
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
    dead = spool.get("dead", 0)
    if dead:
        return CheckResult("influxdb", CRIT, f"{dead} batch(es) InfluxDB rejected are dead letters in influx_dead/ "
                           "(each with its reason): fix the cause, then move them back to influx_spool/ to resend",
                           dead)
    if not reachable:
        return CheckResult("influxdb", WARN, f"unreachable ({error}); {spool['files']} batches spooled on disk, "
                           "replayed when it answers", spool["files"])
    if spool["files"]:
        return CheckResult("influxdb", WARN, f"reachable; {spool['files']} spooled batches still to replay", spool["files"])
    return CheckResult("influxdb", OK, "reachable, nothing spooled", 0)


def check_kite_token(provider: str, meta: dict | None, now: dt.datetime, next_open: dt.datetime | None,
                     warn_before_s: float = 12 * 3600) -> CheckResult | None:
    """The stored Kite access token against the next session: it dies every morning around 06:00 IST, so from
    the evening before (WARN) the person who logs in is told to, with the command; dead is CRIT."""
    if provider != "kite":
        return None
    if meta is None:
        return CheckResult("kite.token", OK, "no token stored by `optask kite login` (KITE_ACCESS_TOKEN is used)", None)
    dies = dt.datetime.fromisoformat(meta["dies_at"])
    left_h = (dies - now).total_seconds() / 3600
    when_text = dies.astimezone(IST).strftime("%a %d %b %H:%M IST")
    if left_h <= 0:
        return CheckResult("kite.token", CRIT, f"the Kite access token died at {when_text}: run `optask kite login`",
                           round(left_h, 1))
    if next_open is not None and dies < next_open and left_h * 3600 <= warn_before_s:
        return CheckResult("kite.token", WARN, f"the Kite access token dies at {when_text}, before the next session "
                           f"({next_open.astimezone(IST):%a %d %b %H:%M} IST): after it, run `optask kite login`",
                           round(left_h, 1))
    return CheckResult("kite.token", OK, f"the Kite access token lives until {when_text}", round(left_h, 1))


def check_parked(parked: list[dict]) -> CheckResult:
    """Tasks delivered again and again without finishing (their process killed each time), parked."""
    if not parked:
        return CheckResult("tasks.parked", OK, "no task parked", 0)
    last = parked[0]
    args = ", ".join(repr(a) for a in last["args"])[:120]
    return CheckResult("tasks.parked", CRIT, f"{len(parked)} task(s) parked after {last['deliveries'] - 1} deliveries "
                       f"that never finished (their process died each time; memory?), latest {last['task']}({args}); "
                       "fix the cause, then run it again (`optask backfill` or `optask verify --day`)", len(parked))


def check_eod(eod: DayVerification | None, last_session: dt.date | None, last_session_has_data: bool) -> CheckResult:
    """The last verification's verdict; WARN when a session with stored data has not been verified."""
    unverified = last_session is not None and last_session_has_data and (
        eod is None or eod.day < last_session.isoformat())
    if eod is None:
        return CheckResult("eod", WARN if unverified else OK, f"{last_session} has data but no end-of-day verification"
                           if unverified else "no end-of-day verification yet (no collected session)", None)
    score, status = eod.score, eod.overall_status
    level = {"PASS": OK, "WARN": WARN}.get(status, CRIT)
    stale = unverified
    text = f"{eod.day}: {status}, score {score:.1f}" + (f" (no verification of {last_session} yet)" if stale else "")
    return CheckResult("eod", max(level, WARN, key=RANK.__getitem__) if stale else level, text, score)
