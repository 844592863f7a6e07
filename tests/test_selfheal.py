"""Self-healing with limits, against real processes: a killed Redis under `optask up`, an index whose
worker stops."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import time
import urllib.request

import psutil
import pytest
import redis
from test_health import Inbox
from test_up import Up, gone_within, up_env, up_factory  # noqa: F401 - a fixture

from optask.core.calendar import MarketCalendar
from optask.core.config import get_settings, load_settings
from optask.infra.redis_server import recorded_redis_url

DAY = dt.date(2026, 11, 23)


@pytest.fixture
def inbox():
    box = Inbox().start()
    yield box
    box.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_for(predicate, timeout: float, every: float = 0.3, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_killed_redis_is_restarted_alerted_resolved_and_given_up_past_the_limit(isolated_settings, inbox):
    env = up_env(SMTP_SERVER="127.0.0.1", SMTP_PORT=str(inbox.port), ALERT_RECIPIENTS="ops@example.com",
                 MAX_RESTART_ATTEMPTS="2", RESTART_WINDOW_S="600", OPTASK_SIMULATED_SESSION_DAY=DAY.isoformat(),
                 OPTASK_SIMULATED_SESSION_SPEED="30", API_ENABLED="true")
    up = Up(env)
    try:
        up.read_until(lambda ln: "indices" in ln and "legs" in ln)

        def redis_child() -> psutil.Process:
            return next(p for p in up.family() if "redis-server" in " ".join(p.cmdline()))

        redis_child().kill()
        up.read_until(lambda ln: "redis restarted" in ln, timeout=30)
        up.read_until(lambda ln: "2/2 indices" in ln, timeout=60)  # the pipeline resumes on the restarted Redis
        # the API lived through it (it waits for Redis, and follows the events again)
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{env['API_PORT']}/healthz"), 30, what="the API")

        def about_redis() -> list[str]:  # this drill's alerts (another child's would be a notice of its own)
            return [s for s in inbox.subjects() if "supervisor.redis" in s]

        wait_for(lambda: len(about_redis()) >= 2, 60, what="the alert and its resolved notice")
        assert about_redis()[0].startswith("[optask] WARN supervisor.redis: redis exited (killed by SIGKILL)")
        assert about_redis()[1] == "[optask] RESOLVED supervisor.redis: redis running again for 20 s"
        url = recorded_redis_url(isolated_settings)
        history = redis.Redis.from_url(url).lrange("optask:alerts:history", 0, -1)
        kinds = [json.loads(h)["kind"] for h in history if b"supervisor.redis" in h]
        assert sorted(kinds) == ["firing", "resolved"], kinds  # recorded in Redis too, once it was back
        for _ in range(2):  # twice more: the limit is 2 restarts in the window
            redis_child().kill()
            time.sleep(4)
        family = up.family()
        code, out = up.finish(120)
        assert code == 2, out
        assert "redis exited (killed by SIGKILL)" in out and "not restarted (restarted 2 times within 600 s, " \
            "MAX_RESTART_ATTEMPTS=2)" in out, out
        assert not gone_within(family, 10)
        assert any(s.startswith("[optask] CRIT supervisor.redis.down") for s in inbox.subjects()), inbox.subjects()
    finally:
        up.kill()


def test_an_index_whose_worker_stops_goes_warn_then_crit_and_its_minutes_are_repaired(
        isolated_settings, redis_url, monkeypatch):
    from optask.infra.ledger import Ledger
    from optask.ops.health.monitor import HealthMonitor
    from optask.ops.stack import Stack

    env = {"OPTASK_INDICES": "NIFTY,SENSEX", "OPTASK_STRIKES_AROUND_ATM": "2", "OPTASK_PROVIDER": "simulated",
           "OPTASK_SIMULATED_SESSION_DAY": DAY.isoformat(), "OPTASK_SIMULATED_SESSION_SPEED": "20",
           "CPU_WARN_PCT": "100", "CPU_CRIT_PCT": "100"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    settings = load_settings()
    ledger = Ledger(redis.Redis.from_url(redis_url))
    stack = Stack(settings, redis_url, isolated_settings, extra_env=env)
    monitor = HealthMonitor(settings)

    def freshness() -> str:
        return {c.name: c.status for c in monitor.check().checks}["freshness.SENSEX"]

    try:
        stack.start_worker("worker", concurrency=1, queues=["optask", "maintenance", "process.NIFTY"])
        stack.start_worker("worker-sensex", concurrency=1, queues=["process.SENSEX"])
        stack.start_beat()
        wait_for(lambda: len(ledger.stored_minutes("SENSEX", DAY)) >= 3, 90, what="SENSEX minutes")
        assert freshness() == "OK"
        os.killpg(stack.procs["worker-sensex"].pid, signal.SIGKILL)  # SENSEX's only worker is gone
        stack.procs["worker-sensex"].wait(10)
        wait_for(lambda: freshness() == "WARN", 60, what="freshness WARN")
        wait_for(lambda: freshness() == "CRIT", 60, what="freshness CRIT")
        checks = {c.name: c for c in monitor.check().checks}
        assert checks["workers.process.SENSEX"].status == "CRIT" and "no worker consumes" in checks[
            "workers.process.SENSEX"].reason
        stack.restart("worker-sensex")  # it returns
        wait_for(lambda: freshness() == "OK", 90, what="freshness OK again")
        # every SENSEX minute up to where NIFTY stands (less the repair's lag) is stored: none lost
        minutes = [m.isoformat() for m in MarketCalendar().session_minutes(DAY)]

        def no_gap() -> bool:
            nifty = ledger.stored_minutes("NIFTY", DAY)
            sensex = ledger.stored_minutes("SENSEX", DAY)
            upto = max(minutes.index(m) for m in nifty) - 4
            return upto > 10 and all(m in sensex for m in minutes[:upto])

        wait_for(no_gap, 90, what="SENSEX gap repaired")
        repaired = ledger.repair_attempts("SENSEX", DAY)
        assert repaired and all(r["last"] == "stored" for r in repaired.values()), repaired
    finally:
        stack.stop()


def test_a_worker_that_answers_pings_while_its_queue_only_grows_is_restarted_and_its_queue_drains(
        isolated_settings, up_factory):  # noqa: F811 - the fixture imported from test_up
    """Before: heal sent pool_restart, which Celery refuses unless worker_pool_restarts is on (and which would
    not restart a stuck consumer), and recorded the refusal as an action. Now the monitor restarts the worker:
    a warm shutdown, then a kill of a worker still hung after HEAL_GRACE_S; `optask up` starts it again."""
    from optask.ops.health.monitor import ACTIONS

    env = up_env(OPTASK_SIMULATED_SESSION_DAY=DAY.isoformat(), OPTASK_SIMULATED_SESSION_SPEED="30",
                 HEALTH_CHECK_INTERVAL="5", CPU_WARN_PCT="100", CPU_CRIT_PCT="100", MEMORY_WARN_PCT="100",
                 MEMORY_CRIT_PCT="100")
    up = up_factory(env)
    up.read_until(lambda ln: "indices" in ln and "legs" in ln)
    r = redis.Redis.from_url(recorded_redis_url(isolated_settings))
    def live_worker() -> list[psutil.Process]:  # the supervisor's child, not its forked pool
        return [p for p in psutil.Process(up.proc.pid).children()
                if any(a.startswith("--hostname=worker-") and "maintenance" not in a for a in p.cmdline())]

    workers = live_worker()
    assert len(workers) == 1, [p.cmdline() for p in workers]
    hung = workers[0].children()
    for child in hung:  # its pool hangs: the worker still answers pings, its queues only grow
        child.suspend()
    try:
        action = wait_for(lambda: next((json.loads(a) for a in r.lrange(ACTIONS, 0, -1)
                                        if json.loads(a)["action"] == "restart_worker"), None), 150,
                          what="the monitor's restart of the stuck worker")
        assert action["target"].startswith("worker-") and "optask" in action["target"], action
        assert "killed it" in action["result"] and "supervisor starts it again" in action["result"], action
        up.read_until(lambda ln: "worker restarted" in ln, timeout=60)
        wait_for(lambda: r.llen("optask") == 0, 90,
                 what="the stuck queues drained by the restarted worker")
        restarted = live_worker()
        assert restarted and restarted[0].pid != workers[0].pid
        assert all(json.loads(a)["action"] != "pool_restart" for a in r.lrange(ACTIONS, 0, -1))
    finally:
        for child in hung:
            with contextlib.suppress(psutil.Error):
                child.kill()
