"""Run the whole stack on one machine: Redis, a Celery worker, beat and Flower, as child processes.

`optask up` is a supervisor (DESIGN section 8): it owns its children, stops them in order on
SIGINT, SIGTERM and SIGHUP (beat, Flower, the worker after its running tasks, then the Redis
it started), makes them die with it even when it is SIGKILLed (PR_SET_PDEATHSIG, see
`optask.services.die_with_parent`), restarts a child that dies within limits, and exits
non-zero with a one-line reason when it stops because something failed. One `up` per data
root: a second one is refused, naming the first one's pid.

`optask demo` and the tests use `Stack` for the same children without the supervisor loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from optask.config import Settings
from optask.services import die_with_parent

CELERY = [sys.executable, "-m", "celery", "-A", "tasks"]
#: Stop order, by name prefix: nothing new is scheduled, nobody watches, running tasks finish, then the broker goes.
STOP_ORDER = ("beat", "flower", "metrics", "monitor", "ticker", "worker", "redis")
#: Seconds each stage may take before its process group is killed.
STOP_TIMEOUT_S = {"beat": 10.0, "flower": 10.0, "metrics": 5.0, "monitor": 10.0, "ticker": 10.0, "worker": 90.0,
                  "redis": 15.0}
#: A restarted child that has run this long is "running again": its alert resolves.
STABLE_AFTER_S = 20.0


class ChildFailed(RuntimeError):
    """A child could not start or died for good; the message is one line for the operator."""


class AlreadyRunning(RuntimeError):
    """Another `optask up` holds this data root."""


class StopRequested(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived. A BaseException, so no `except Exception` can swallow it."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


def _stage(name: str) -> int:
    return next((i for i, prefix in enumerate(STOP_ORDER) if name.startswith(prefix)), len(STOP_ORDER))


@dataclass
class Stack:
    """Child processes sharing one Redis and one data root; stopped in STOP_ORDER, gracefully."""

    settings: Settings
    redis_url: str
    data_root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    specs: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.log_dir or (self.data_root / "logs")

    def env(self, **more: str) -> dict[str, str]:
        env = {**os.environ, "REDIS_URL": self.redis_url, "BASE_DATA_DIR": str(self.data_root), **self.extra_env}
        env.pop("FLOWER_BASIC_AUTH", None)  # only Flower gets the credentials (via `more`)
        env.update(more)
        return env

    def _spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
            log.flush()
            # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops children in order.
            proc = subprocess.Popen(args, env=self.env(**env), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent())
        self.procs[name] = proc
        self.specs[name] = (args, env)
        return proc

    def restart(self, name: str) -> subprocess.Popen:
        args, env = self.specs[name]
        return self._spawn(name, args, **env)

    def start_redis(self, port: int, name: str = "redis") -> subprocess.Popen:
        """The bundled redis-server as a child on `port` (AOF under the data root), not a daemon."""
        from optask.services import redis_server_args

        directory = self.data_root / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        return self._spawn(name, redis_server_args(directory, port, daemonize=False, log_to_stdout=True))

    def start_worker(self, name: str = "worker", concurrency: int | None = None, queues: list[str] | None = None,
                     **env: str) -> subprocess.Popen:
        args = [*CELERY, "worker", "--loglevel=INFO", f"--concurrency={concurrency or self.settings.service.processing_max_workers}",
                f"--hostname={name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
        if queues:
            args.append(f"--queues={','.join(queues)}")
        return self._spawn(name, args, **env)

    def start_beat(self, name: str = "beat", **env: str) -> subprocess.Popen:
        schedule = self.data_root / f"celery{name}-schedule"
        return self._spawn(name, [*CELERY, "beat", "--loglevel=INFO", f"--schedule={schedule}"], **env)

    def start_flower(self, auth: str | None = None) -> tuple[subprocess.Popen, str]:
        """Flower on 127.0.0.1 (or FLOWER_ADDRESS) behind basic auth; a password is generated when none is set."""
        mon = self.settings.monitoring
        auth = auth or mon.flower_basic_auth.get_secret_value() or f"optask:{secrets.token_urlsafe(12)}"
        args = [*CELERY, "flower", f"--address={mon.flower_address}", f"--port={mon.flower_port}"]
        # The credentials travel in the environment (Flower reads FLOWER_BASIC_AUTH), not on the command line.
        return self._spawn("flower", args, FLOWER_BASIC_AUTH=auth), auth

    def start_monitor(self) -> subprocess.Popen:
        """Health checks, alerts and self-healing in a process of their own (`optask health --start`)."""
        return self._spawn("monitor", [sys.executable, "-m", "optask.cli", "health", "--start"])

    def start_metrics(self) -> subprocess.Popen:
        """The Prometheus exporter (`optask metrics`) on METRICS_ADDRESS:METRICS_PORT."""
        return self._spawn("metrics", [sys.executable, "-m", "optask.cli", "metrics"])

    def start_ticker(self) -> subprocess.Popen:
        """The KiteTicker process (`optask ticker`) that cuts each minute from the stream."""
        return self._spawn("ticker", [sys.executable, "-m", "optask.cli", "ticker"])

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def exited(self) -> dict[str, int]:
        """Children that have exited, with their status (negative: killed by that signal)."""
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def last_log_line(self, name: str) -> str:
        """The child's last meaningful log line: usually the reason it stopped."""
        try:
            with open(self.logs / f"{name}.log", "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - 8192))
                lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines()]
        except OSError:
            return ""
        lines = [ln for ln in lines if ln and not ln.startswith(("---", "^", "~"))]
        return lines[-1][:300] if lines else ""

    def stop(self, timeout: float | None = None, force: Callable[[], bool] = lambda: False) -> None:
        """Stop stage by stage in STOP_ORDER: SIGTERM, wait, then SIGKILL the child's whole process group.

        The worker's SIGTERM is Celery's warm shutdown: it finishes running tasks first. `force()`
        turning true (a second signal) skips the waiting.
        """
        for stage in sorted({_stage(n) for n in self.procs}):
            names = [n for n in self.procs if _stage(n) == stage]
            limit = timeout if timeout is not None else STOP_TIMEOUT_S.get(STOP_ORDER[stage] if stage < len(STOP_ORDER) else "", 30.0)
            for n in names:
                if self.procs[n].poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        self.procs[n].send_signal(signal.SIGTERM)
            deadline = time.monotonic() + limit
            while any(self.procs[n].poll() is None for n in names) and time.monotonic() < deadline and not force():
                time.sleep(0.05)
            for n in names:
                proc = self.procs[n]
                # Also reaps what the child left in its group (a Celery pool process, say).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        self.procs.clear()


def celery_client(settings: Settings, redis_url: str):
    """A Celery app that only sends tasks by name, with optask's serializer and routing."""
    from celery import Celery

    from tasks.celeryconfig import celery_config

    client = Celery("optask-client")
    client.conf.update(celery_config(settings, redis_url))
    return client


def wait_for_workers(client, count: int = 1, timeout: float = 60.0,
                     alive: Callable[[], bool] = lambda: True) -> list[str]:
    """Block until `count` workers answer a ping; give up early when `alive()` says the worker died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = client.control.ping(timeout=0.5) or []
        if len(replies) >= count:
            return [next(iter(r)) for r in replies]
        if not alive():
            raise ChildFailed("the worker exited before it answered a ping")
    raise TimeoutError(f"no Celery worker answered within {timeout:.0f}s; see the worker log under data/logs")


# --- the supervisor ------------------------------------------------------------------------------

@contextlib.contextmanager
def up_lock(root: Path) -> Iterator[str | None]:
    """One `optask up` per data root: an flock the kernel drops when its holder dies, however it dies.

    Yields the pid an earlier `up` left in the file when it did not stop cleanly (killed, crashed), else None.
    """
    root.mkdir(parents=True, exist_ok=True)
    path = root / "up.pid"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (PEP 446)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid = os.pread(fd, 32, 0).decode().strip() or "?"
            raise AlreadyRunning(f"optask up is already running on {root} (pid {pid}); stop it with "
                                 f"`kill -TERM {pid}`, or set BASE_DATA_DIR to another folder") from None
        unclean = os.pread(fd, 32, 0).decode().strip() or None  # a clean stop empties the file
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield unclean
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


@dataclass
class RestartPolicy:
    """systemd's StartLimitBurst/StartLimitIntervalSec: at most `attempts` restarts per `window_s`, with backoff."""

    enabled: bool
    attempts: int
    window_s: float
    history: dict[str, list[float]] = field(default_factory=dict)

    def next_delay(self, name: str, now: float) -> float | None:
        """Seconds to wait before restarting `name`, or None when it must not be restarted."""
        recent = [t for t in self.history.get(name, []) if now - t < self.window_s]
        if not self.enabled or len(recent) >= self.attempts:
            return None
        self.history[name] = [*recent, now]
        return min(30.0, 2.0 ** len(recent))

    def used(self, name: str, now: float) -> int:
        return len([t for t in self.history.get(name, []) if now - t < self.window_s])


def _port_in_use(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def _listening(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
        return True
    return False


def describe_exit(stack: Stack, name: str, status: int) -> str:
    """`flower exited (status 1): OSError: [Errno 98] Address already in use; see data/logs/flower.log`."""
    how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"status {status}"
    last = stack.last_log_line(name)
    hint = ""
    if name == "flower" and "Address already in use" in last:
        mon = stack.settings.monitoring
        hint = f" port {mon.flower_address}:{mon.flower_port} is in use; set FLOWER_PORT to a free port;"
    return f"{name} exited ({how}):{hint} {last or 'no output'}; see {stack.logs / (name + '.log')}"


def _handle_signals(state: dict) -> None:
    def handler(signum, frame):
        if state.get("stopping"):
            state["force"] = True  # a second signal: stop now, without waiting
            return
        state["stopping"] = True
        raise StopRequested(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def run_up(settings: Settings, console, err=None, stop_after_minutes: int | None = None) -> int:
    """`optask up`: the whole stack until a signal; returns the exit status (0 stopped cleanly, 2 failed).

    Progress goes to `console`, the one-line reason of a failure to `err` (stderr in the CLI).
    """
    err = err or console
    root = settings.data.root
    try:
        with up_lock(root) as unclean:
            return _supervise(settings, console, err, stop_after_minutes, unclean)
    except AlreadyRunning as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2


def _supervise(settings: Settings, console, err, stop_after_minutes: int | None, unclean: str | None = None) -> int:
    import redis

    from optask.alerts import Alerter
    from optask.backfill import MAINTENANCE_QUEUE
    from optask.calendar import get_calendar
    from optask.clock import current_minute_iso
    from optask.config import mask_url
    from optask.coordination import connect
    from optask.demo import latest_session_day
    from optask.ledger import Ledger
    from optask.services import (
        RedisUnavailable,
        bundled_redis_url,
        ensure_redis,
        forget_bundled_redis,
        free_port,
        record_bundled_redis,
        wait_for_redis,
    )
    from optask.timeutils import IST, now_utc
    from tasks.celeryconfig import FALLBACK_QUEUE, process_queue

    root = settings.data.root
    mon = settings.monitoring
    state: dict = {}
    _handle_signals(state)
    stack: Stack | None = None
    own_redis = False
    status = 0
    try:
        for what, address, port, setting in (("Flower", mon.flower_address, mon.flower_port, "FLOWER_PORT"),
                                             ("Metrics", mon.metrics_address, mon.metrics_port, "METRICS_PORT")):
            if _port_in_use(address, port):
                raise ChildFailed(f"{what} cannot listen on {address}:{port}: the port is in use; "
                                  f"set {setting} to a free port (or stop what listens there)")
        calendar = get_calendar(settings.data.calendar_overrides)
        extra: dict[str, str] = {"HEALTH_IN_BEAT": "false"}  # up's own monitor checks, not a task behind the workers
        simulated_day = settings.market.simulated_session_day
        if settings.market.provider == "simulated" and simulated_day is None and not calendar.in_session(now_utc()):
            simulated_day = latest_session_day(settings)
            extra["OPTASK_SIMULATED_SESSION_DAY"] = simulated_day.isoformat()
            console.print(f"[yellow]Market closed now: simulating the session of {simulated_day} from its open, "
                          "one minute per minute (simulated data, not live).[/yellow]")
        url = settings.redis.effective_url() and ensure_redis(settings)
        url = url or bundled_redis_url(root)
        if not url:  # nothing configured or running: the bundled server, as our child
            port = free_port()
            url = f"redis://127.0.0.1:{port}/0"
            stack = Stack(settings, url, root, extra_env=extra)
            redis_proc = stack.start_redis(port)
            own_redis = True
            try:
                wait_for_redis(url, 15)
            except RedisUnavailable as exc:
                exited = redis_proc.poll() is not None
                raise ChildFailed(describe_exit(stack, "redis", redis_proc.returncode) if exited else str(exc)) from None
            record_bundled_redis(root, url, port, redis_proc.pid)
        stack = stack or Stack(settings, url, root, extra_env=extra)
        redis_note = "bundled, started by up" if own_redis else ("configured" if settings.redis.configured else "bundled, already running")
        ledger = Ledger(connect(url))
        reporter = MinuteReporter(ledger, list(settings.market.indices))
        alerter = SafeAlerter(Alerter(settings, ledger.redis), err)
        # Live minutes and catch-up work (backfill, end of day, repair) on workers of their own,
        # so a long backfill never delays a live minute.
        mine = [i for i in settings.market.indices if i in (settings.service.worker_indices or settings.market.indices)]
        live_queues = ["optask", FALLBACK_QUEUE, *(process_queue(i) for i in mine)]
        workers = {"worker": stack.start_worker(queues=live_queues),
                   "worker-maintenance": stack.start_worker("worker-maintenance", concurrency=1,
                                                            queues=[MAINTENANCE_QUEUE])}
        client = celery_client(settings, url)
        try:
            wait_for_workers(client, count=2, timeout=90, alive=lambda: all(w.poll() is None for w in workers.values()))
        except (ChildFailed, TimeoutError):
            for name, w in workers.items():
                if w.poll() is not None:
                    raise ChildFailed(describe_exit(stack, name, w.returncode)) from None
            raise ChildFailed(f"the workers did not answer within 90 s; see {stack.logs}/worker*.log") from None
        stack.start_beat()
        flower, auth = stack.start_flower()
        deadline = time.monotonic() + 30
        while not _listening(mon.flower_address, mon.flower_port):
            if flower.poll() is not None:
                raise ChildFailed(describe_exit(stack, "flower", flower.returncode))
            if time.monotonic() > deadline:
                raise ChildFailed(f"Flower did not listen on {mon.flower_address}:{mon.flower_port} within 30 s; "
                                  f"see {stack.logs / 'flower.log'}")
            time.sleep(0.1)
        stack.start_metrics()
        stack.start_monitor()
        if settings.market.provider == "kite" and settings.kite.fetch == "ticker":
            stack.start_ticker()
            console.print(f"Ticker:  {settings.kite.ticker_url} (optask ticker; a minute it cannot cut comes over REST)")
        user, _, password = auth.partition(":")
        console.print(f"Flower:  http://{mon.flower_address}:{mon.flower_port}  user [bold]{user}[/bold]"
                      + ("" if mon.flower_basic_auth.get_secret_value() else f"  password [bold]{password}[/bold] (generated)"))
        console.print(f"Metrics: http://{mon.metrics_address}:{mon.metrics_port}/metrics   health: optask health --status")
        console.print(f"Data:    {root}   Redis: {mask_url(url)} ({redis_note})   logs: {stack.logs}")
        # Don't make a newcomer wait for the next minute boundary: collect the current minute now.
        # A simulated session's clock is shared through Redis: it starts at the open, or resumes
        # where it was when this is a restart of a stack that was playing it.
        if simulated_day:
            from optask.clock import start_session_clock

            session_minutes = calendar.session_minutes(simulated_day)
            speed = settings.market.simulated_session_speed
            anchor, resumed = start_session_clock(ledger.redis, simulated_day, speed, len(session_minutes))
            position = int((time.time() - anchor) * speed // 60) % len(session_minutes)
            first = session_minutes[position].isoformat()
            if resumed:
                console.print(f"Resuming the simulated session of {simulated_day} at "
                              f"{session_minutes[position].astimezone(IST):%H:%M} IST")
        else:
            first = current_minute_iso()
        client.send_task("tasks.collect_minute", args=(first,), queue="optask", expires=55)
        console.print(f"Running (pid {os.getpid()}). Ctrl-C, SIGTERM or SIGHUP stops everything cleanly.")
        policy = RestartPolicy(mon.auto_restart_enabled, mon.max_restart_attempts, mon.restart_window_s)
        due: dict[str, float] = {}  # child -> when to restart it
        restarted: dict[str, float] = {}  # child -> when it was restarted (its alert resolves once it is stable)
        for name in stack.procs:  # a new up: whatever an earlier one reported about its children is over
            alerter.resolve(f"supervisor.{name}", f"{name} running (optask up started)")
        if unclean:
            console.print(f"[yellow]the previous optask up (pid {unclean}) did not stop cleanly; its children died "
                          "with it, and this one takes over[/yellow]", highlight=False)
            alerter.fire("supervisor.up", "WARN", f"optask up restarted after an unclean stop of pid {unclean}")
            restarted["up"] = time.monotonic()
        printed = 0
        health_line, health_read = "", 0.0
        while True:
            try:
                lines = reporter.poll(block_ms=1000)
            except (redis.RedisError, OSError):  # Redis restarting: the children's state below says why
                lines = []
                time.sleep(1)
            for line in lines:
                console.print(line, highlight=False)
                printed += 1
            now = time.monotonic()
            for name, code in stack.exited().items():
                if name in due:
                    continue
                delay = policy.next_delay(name, now)
                reason = describe_exit(stack, name, code)
                restarted.pop(name, None)
                if delay is None:
                    tried = policy.used(name, now)
                    message = f"{reason}; not restarted" + (
                        f" (restarted {tried} times within {mon.restart_window_s} s, MAX_RESTART_ATTEMPTS="
                        f"{mon.max_restart_attempts})" if policy.enabled else " (AUTO_RESTART_ENABLED=false)")
                    alerter.fire(f"supervisor.{name}.down", "CRIT", f"optask up stopped: {message}")
                    raise ChildFailed(message)
                console.print(f"[yellow]{reason}; restarting in {delay:.0f} s (restart {policy.used(name, now)} "
                              f"of {mon.max_restart_attempts} within {mon.restart_window_s} s)[/yellow]", highlight=False)
                alerter.fire(f"supervisor.{name}", "WARN", f"{reason}; restarting it", code)
                due[name] = now + delay
            for name, at in list(due.items()):
                if now >= at:
                    stack.restart(name)
                    del due[name]
                    restarted[name] = now
                    console.print(f"{name} restarted", highlight=False)
            for name, at in list(restarted.items()):
                if now - at >= STABLE_AFTER_S and (name == "up" or stack.procs[name].poll() is None):
                    del restarted[name]
                    alerter.resolve(f"supervisor.{name}", f"{name} running again for {STABLE_AFTER_S:.0f} s")
            if time.monotonic() - health_read > 5:  # one line whenever the health summary changes
                health_read = time.monotonic()
                key, line = _health_summary(ledger.redis)
                if key and key != health_line:
                    console.print(line, highlight=False)
                    health_line = key
            if stop_after_minutes and printed >= stop_after_minutes:
                break
    except StopRequested as exc:
        console.print(f"{exc.signame}: stopping beat, Flower, then the worker after its running tasks, then Redis ...")
    except ChildFailed as exc:
        state["stopping"] = True
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        status = 2
    finally:
        state["stopping"] = True
        if stack is not None:
            stack.stop(force=lambda: state.get("force", False))
        if own_redis:
            forget_bundled_redis(root)
    console.print("Stopped." if status == 0 else "Stopped after a failure.")
    return status


@dataclass
class SafeAlerter:
    """The supervisor's alerter: a failure to alert is reported, and never stops the supervisor."""

    alerter: object
    err: object

    def __getattr__(self, name: str):
        method = getattr(self.alerter, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - supervising matters more than telling
                self.err.print(f"[yellow]could not send alert ({type(exc).__name__}: {exc})[/yellow]", highlight=False)
                return []

        return call


def _health_summary(client) -> tuple[str, str]:
    """The last health run as (what changed, one line): the line is printed when the statuses change,
    not when a measured value moves."""
    import redis

    from optask.health import CheckResult, HealthReport, last_report

    try:
        report = last_report(client)
    except (redis.RedisError, OSError):
        return "", ""
    if not report:
        return "", ""
    checks = [CheckResult(**c) for c in report["checks"]]
    key = report["status"] + "|" + ",".join(sorted(f"{c.name}={c.status}" for c in checks if c.status != "OK"))
    return key, HealthReport(report["at"], report["status"], checks).summary()


@dataclass
class MinuteReporter:
    """One line per collected minute, printed once every index is stored or its deadline passed.

    Counts come from the ledger (what is stored), not from counting events, so a minute that
    completed is never shown partial; a minute shown partial that completes later gets a line saying so.
    """

    ledger: object
    indices: list[str]
    deadline_s: float = 0.0
    last_id: str = ""
    pending: dict[str, float] = field(default_factory=dict)
    partial: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)  # printed complete: later events (retries, repairs) are not news

    def __post_init__(self) -> None:
        from tasks.celeryconfig import MINUTE_EXPIRES_S, MINUTE_HARD_LIMIT_S

        self.deadline_s = self.deadline_s or float(MINUTE_EXPIRES_S + MINUTE_HARD_LIMIT_S)
        # Start from the stream's current end, read now, so events of the first minute are not missed.
        self.last_id = self.last_id or self.ledger.last_event_id()

    def poll(self, block_ms: int = 1000) -> list[str]:
        from optask.timeutils import IST, parse_ts

        for event_id, ev in self.ledger.events(self.last_id, block_ms=block_ms):
            self.last_id = event_id
            if ev["ts"] not in self.done:
                self.pending.setdefault(ev["ts"], time.time())
        lines = []
        for ts in sorted(self.pending):
            stored = self.ledger.stored_info(ts, self.indices)
            complete = len(stored) == len(self.indices)
            if not complete and time.time() - self.pending[ts] < self.deadline_s:
                continue
            del self.pending[ts]
            if ts in self.partial and not complete:
                continue
            dispatched = self.ledger.claimed_at("collect_minute", ts)
            last = max(float(v["stored_at"]) for v in stored.values())
            latency = f"{last - dispatched:.2f}s" if dispatched else "-"
            legs = sum(int(v["legs"]) for v in stored.values())
            local = parse_ts(ts).astimezone(IST).strftime("%Y-%m-%d %H:%M IST")
            count = f"{len(stored)}/{len(self.indices)} indices"
            if complete:
                self.done.add(ts)
                if len(self.done) > 5000:  # a day is 375 minutes; keep the set small forever
                    self.done = set(sorted(self.done)[-1000:])
            if complete and ts in self.partial:
                self.partial.discard(ts)
                lines.append(f"{local}  {count}  {legs:,} legs  (completed late)")
            elif complete:
                lines.append(f"{local}  {count}  {legs:,} legs  tick->stored {latency}")
            else:
                self.partial.add(ts)
                missing = ", ".join(i for i in self.indices if i not in stored)
                lines.append(f"{local}  {count}  {legs:,} legs  missing {missing} after {self.deadline_s:.0f} s")
        return lines
