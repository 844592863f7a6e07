"""Health checks, alerts that never storm, exit codes for cron, metrics a real Prometheus scrapes."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from conftest import need

from optask.core.config import get_settings, load_settings
from optask.core.timeutils import IST
from optask.infra.procutil import free_port
from optask.ops.health.checks import (
    CRIT,
    OK,
    WARN,
    CheckResult,
    check_eod,
    check_freshness,
    check_influx,
    check_provider,
    check_redis,
    check_ticker,
    check_workers,
)
from optask.quality.results import DayVerification, VerificationSummary

ROOT = Path(__file__).resolve().parents[1]


class Inbox:
    """A real SMTP server (aiosmtpd) on a free port, keeping what it receives."""

    def __init__(self, port: int | None = None):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        inbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
                from email import message_from_bytes

                inbox.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        self.port = port or free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> Inbox:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def subjects(self) -> list[str]:
        return [m["Subject"] for m in self.messages]


@pytest.fixture
def inbox():
    box = Inbox().start()
    yield box
    box.stop()


def smtp_env(monkeypatch, port: int, **more: str) -> None:
    for k, v in {"SMTP_SERVER": "127.0.0.1", "SMTP_PORT": str(port), "ALERT_RECIPIENTS": "ops@example.com",
                 "SMTP_TIMEOUT_S": "2", **more}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()


# --- the checks are pure functions -------------------------------------------------------------

def test_checks_are_pure_functions_of_their_inputs():
    mon = load_settings().monitoring
    stuck = check_workers({"process.NIFTY": ["w1@h"], "process.SENSEX": ["w1@h"]},
                          {"process.NIFTY": [0, 2, 3, 5], "process.SENSEX": [1, 0, 0, 0]},
                          ["process.NIFTY", "process.SENSEX"])
    by = {c.name: c for c in stuck}
    assert by["workers.process.NIFTY"].status == CRIT and "not consuming" in by["workers.process.NIFTY"].reason
    assert by["workers.process.SENSEX"].status == OK
    assert check_workers({"process.NIFTY": []}, {}, ["process.NIFTY"])[1].status == CRIT
    fresh = {c.name: c.status for c in check_freshness(True, {"A": 0.5, "B": 3.0, "C": 9.0, "D": None}, {"A": 2}, mon)}
    assert fresh == {"freshness.A": WARN, "freshness.B": WARN, "freshness.C": CRIT, "freshness.D": CRIT}
    assert all(c.status == OK for c in check_freshness(False, {"A": 90.0}, {}, mon))
    now = time.time()
    expired = {"at": now - 5, "provider": "kite", "kind": "PermanentProviderError", "permanent": True,
               "message": "KITE_ACCESS_TOKEN expired or invalid; generate a new access token"}
    token = check_provider("kite", expired, {"at": now - 60}, now)
    assert token.status == CRIT and "KITE_ACCESS_TOKEN" in token.reason
    assert check_provider("kite", expired, {"at": now}, now).status == OK  # a fetch succeeded since
    assert check_ticker(False, True, {}, now, 0) is None  # not streaming: no check
    assert check_ticker(True, True, {}, now, 3).status == WARN  # none running: minutes come over REST
    assert "3 so far" in check_ticker(True, True, {}, now, 3).reason
    assert check_ticker(True, False, {}, now, 0).status == OK  # market closed: nothing to stream
    stale = {"at": str(now), "healthy": "0", "last_error": "Kite refused the websocket with HTTP 403"}
    assert check_ticker(True, True, stale, now, 1).status == WARN and "403" in check_ticker(True, True, stale, now, 1).reason
    up = {"at": str(now), "healthy": "1", "subscribed": "2750", "connected": "1", "last_cut": "x"}
    assert check_ticker(True, True, up, now, 0).status == OK and "2750" in check_ticker(True, True, up, now, 0).reason
    assert check_eod(None, dt.date(2026, 11, 23), last_session_has_data=False).status == OK
    assert check_eod(None, dt.date(2026, 11, 23), last_session_has_data=True).status == WARN
    passed = DayVerification("2026-11-23", 0.0, {}, {}, {}, [], "PASS", VerificationSummary(100.0, 0, 0, {}, {}, {}, 0.0))
    assert check_eod(passed, dt.date(2026, 11, 23), True).status == OK
    assert check_eod(replace(passed, overall_status="FAIL"), dt.date(2026, 11, 23), True).status == CRIT
    no_aof = {c.name: c for c in check_redis({"used_memory": 10, "maxmemory": 0, "aof_enabled": 0}, 0.3, None)}
    assert no_aof["redis.aof"].status == WARN
    assert check_redis(None, None, "refused")[0].status == CRIT
    dead = check_influx(True, True, None, {"files": 0, "bytes": 0, "dead": 2})
    assert dead.status == CRIT and "influx_dead/" in dead.reason and dead.value == 2
    assert check_influx(True, True, None, {"files": 0, "bytes": 0, "dead": 0}).status == OK


# --- CPU: busy with the work alone is no finding ---------------------------------------------------

def test_cpu_is_a_finding_only_when_sustained_and_the_work_suffers():
    """Before: one 0.2 s sample of CPU decided (`CRIT system.cpu: CPU 100% used` while the stack started)."""
    from optask.ops.health.checks import check_cpu, work_strain

    mon = load_settings().monitoring
    assert check_cpu(100.0, None, 300, "broker.optask's oldest task waits 900 s", mon).status == OK  # not sustained yet
    assert check_cpu(100.0, 99.0, 300, None, mon).status == OK  # sustained, and the work keeps pace
    assert check_cpu(100.0, 50.0, 300, "x", mon).status == OK  # the work suffers, but not for want of CPU
    warn = check_cpu(100.0, 90.0, 300, "broker.optask's oldest task waits 130 s", mon)
    assert warn.status == WARN and "90% over the last 5 min" in warn.reason and "130 s" in warn.reason, warn
    assert check_cpu(100.0, 99.0, 300, "x", mon).status == CRIT  # past CPU_CRIT_PCT
    assert work_strain({"optask": 3.0, "process.NIFTY": None}, {"NIFTY": 0.4}, 60.0, mon) is None
    slow_queue = work_strain({"optask": 3.0, "maintenance": 200.0}, {}, 60.0, mon)
    assert slow_queue and "maintenance" in slow_queue and "200 s" in slow_queue
    late = work_strain({}, {"NIFTY": 0.4, "SENSEX": 41.0}, 60.0, mon)
    assert late and "SENSEX" in late and "41 s after its tick" in late
    assert work_strain({}, {"SENSEX": 2.0}, 1.2, mon)  # an accelerated clock: ticks every 1.2 s


def test_cpu_use_is_averaged_over_minutes_from_the_samples_checks_leave(redis_url):
    from optask.ops.health.measure import CPU_WINDOW_S, sustained_cpu

    client = redis.Redis.from_url(redis_url)
    t0 = 1_000_000.0
    assert sustained_cpu(client, t0, (0.0, 0.0)) is None  # nothing to compare with yet
    assert sustained_cpu(client, t0 + 60, (120.0, 120.0)) is None  # a busy minute is not sustained
    # two cores: 2 CPU-seconds a second; busy for a minute, then a quarter busy
    busy = 120.0 + 0.5 * (CPU_WINDOW_S - 60)
    assert sustained_cpu(client, t0 + CPU_WINDOW_S, (busy, 2.0 * CPU_WINDOW_S)) == pytest.approx(
        100 * busy / (2.0 * CPU_WINDOW_S))
    for i in range(1, 2000):  # a check every second for half an hour keeps a bounded list
        sustained_cpu(client, t0 + CPU_WINDOW_S + i, (busy + i, 2.0 * (CPU_WINDOW_S + i)))
    assert client.llen(next(iter(client.scan_iter("optask:health:cpu:*")))) <= 100
    assert sustained_cpu(client, t0 + CPU_WINDOW_S + 2000, (busy + 2000, 2.0 * (CPU_WINDOW_S + 2000))) == \
        pytest.approx(50.0, abs=1.0)


# --- end of day: the day being played does not need it yet ---------------------------------------

def test_the_session_a_stack_plays_needs_no_end_of_day_yet(isolated_settings, redis_url):
    """Before: `optask up` outside market hours replays the last closed session, and `optask health` in another
    shell (no OPTASK_SIMULATED_SESSION_DAY) judged by the wall clock: `WARN eod: <that day> has data but no
    end-of-day verification` all through the replay. Health now reads the clock beat stamps the minutes with."""
    from optask.core.calendar import get_calendar
    from optask.core.clock import WallClock
    from optask.infra.session_clock import start_session_clock
    from optask.ops.health import evaluate, measure
    from optask.ops.stack import Stack

    calendar = get_calendar(isolated_settings / "calendar_overrides.json")
    day = calendar.last_closed_session(WallClock().now())  # what `up` plays outside market hours
    (isolated_settings / "parquet" / "summary" / "index=NIFTY" / f"date={day}").mkdir(parents=True)  # minutes stored
    settings = load_settings()
    stack = Stack(settings, redis_url, isolated_settings,
                  extra_env={"OPTASK_SIMULATED_SESSION_DAY": day.isoformat(), "OPTASK_INDICES": "NIFTY"})
    try:
        client = redis.Redis.from_url(redis_url)
        start_session_clock(client, day, 1.0, len(calendar.session_minutes(day)))  # as `up` starts its clock
        stack.start_beat()  # and its beat, stamping the minutes of `day`
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not client.hexists("optask:heartbeats", "beat"):
            time.sleep(0.2)
        m = measure(settings, worker_timeout_s=0.2)
    finally:
        stack.stop()
    assert m.clock_minute.astimezone(IST).date() == day and m.in_session, m.clock_minute
    eod = {c.name: c for c in evaluate(m, settings)}["eod"]
    assert eod.status == OK, eod


def test_a_session_just_closed_is_given_the_time_its_end_of_day_takes():
    from optask.core.calendar import MarketCalendar
    from optask.ops.health.measure import EOD_GRACE_S, eod_due_day

    calendar = MarketCalendar()
    day = dt.date(2026, 12, 7)
    close = calendar.session(day).close
    before = calendar.previous_trading_day(day)
    assert eod_due_day(calendar, close - dt.timedelta(minutes=5), 1.0) == before  # in session
    assert eod_due_day(calendar, close + dt.timedelta(minutes=5), 1.0) == before  # end of day runs
    assert eod_due_day(calendar, close + dt.timedelta(seconds=EOD_GRACE_S + 60), 1.0) == day  # due
    assert eod_due_day(calendar, close + dt.timedelta(minutes=60), 50.0) == before  # 72 s at 50x: still running


# --- alerts --------------------------------------------------------------------------------------

def bad(reason: str = "last live minute stored 6 min ago") -> list[CheckResult]:
    return [CheckResult("freshness.NIFTY", CRIT, reason, 6.0), CheckResult("system.cpu", OK, "CPU 3%", 3.0)]


def good() -> list[CheckResult]:
    return [CheckResult("freshness.NIFTY", OK, "last live minute stored 0.3 min ago", 0.3)]


def test_one_alert_and_one_resolved_notice_however_many_monitors_check(redis_url, inbox, monkeypatch):
    from optask.ops.alerts import Alerter

    smtp_env(monkeypatch, inbox.port, ALERT_FOR_S="1", ALERT_REPEAT_S="3600")
    settings = load_settings()
    monitors = [Alerter(settings, redis.Redis.from_url(redis_url)) for _ in range(2)]  # two monitors, one state
    for i in range(12):  # the condition holds for ~2.4 s, checked by both monitors in turn
        monitors[i % 2].process(bad(f"last live minute stored {6 + i} min ago"))
        time.sleep(0.2)
    for i in range(6):
        monitors[i % 2].process(good())
    assert inbox.subjects() == [
        "[optask] CRIT freshness.NIFTY: last live minute stored 11 min ago",
        "[optask] RESOLVED freshness.NIFTY: cleared",
    ], inbox.subjects()
    body = inbox.messages[0].get_payload()
    assert "Since:" in body and "IST" in body and "Value:" in body and "optask health --status" in body
    # a single slow check (shorter than ALERT_FOR_S) pages nobody
    monitors[0].process(bad())
    monitors[1].process(good())
    assert len(inbox.messages) == 2


def test_reminders_come_at_a_growing_interval(redis_url, inbox, monkeypatch):
    from optask.ops.alerts import Alerter

    smtp_env(monkeypatch, inbox.port, ALERT_FOR_S="0", ALERT_REPEAT_S="60")
    alerter = Alerter(load_settings(), redis.Redis.from_url(redis_url))
    t0 = time.time()
    sent = []
    for minute in range(0, 8 * 60, 5):  # eight minutes of a condition that holds, checked every 5 s
        sent += [(n.kind, round((n.at - t0) / 60)) for n in alerter.process(bad(), now=t0 + minute)]
    # fire at once, then reminders after 1, then 2, then 4 more minutes
    assert sent == [("firing", 0), ("reminder", 1), ("reminder", 3), ("reminder", 7)], sent


def test_smtp_down_is_logged_shown_and_retried_and_changes_nothing_else(redis_url, monkeypatch):
    from optask.ops.alerts import Alerter

    port = free_port()  # nothing listens here yet
    smtp_env(monkeypatch, port, ALERT_FOR_S="0")
    client = redis.Redis.from_url(redis_url)
    alerter = Alerter(load_settings(), client)
    started = time.monotonic()
    notes = alerter.process(bad())
    assert time.monotonic() - started < 5
    assert [n.kind for n in notes] == ["firing"]  # logged and recorded even though e-mail failed
    state = alerter.delivery_state()
    assert state["email"]["ok"] is False and "Connection refused" in state["email"]["error"]
    assert state["outbox"]["waiting"] == 1
    assert [a["name"] for a in alerter.active()] == ["freshness.NIFTY"]
    box = Inbox(port).start()  # the mail server comes back
    try:
        alerter.process(bad())  # the next run retries the outbox; no second alert
        assert box.subjects() == ["[optask] CRIT freshness.NIFTY: last live minute stored 6 min ago"]
        assert alerter.delivery_state()["email"]["ok"] is True and alerter.delivery_state()["outbox"]["waiting"] == 0
    finally:
        box.stop()


class AuthInbox(Inbox):
    """An SMTP server that wants a login, with STARTTLS (a self-signed certificate) or without it."""

    def __init__(self, tmp_path: Path, starttls: bool):
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        super().__init__()
        self.logins: list[tuple[str, bool]] = []
        self.cert = tmp_path / "smtp.pem"
        key = tmp_path / "smtp.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(self.cert)], check=True, capture_output=True)
        tls = None
        if starttls:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.cert, key)
        inbox = self

        def authenticator(server, session, envelope, mechanism, auth_data):
            inbox.logins.append((auth_data.login.decode(), session.ssl is not None))
            return AuthResult(success=auth_data.password == b"s3cret")

        self.controller = Controller(self.controller.handler, hostname="127.0.0.1", port=self.port, tls_context=tls,
                                     authenticator=authenticator, auth_require_tls=False)


@pytest.mark.parametrize("starttls", [True, False], ids=["starttls", "no-starttls"])
def test_smtp_credentials_go_only_over_tls_unless_plaintext_is_allowed(redis_url, monkeypatch, tmp_path, starttls):
    """Before: with no STARTTLS on offer, the password went in clear. Now that is an alert-delivery error."""
    from optask.ops.alerts import Alerter

    box = AuthInbox(tmp_path, starttls).start()
    try:
        smtp_env(monkeypatch, box.port, ALERT_FOR_S="0", SMTP_USER="ops", SMTP_PASSWORD="s3cret",
                 SMTP_CA_FILE=str(box.cert))
        client = redis.Redis.from_url(redis_url)
        client.delete("optask:alerts:outbox")
        alerter = Alerter(load_settings(), client)
        alerter.process(bad("starttls" if starttls else "no starttls"))
        state = alerter.delivery_state()
        if starttls:
            assert box.logins == [("ops", True)] and len(box.messages) == 1 and state["email"]["ok"] is True
            return
        assert box.logins == [] and box.messages == []  # the password never left
        assert state["email"]["ok"] is False and "SMTP_ALLOW_PLAINTEXT" in state["email"]["error"]
        monkeypatch.setenv("SMTP_ALLOW_PLAINTEXT", "true")
        get_settings.cache_clear()
        assert Alerter(load_settings(), client).retry_outbox() == 1  # the operator allowed it: sent, in clear
        assert box.logins == [("ops", False)] and len(box.messages) == 1
    finally:
        box.stop()


def test_health_status_shows_the_refused_plaintext_login(redis_url, monkeypatch, tmp_path):
    box = AuthInbox(tmp_path, starttls=False).start()
    try:
        smtp_env(monkeypatch, box.port, ALERT_FOR_S="0", SMTP_USER="ops", SMTP_PASSWORD="s3cret", REDIS_URL=redis_url)
        from optask.ops.alerts import Alerter

        Alerter(load_settings(), redis.Redis.from_url(redis_url)).process(bad())
        out = optask("health", "--status", REDIS_URL=redis_url, SMTP_SERVER="127.0.0.1", SMTP_PORT=str(box.port),
                     ALERT_RECIPIENTS="ops@example.com", SMTP_USER="ops", SMTP_PASSWORD="s3cret")
        assert "alert delivery by email failing" in out.stdout and "SMTP_ALLOW_PLAINTEXT" in out.stdout, out.stdout
        assert "s3cret" not in out.stdout + out.stderr
    finally:
        box.stop()


# --- `optask health --check` for cron ------------------------------------------------------------

def optask(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optask.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_check_with_nothing_running_says_what_is_down(isolated_settings):
    proc = optask("health", "--check")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CRIT redis.reachable" in proc.stdout and "is `optask up` running?" in proc.stdout
    assert "Traceback" not in proc.stderr
    same = subprocess.run([sys.executable, "-m", "optask.health", "--check"], capture_output=True, text=True, timeout=60)
    assert same.returncode == 2 and "CRIT redis.reachable" in same.stdout


def test_check_exit_codes_follow_the_worst_check(isolated_settings, redis_url):
    from optask.ops.stack import Stack

    quiet = {"CPU_WARN_PCT": "100", "CPU_CRIT_PCT": "100", "MEMORY_WARN_PCT": "100", "MEMORY_CRIT_PCT": "100",
             "OPTASK_INDICES": "NIFTY", "DISK_WARN_FREE_GB": "0", "DISK_CRIT_FREE_GB": "0"}
    proc = optask("health", "--check", **quiet)
    assert proc.returncode == 2 and "no Celery worker answered" in proc.stdout, proc.stdout
    stack = Stack(load_settings(), redis_url, isolated_settings, extra_env=quiet)
    try:
        stack.start_worker(concurrency=1)
        stack.start_beat()
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not client.hexists("optask:heartbeats", "beat"):
            time.sleep(0.2)
        # as `optask up` does: the current minute now, not at beat's next boundary (during market hours the
        # freshness check is CRIT until a minute of this session is stored)
        from optask.infra.celery_client import celery_client
        from optask.infra.session_clock import current_minute_iso

        celery_client(load_settings(), redis_url).send_task("tasks.collect_minute", args=(current_minute_iso(),),
                                                             queue="optask", expires=55)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc = optask("health", "--check", **quiet)
            if proc.returncode == 0:
                break
        assert proc.returncode == 0, proc.stdout
        assert proc.stdout.strip().endswith("health OK")
        warn = optask("health", "--check", **{**quiet, "DISK_WARN_FREE_GB": "100000"})
        assert warn.returncode == 1 and "WARN system.disk" in warn.stdout, warn.stdout
        status = optask("health", "--status", **quiet)
        assert "workers.process.NIFTY" in status.stdout and "beat" in status.stdout
    finally:
        stack.stop()


# --- Prometheus --------------------------------------------------------------------------------

def test_promtool_accepts_the_shipped_rules_and_config():
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool missing: `apt-get install prometheus` (make test-servers does)")
    rules = subprocess.run([promtool, "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")],
                           capture_output=True, text=True)
    assert rules.returncode == 0 and "SUCCESS" in rules.stdout, rules.stdout + rules.stderr
    config = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=ROOT / "deploy/prometheus",
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr


def _query(url: str, expr: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_a_real_prometheus_scrapes_optask_and_flower(isolated_settings, redis_url, tmp_path, monkeypatch):
    import yaml

    from optask.infra.ledger import Ledger
    from optask.ops.stack import Stack

    exe = shutil.which("prometheus")
    need(exe is not None, "prometheus missing: `apt-get install prometheus` (make test-servers does)")
    metrics_port, flower_port, prom_port = free_port(), free_port(), free_port()
    env = {"METRICS_PORT": str(metrics_port), "FLOWER_PORT": str(flower_port), "OPTASK_INDICES": "NIFTY"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    Ledger(redis.Redis.from_url(redis_url)).mark_stored("NIFTY", "2026-11-23T03:45:00+00:00", legs=42, stages_ms={})
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    config["scrape_configs"][1]["static_configs"] = [{"targets": [f"127.0.0.1:{flower_port}"]}]
    config["rule_files"] = [str(ROOT / "deploy/prometheus/alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    stack = Stack(load_settings(), redis_url, isolated_settings, extra_env=env)
    prom = None
    try:
        stack.start_metrics()
        stack.start_flower("ops:pw")
        prom = subprocess.Popen([exe, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{prom_port}"
        deadline = time.monotonic() + 60
        ours = flowers = []
        while time.monotonic() < deadline:
            try:
                ours = _query(url, 'optask_minutes_stored_total{index="NIFTY"}')
                flowers = _query(url, 'process_cpu_seconds_total{job="flower"}')  # from Flower's own /metrics
            except OSError:
                pass
            if ours and flowers:
                break
            time.sleep(0.5)
        assert ours and float(ours[0]["value"][1]) == 1.0, ours
        assert flowers and float(flowers[0]["value"][1]) > 0, "Prometheus did not scrape Flower"
        assert _query(url, 'up{job="optask"} == 1') and _query(url, 'up{job="flower"} == 1')
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(10)
        stack.stop()
