"""The stack's children on one machine: Redis, Celery workers, beat, Flower, the monitor, the metrics
exporter and the ticker, each started as a process of its own and stopped in order, gracefully.

`optask up` (`optask.ops.supervisor`) supervises them; `optask demo` and the tests use `Stack` for the same
children without the supervisor loop.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from optask.core.config import Settings
from optask.infra.procutil import die_with_parent
from optask.infra.redis_server import redis_server_args, server_preexec

CELERY = [sys.executable, "-m", "celery", "-A", "tasks"]
#: Stop order, by name prefix: nothing new is scheduled, nobody watches, running tasks finish, then the broker goes.
STOP_ORDER = ("beat", "flower", "api", "metrics", "monitor", "ticker", "worker", "redis")
#: Seconds each stage may take before its process group is killed.
STOP_TIMEOUT_S = {"beat": 10.0, "flower": 10.0, "api": 10.0, "metrics": 5.0, "monitor": 10.0, "ticker": 10.0, "worker": 90.0,
                  "redis": 15.0}

#: The worker's stop when the bundled Redis is already dead: its tasks cannot be acknowledged (acks_late
#: redelivers them) and every store's commit is atomic, so there is nothing to wait for.
BROKERLESS_STOP_S = 10.0


def rotate_log(path: Path, max_bytes: int, backups: int) -> bool:
    """`name.log` over `max_bytes` becomes `name.log.1` (older ones shift up to `name.log.{backups}`, the oldest
    dropped) and starts again empty. The child keeps writing to the file it opened: it appends (O_APPEND), so
    after the truncation its lines land at the new end. Copy, then truncate (logrotate's copytruncate): a line
    written in the microseconds between the copy's last read and the truncation is lost (a log, never data)."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    tmp = path.with_name(f".{path.name}.1.tmp")
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        with open(tmp, "wb") as dst:
            at = 0
            while chunk := os.pread(fd, 1 << 20, at):  # to the end, including what arrives during the copy
                dst.write(chunk)
                at += len(chunk)
            os.ftruncate(fd, 0)
        os.replace(tmp, path.with_name(f"{path.name}.1"))
    finally:
        os.close(fd)
    return True


class ChildFailed(RuntimeError):
    """A child could not start or died for good; the message is one line for the operator."""


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
    def loglevel(self) -> str:
        return "DEBUG" if self.settings.service.debug else "INFO"

    @property
    def logs(self) -> Path:
        return self.log_dir or (self.data_root / "logs")

    def env(self, **more: str) -> dict[str, str]:
        env = {**os.environ, "REDIS_URL": self.redis_url, "BASE_DATA_DIR": str(self.data_root), **self.extra_env}
        env.pop("FLOWER_BASIC_AUTH", None)  # only Flower gets the credentials (via `more`)
        env.update(more)
        return env

    def _spawn(self, name: str, args: list[str], private: bool = False, **env: str) -> subprocess.Popen:
        """`private`: the bundled Redis, whose log (0600) and files (umask 077) are its owner's only."""
        self.logs.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600 if private else 0o644)
        with os.fdopen(fd, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
            log.flush()
            # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops children in order.
            proc = subprocess.Popen(args, env=self.env(**env), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=server_preexec() if private else die_with_parent())
        self.procs[name] = proc
        self.specs[name] = (args, env, private)
        return proc

    def rotate_logs(self) -> list[str]:
        """Rotate every child's log over LOG_MAX_MB (see `rotate_log`); the names of those rotated."""
        svc = self.settings.service
        if not self.logs.is_dir():
            return []
        return [p.name for p in sorted(self.logs.glob("*.log"))
                if rotate_log(p, int(svc.log_max_mb * 1024 * 1024), svc.log_backups)]

    def restart(self, name: str) -> subprocess.Popen:
        args, env, private = self.specs[name]
        return self._spawn(name, args, private, **env)

    def start_redis(self, port: int, name: str = "redis") -> subprocess.Popen:
        """The bundled redis-server as a child on `port` (AOF under the data root), not a daemon."""
        directory = self.data_root / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        return self._spawn(name, redis_server_args(directory, port, daemonize=False, log_to_stdout=True), private=True)

    def start_worker(self, name: str = "worker", concurrency: int | None = None, queues: list[str] | None = None,
                     **env: str) -> subprocess.Popen:
        args = [*CELERY, "worker", f"--loglevel={self.loglevel}", f"--concurrency={concurrency or self.settings.service.processing_max_workers}",
                f"--hostname={name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
        if queues:
            args.append(f"--queues={','.join(queues)}")
        return self._spawn(name, args, **env)

    def start_beat(self, name: str = "beat", **env: str) -> subprocess.Popen:
        schedule = self.data_root / f"celery{name}-schedule"
        return self._spawn(name, [*CELERY, "beat", f"--loglevel={self.loglevel}", f"--schedule={schedule}"], **env)

    def start_flower(self, auth: str | None = None) -> tuple[subprocess.Popen, str]:
        """Flower on 127.0.0.1 (or FLOWER_ADDRESS) behind basic auth; a password is generated when none is set."""
        mon = self.settings.monitoring
        auth = auth or mon.flower_basic_auth.get_secret_value() or f"optask:{secrets.token_urlsafe(12)}"
        args = [*CELERY, "flower", f"--address={mon.flower_address}", f"--port={mon.flower_port}"]
        # The credentials travel in the environment (Flower reads FLOWER_BASIC_AUTH), not on the command line.
        return self._spawn("flower", args, FLOWER_BASIC_AUTH=auth), auth

    def start_api(self) -> subprocess.Popen:
        """The HTTP read side (`optask serve`) on API_HOST:API_PORT."""
        return self._spawn("api", [sys.executable, "-m", "optask.cli", "serve"])

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
        broker_gone = "redis" in self.procs and self.procs["redis"].poll() is not None
        for stage in sorted({_stage(n) for n in self.procs}):
            names = [n for n in self.procs if _stage(n) == stage]
            limit = timeout if timeout is not None else STOP_TIMEOUT_S.get(STOP_ORDER[stage] if stage < len(STOP_ORDER) else "", 30.0)
            if broker_gone and STOP_ORDER[stage:stage + 1] == ("worker",):
                limit = min(limit, BROKERLESS_STOP_S)  # no task can finish without Redis: a warm shutdown only hangs
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


def describe_exit(stack: Stack, name: str, status: int) -> str:
    """`flower exited (status 1): OSError: [Errno 98] Address already in use; see data/logs/flower.log`."""
    how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"status {status}"
    last = stack.last_log_line(name)
    hint = ""
    if name == "flower" and "Address already in use" in last:
        mon = stack.settings.monitoring
        hint = f" port {mon.flower_address}:{mon.flower_port} is in use; set FLOWER_PORT to a free port;"
    return f"{name} exited ({how}):{hint} {last or 'no output'}; see {stack.logs / (name + '.log')}"
