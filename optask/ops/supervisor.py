"""Run the whole stack on one machine: Redis, a Celery worker, beat and Flower, as child processes.

`optask up` is a supervisor (DESIGN section 8): it owns its children, stops them in order on
SIGINT, SIGTERM and SIGHUP (beat, Flower, the worker after its running tasks, then the Redis
it started), makes them die with it even when it is SIGKILLed (PR_SET_PDEATHSIG, see
`optask.infra.procutil.die_with_parent`), restarts a child that dies within limits, and exits
non-zero with a one-line reason when it stops because something failed. One `up` per data
root: a second one is refused, naming the first one's pid.

`optask demo` and the tests use `Stack` for the same children without the supervisor loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from optask.core.calendar import get_calendar
from optask.core.clock import SessionReplayClock, WallClock
from optask.core.config import Settings, mask_url
from optask.core.timeutils import IST, floor_minute
from optask.infra.celery_client import celery_client
from optask.infra.fsutil import sweep_temp_files
from optask.infra.ledger import Ledger
from optask.infra.queues import (
    DEFAULT_QUEUE,
    FALLBACK_QUEUE,
    MAINTENANCE_QUEUE,
    TICK_EXPIRES_S,
    process_queue,
)
from optask.infra.redis_client import connect
from optask.infra.redis_server import (
    RedisUnavailable,
    bundled_redis_url,
    ensure_redis,
    forget_bundled_redis,
    free_port,
    local_url,
    record_bundled_redis,
    wait_for_redis,
)
from optask.infra.session_clock import current_minute_iso, start_session_clock
from optask.ops.alerts import Alerter
from optask.ops.health import CheckResult, HealthReport, last_report
from optask.ops.reporter import MinuteReporter
from optask.ops.restarts import ChildWatch, RestartPolicy
from optask.ops.stack import ChildFailed, Stack, describe_exit, wait_for_workers

#: up prints health from a report measured after its first stored minute (or after this long, seconds): a
#: stack still starting (beat not ticked yet, nothing stored yet) is not what a person needs to read first.
HEALTH_SETTLE_S = 120


class AlreadyRunning(RuntimeError):
    """Another `optask up` holds this data root."""


class StopRequested(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived. A BaseException, so no `except Exception` can swallow it."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


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
    try:
        with up_lock(settings.data.root) as unclean:
            return Supervisor(settings, console, err, stop_after_minutes, unclean).run()
    except AlreadyRunning as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2


@dataclass
class Supervisor:
    """One `optask up`: start the children in order, print what a person needs, watch and restart them."""

    settings: Settings
    console: object
    err: object
    stop_after_minutes: int | None = None
    unclean: str | None = None
    state: dict = field(default_factory=dict)  # signal state: stopping, force
    stack: Stack | None = None
    own_redis: bool = False
    simulated_day: object = None

    def run(self) -> int:
        status = 0
        _handle_signals(self.state)
        try:
            url = self._start_redis(self._preflight())
            ledger = Ledger(connect(url))
            # Read the stored-minute stream's end now, before any minute is sent, so none is missed.
            reporter = MinuteReporter(ledger, list(self.settings.market.indices))
            alerter = SafeAlerter(Alerter(self.settings, ledger.redis), self.err)
            client = celery_client(self.settings, url)
            auth = self._start_children(client)
            self._announce(auth, url)
            self._first_minute(ledger, client)
            self._watch(ledger, reporter, alerter)
        except StopRequested as exc:
            self.console.print(f"{exc.signame}: stopping beat, Flower, the API, then the worker after its running tasks, "
                               "then Redis ...")
        except ChildFailed as exc:
            self.state["stopping"] = True
            self.err.print(f"[red]error:[/red] {exc}", highlight=False)
            status = 2
        finally:
            self.state["stopping"] = True
            if self.stack is not None:
                self.stack.stop(force=lambda: self.state.get("force", False))
            if self.own_redis:
                forget_bundled_redis(self.settings.data.root)
        self.console.print("Stopped." if status == 0 else "Stopped after a failure.")
        return status

    def _preflight(self) -> dict[str, str]:
        """Stale temp files swept, ports free, and which session to play: the environment every child gets."""
        swept = sweep_temp_files(self.settings.data.root)
        if swept:
            self.console.print(f"Removed {swept} temp file(s) older than an hour, left by writers killed mid-write.")
        mon = self.settings.monitoring
        api = self.settings.api
        ports = [("Flower", mon.flower_address, mon.flower_port, "FLOWER_PORT"),
                 ("Metrics", mon.metrics_address, mon.metrics_port, "METRICS_PORT")]
        ports += [("The API", api.host, api.port, "API_PORT")] if api.enabled else []
        for what, address, port, setting in ports:
            if _port_in_use(address, port):
                raise ChildFailed(f"{what} cannot listen on {address}:{port}: the port is in use; "
                                  f"set {setting} to a free port (or stop what listens there)")
        calendar = get_calendar(self.settings.data.calendar_overrides)
        extra: dict[str, str] = {"HEALTH_IN_BEAT": "false"}  # up's own monitor checks, not a task behind the workers
        self.simulated_day = self.settings.market.simulated_session_day
        now = WallClock().now()
        if self.settings.market.provider == "simulated" and self.simulated_day is None and not calendar.in_session(now):
            self.simulated_day = calendar.last_closed_session(now)
            extra["OPTASK_SIMULATED_SESSION_DAY"] = self.simulated_day.isoformat()
            self.console.print(f"[yellow]Market closed now: simulating the session of {self.simulated_day} from its "
                               "open, one minute per minute (simulated data, not live).[/yellow]")
        return extra

    def _start_redis(self, extra: dict[str, str]) -> str:
        """The configured or running Redis, else the bundled server as our child."""
        root = self.settings.data.root
        url = self.settings.redis.effective_url() and ensure_redis(self.settings)
        url = url or bundled_redis_url(root)
        if url:
            self.stack = Stack(self.settings, url, root, extra_env=extra)
            return url
        port = free_port()
        url = local_url(root / "redis", port)
        self.stack = Stack(self.settings, url, root, extra_env=extra)
        redis_proc = self.stack.start_redis(port)
        self.own_redis = True
        try:
            wait_for_redis(url, 15)
        except RedisUnavailable as exc:
            exited = redis_proc.poll() is not None
            raise ChildFailed(describe_exit(self.stack, "redis", redis_proc.returncode) if exited else str(exc)) from None
        record_bundled_redis(root, url, port, redis_proc.pid)
        return url

    def _start_children(self, client) -> str:
        """Workers (live minutes, and catch-up work on a worker of its own so a long backfill never delays a
        live minute), then beat, Flower, the exporter, the monitor and the ticker. Returns Flower's user:password."""
        stack, settings, mon = self.stack, self.settings, self.settings.monitoring
        mine = [i for i in settings.market.indices if i in (settings.service.worker_indices or settings.market.indices)]
        live_queues = [DEFAULT_QUEUE, FALLBACK_QUEUE, *(process_queue(i) for i in mine)]
        workers = {"worker": stack.start_worker(queues=live_queues),
                   "worker-maintenance": stack.start_worker("worker-maintenance", concurrency=1,
                                                            queues=[MAINTENANCE_QUEUE])}
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
        if settings.api.enabled:
            stack.start_api()
        stack.start_monitor()
        if settings.market.provider == "kite" and settings.kite.fetch == "ticker":
            stack.start_ticker()
            self.console.print(f"Ticker:  {settings.kite.ticker_url} (optask ticker; a minute it cannot cut comes "
                               "over REST)")
        return auth

    def _announce(self, auth: str, url: str) -> None:
        mon = self.settings.monitoring
        redis_note = "bundled, started by up" if self.own_redis else (
            "configured" if self.settings.redis.configured else "bundled, already running")
        user, _, password = auth.partition(":")
        self.console.print(f"Flower:  http://{mon.flower_address}:{mon.flower_port}  user [bold]{user}[/bold]" + (
            "" if mon.flower_basic_auth.get_secret_value() else f"  password [bold]{password}[/bold] (generated)"))
        self.console.print(f"Metrics: http://{mon.metrics_address}:{mon.metrics_port}/metrics   health: optask health --status")
        if self.settings.api.enabled:
            api = self.settings.api
            self.console.print(f"Page:    http://{api.host}:{api.port}/   API: /v1  docs: /docs   "
                               "token: optask api token create NAME")
        self.console.print(f"Data:    {self.settings.data.root}   Redis: {mask_url(url)} ({redis_note})   "
                           f"logs: {self.stack.logs}")

    def _first_minute(self, ledger: Ledger, client) -> None:
        """Don't make a newcomer wait for the next minute boundary: collect the current minute now. A simulated
        session's clock is shared through Redis: it starts at the open, or resumes where it was when this is a
        restart of a stack that was playing it."""
        days = self.settings.market.simulated_session_days
        if self.simulated_day and days > 1:
            speed = self.settings.market.simulated_session_speed
            clock = SessionReplayClock(self.simulated_day, get_calendar(self.settings.data.calendar_overrides), speed,
                                       days=days)
            clock.anchor, resumed = start_session_clock(ledger.redis, self.simulated_day, speed, clock.total_minutes(),
                                                        days=days)
            first = floor_minute(clock.now()).isoformat()
            self.console.print(f"{'Resuming' if resumed else 'Playing'} {days} days from {self.simulated_day} at "
                               f"{speed:g}x, now {clock.now().astimezone(IST):%a %Y-%m-%d %H:%M} IST")
        elif self.simulated_day:
            calendar = get_calendar(self.settings.data.calendar_overrides)
            session_minutes = calendar.session_minutes(self.simulated_day)
            speed = self.settings.market.simulated_session_speed
            anchor, resumed = start_session_clock(ledger.redis, self.simulated_day, speed, len(session_minutes))
            position = int((time.time() - anchor) * speed // 60) % len(session_minutes)
            first = session_minutes[position].isoformat()
            if resumed:
                self.console.print(f"Resuming the simulated session of {self.simulated_day} at "
                                   f"{session_minutes[position].astimezone(IST):%H:%M} IST")
        else:
            first = current_minute_iso()
        client.send_task("tasks.collect_minute", args=(first,), queue=DEFAULT_QUEUE, expires=TICK_EXPIRES_S)
        self.console.print(f"Running (pid {os.getpid()}). Ctrl-C, SIGTERM or SIGHUP stops everything cleanly.")

    def _watch(self, ledger: Ledger, reporter: MinuteReporter, alerter: SafeAlerter) -> None:
        """Print stored minutes and health changes; restart children that die, within limits."""
        mon = self.settings.monitoring
        watch = ChildWatch(self.stack, RestartPolicy(mon.auto_restart_enabled, mon.max_restart_attempts,
                                                      mon.restart_window_s), alerter, self.console)
        for name in self.stack.procs:  # a new up: whatever an earlier one reported about its children is over
            alerter.resolve(f"supervisor.{name}", f"{name} running (optask up started)")
        if self.unclean:
            self.console.print(f"[yellow]the previous optask up (pid {self.unclean}) did not stop cleanly; its "
                               "children died with it, and this one takes over[/yellow]", highlight=False)
            alerter.fire("supervisor.up", "WARN", f"optask up restarted after an unclean stop of pid {self.unclean}")
            watch.restarted["up"] = time.monotonic()
        printed, settled = 0, time.time() + HEALTH_SETTLE_S
        health_line, health_read, rotated = "", 0.0, time.monotonic()
        while True:
            try:
                lines = reporter.poll(block_ms=1000)
            except (redis.RedisError, OSError):  # Redis restarting: the children's state below says why
                lines = []
                time.sleep(1)
            for line in lines:
                self.console.print(line, highlight=False)
                printed += 1
                settled = min(settled, time.time())
            watch.step(time.monotonic())
            if time.monotonic() - health_read > 5:  # one line whenever the health summary changes
                health_read = time.monotonic()
                key, line, at = _health_summary(ledger.redis)
                if key and key != health_line and at >= settled:
                    self.console.print(line, highlight=False)
                    health_line = key
            if time.monotonic() - rotated > 30:
                rotated = time.monotonic()
                self.stack.rotate_logs()
            if self.stop_after_minutes and printed >= self.stop_after_minutes:
                break


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


def _health_summary(client) -> tuple[str, str, float]:
    """The last health run as (what changed, one line, when it was measured): the line is printed when the
    statuses change, not when a measured value moves."""
    try:
        report = last_report(client)
    except (redis.RedisError, OSError):
        return "", "", 0.0
    if not report:
        return "", "", 0.0
    checks = [CheckResult(**c) for c in report["checks"]]
    key = report["status"] + "|" + ",".join(sorted(f"{c.name}={c.status}" for c in checks if c.status != "OK"))
    return key, HealthReport(report["at"], report["status"], checks).summary(), report["at"]
