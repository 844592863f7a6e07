"""`optask up` as people and supervisors run it: Flower behind auth, a line per minute, clean stops on
every signal, children that die with it, honest exit codes, one `up` per data root."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from optask.infra.procutil import free_port


def get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def up_env(**more: str) -> dict[str, str]:
    return {**os.environ, "FLOWER_PORT": str(free_port()), "METRICS_PORT": str(free_port()), "API_PORT": str(free_port()),
            "FLOWER_BASIC_AUTH": "ops:s3cret-pw", "API_ENABLED": "false",  # the API: its own test below
            "OPTASK_INDICES": "NIFTY,SENSEX", "OPTASK_STRIKES_AROUND_ATM": "3", "PROCESSING_MAX_WORKERS": "1", **more}


class Up:
    """An `optask up` subprocess whose output is read line by line."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc = subprocess.Popen([sys.executable, "-m", "optask.cli", "up"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self.lines: list[str] = []

    def read_until(self, predicate, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if predicate(line):
                return line
        raise AssertionError("".join(self.lines))

    def family(self) -> list[psutil.Process]:
        """Every process of the stack: up's children and theirs (Celery's pool, say)."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        rest, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + rest

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def up_factory():
    started: list[tuple[Up, list[psutil.Process]]] = []

    def start(env) -> Up:
        up = Up(env)
        started.append(up)
        return up

    yield start
    for up in started:  # never leave a stack behind, whatever the test did
        kids = []
        try:
            kids = up.family()
        except psutil.Error:
            pass
        up.kill()
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass


def gone_within(procs: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=seconds)
    return alive


def is_minute_line(line: str) -> bool:
    return "indices" in line and "legs" in line


def test_up_runs_the_stack_and_stops_cleanly(isolated_settings, redis_url, up_factory):
    env = up_env(API_ENABLED="true")
    port = env["FLOWER_PORT"]
    up = up_factory(env)
    line = up.read_until(is_minute_line)
    out = "".join(up.lines)
    assert "2/2 indices" in line, out
    assert f"http://127.0.0.1:{port}" in out and "s3cret-pw" not in out
    # Flower: behind auth, tasks and per-index queues visible
    for _ in range(50):
        code, _ = get(f"http://127.0.0.1:{port}/api/workers")
        if code in (401, 200):
            break
        time.sleep(0.2)
    assert code == 401
    workers = {}
    for _ in range(50):
        code, body = get(f"http://127.0.0.1:{port}/api/workers?refresh=1", "ops:s3cret-pw")
        workers = json.loads(body or b"{}") if code == 200 else {}
        if workers and any(w.get("active_queues") for w in workers.values()):
            break
        time.sleep(0.3)
    queues = {q["name"] for w in workers.values() for q in (w.get("active_queues") or [])}
    assert {"process.NIFTY", "process.SENSEX", "optask", "maintenance"} <= queues
    code, body = get(f"http://127.0.0.1:{port}/api/tasks", "ops:s3cret-pw")
    names = {t.get("name") for t in json.loads(body).values()}
    assert "tasks.process_index" in names
    # the API: printed with Flower, behind tokens, serving what the stack stores
    api = f"http://127.0.0.1:{env['API_PORT']}"
    assert f"Page:    {api}/   API: /v1" in out
    for _ in range(100):
        try:
            code, _ = get(f"{api}/v1/indices")
        except urllib.error.URLError:  # still starting
            code = None
        if code == 401:
            break
        time.sleep(0.2)
    assert code == 401, (env["BASE_DATA_DIR"], out)
    made = subprocess.run([sys.executable, "-m", "optask.cli", "api", "token", "create", "up-test"], env=env,
                          capture_output=True, text=True, timeout=60)
    token = made.stdout.strip().splitlines()[-1]
    req = urllib.request.Request(f"{api}/v1/chain/NIFTY?atm_window=1", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        chain = json.loads(resp.read())
    assert chain["index"] == "NIFTY" and len(chain["strikes"]) == 3, chain
    family = up.family()
    up.proc.send_signal(signal.SIGINT)
    code, out = up.finish(90)
    assert code == 0, out
    assert "SIGINT: stopping" in out and "Stopped." in out
    assert not gone_within(family, 10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_stops_every_process_of_the_stack(isolated_settings, up_factory, sig):
    """As systemd, docker and a closed terminal stop it; with the bundled Redis, which up owns."""
    up = up_factory(up_env())
    up.read_until(is_minute_line)
    # the bundled server's files (AOF, pid file, server.json, its log) are its owner's only, as its password is
    owned = [*(isolated_settings / "redis").rglob("*"), isolated_settings / "logs" / "redis.log"]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in owned if p.is_file()}
    assert {"server.json", "redis.pid", "redis.log", "password"} <= set(modes) and set(modes.values()) == {"0o600"}, modes
    family = up.family()
    names = {" ".join(p.cmdline()) for p in family}
    assert any("redis-server" in n for n in names) and any(" worker" in n for n in names)
    assert any(" beat" in n for n in names) and any(" flower" in n for n in names)
    up.proc.send_signal(sig)
    code, out = up.finish(90)
    assert code == 0, out
    assert f"{sig.name}: stopping" in out and "Stopped." in out
    assert not gone_within(family, 5), out
    # the stopped order is visible in the children's own logs: beat ended before the worker's warm shutdown
    logs = isolated_settings / "logs"
    assert "Warm shutdown" in (logs / "worker.log").read_text()
    assert not (isolated_settings / "redis" / "server.json").exists()


def test_sigkill_of_up_takes_every_child_along(isolated_settings, up_factory):
    up = up_factory(up_env())
    up.read_until(is_minute_line)
    family = up.family()
    assert len(family) >= 7  # redis, two workers and their pool processes, beat, flower
    up.proc.kill()
    up.proc.wait(5)
    alive = gone_within(family, 10)
    assert not alive, [p.cmdline() for p in alive]


def test_flower_port_in_use_fails_in_one_line_naming_the_setting(isolated_settings, up_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = up_factory(up_env(FLOWER_PORT=str(port)))
        code, out = up.finish(60)
    assert code == 2, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "FLOWER_PORT" in errors[0], out
    assert "Traceback" not in out


def test_a_second_up_on_the_same_data_root_is_refused_naming_the_first(isolated_settings, redis_url, up_factory):
    first = up_factory(up_env())
    first.read_until(lambda ln: ln.startswith("Running"))
    second = up_factory(up_env())
    code, out = second.finish(30)
    assert code == 2, out
    assert f"already running on {isolated_settings}" in out and f"pid {first.proc.pid}" in out, out
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish(90)[0] == 0


@pytest.mark.parametrize("victim", ["worker", "redis"])
def test_a_child_that_dies_ends_up_with_status_2_when_restarts_are_off(isolated_settings, up_factory, victim):
    up = up_factory(up_env(AUTO_RESTART_ENABLED="false"))
    up.read_until(lambda ln: ln.startswith("Running"))
    family = up.family()
    target = next(p for p in family if (victim == "redis" and "redis-server" in " ".join(p.cmdline()))
                  or (victim == "worker" and "--queues=optask," in " ".join(p.cmdline()) and p.ppid() == up.proc.pid))
    target.kill()
    code, out = up.finish(120)
    assert code == 2, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    assert f"{victim} exited (killed by SIGKILL)" in errors[0] and "AUTO_RESTART_ENABLED=false" in errors[0]
    assert not gone_within(family, 10)


def test_a_dead_child_is_restarted_within_its_limit_then_given_up(isolated_settings, redis_url, up_factory):
    up = up_factory(up_env(MAX_RESTART_ATTEMPTS="1", RESTART_WINDOW_S="600"))
    up.read_until(lambda ln: ln.startswith("Running"))

    def beat() -> psutil.Process:
        return next(p for p in up.family() if " beat" in " ".join(p.cmdline()))

    beat().kill()
    up.read_until(lambda ln: "beat restarted" in ln, timeout=30)
    beat().kill()
    code, out = up.finish(120)
    assert code == 2, out
    assert "beat exited (killed by SIGKILL)" in out and "MAX_RESTART_ATTEMPTS=1" in out, out


def test_minute_line_counts_what_the_ledger_holds(redis_url):
    """Every index stored before the first read still counts; a partial line only after the deadline;
    a late completion says so. (The old reporter printed "1/3 indices" for a minute stored complete.)"""
    import redis as redis_lib

    from optask.infra.ledger import Ledger
    from optask.ops.reporter import MinuteReporter

    ledger = Ledger(redis_lib.Redis.from_url(redis_url))
    indices = ["NIFTY", "BANKNIFTY", "SENSEX"]
    ledger.mark_stored("NIFTY", "2026-11-23T03:44:00+00:00", legs=1, stages_ms={})  # an older minute: not ours
    reporter = MinuteReporter(ledger, indices, deadline_s=1.5)
    first, second = "2026-11-23T03:45:00+00:00", "2026-11-23T03:46:00+00:00"
    ledger.claim("collect_minute", first)
    for index in indices:  # all stored before the reporter's first read
        ledger.mark_stored(index, first, legs=10, stages_ms={})
    lines = reporter.poll(block_ms=100)
    assert len(lines) == 1 and "09:15 IST  3/3 indices  30 legs" in lines[0], lines
    ledger.mark_stored("NIFTY", second, legs=10, stages_ms={})
    ledger.mark_stored("SENSEX", second, legs=10, stages_ms={})
    assert reporter.poll(block_ms=100) == []  # incomplete, deadline not passed: wait
    time.sleep(1.6)
    lines = reporter.poll(block_ms=100)
    assert len(lines) == 1 and "2/3 indices" in lines[0] and "missing BANKNIFTY" in lines[0], lines
    ledger.mark_stored("BANKNIFTY", second, legs=10, stages_ms={})
    lines = reporter.poll(block_ms=100)
    assert len(lines) == 1 and "3/3 indices" in lines[0] and "completed late" in lines[0], lines
    assert reporter.poll(block_ms=100) == []


def test_up_outside_market_hours_is_healthy_within_two_minutes_and_stays_so(isolated_settings, up_factory):
    """Before: `up` outside market hours replays the last closed session, and all through the replay
    `optask health --check` said `WARN eod: <that day> has data but no end-of-day verification`; the first health
    line `up` printed was often `CRIT: system.cpu: CPU 100% used`, the stack busy starting. The day being played
    needs no end of day yet, and a CPU busy with the work alone is no finding."""
    import datetime as dt

    from optask.core.timeutils import IST

    isolated_settings.mkdir(parents=True, exist_ok=True)  # outside market hours whatever the time: today a holiday
    today = dt.datetime.now(IST).date().isoformat()
    (isolated_settings / "calendar_overrides.json").write_text(json.dumps({"holidays": [today]}))
    # Memory and disk judge this machine, not the stack: quiet here. CPU keeps its defaults: it is what is tested.
    env = up_env(HEALTH_CHECK_INTERVAL="10", MEMORY_WARN_PCT="100", MEMORY_CRIT_PCT="100", DISK_WARN_FREE_GB="0",
                 DISK_CRIT_FREE_GB="0")
    started = time.monotonic()
    up = up_factory(env)
    up.read_until(lambda ln: ln.startswith("Running"))
    assert any("Market closed now: simulating the session of" in ln for ln in up.lines), "".join(up.lines)

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "optask.cli", "health", "--check"], env=env, capture_output=True,
                              text=True, timeout=60)

    seen = []
    while time.monotonic() - started < 120:
        seen.append(check())
        if seen[-1].returncode == 0:
            break
        time.sleep(2)
    assert seen[-1].returncode == 0, [p.stdout for p in seen]
    reached = time.monotonic()
    while time.monotonic() - reached < 75:  # through beat's next minutes and several rounds of up's own monitor
        time.sleep(5)
        again = check()
        assert again.returncode == 0, again.stdout
    family = up.family()
    up.proc.send_signal(signal.SIGTERM)
    code, out = up.finish(90)
    assert code == 0, out
    health = [ln for ln in out.splitlines() if ln.startswith("health ")]  # what up prints from its own monitor
    assert health == ["health OK"], out  # from its first line on, once the stack has stored its first minute
    assert not gone_within(family, 10)
