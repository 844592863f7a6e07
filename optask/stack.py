"""Run the whole stack on one machine: Redis, a Celery worker, beat and Flower, as child processes.

Used by `optask up` (live or simulated session, until Ctrl-C) and `optask demo` (an
accelerated simulated session through the real broker and worker). Children get the Redis
URL and data root explicitly, so every process uses the same server and files.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from optask.config import Settings

CELERY = [sys.executable, "-m", "celery", "-A", "tasks"]


@dataclass
class Stack:
    """Child processes sharing one Redis and one data root; stopped in reverse order, gracefully."""

    settings: Settings
    redis_url: str
    data_root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, **more: str) -> dict[str, str]:
        env = {**os.environ, "REDIS_URL": self.redis_url, "BASE_DATA_DIR": str(self.data_root), **self.extra_env}
        env.pop("FLOWER_BASIC_AUTH", None)  # only Flower gets the credentials (via `more`)
        env.update(more)
        return env

    def _spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        log_dir = self.log_dir or (self.data_root / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen(args, env=self.env(**env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

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

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM in reverse start order: beat stops ticking first; the worker finishes running tasks (warm shutdown)."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()


def celery_client(settings: Settings, redis_url: str):
    """A Celery app that only sends tasks by name, with optask's serializer and routing."""
    from celery import Celery

    from tasks.celeryconfig import celery_config

    client = Celery("optask-client")
    client.conf.update(celery_config(settings, redis_url))
    return client


def wait_for_workers(client, count: int = 1, timeout: float = 60.0) -> list[str]:
    """Block until `count` workers answer a ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = client.control.ping(timeout=0.5) or []
        if len(replies) >= count:
            return [next(iter(r)) for r in replies]
    raise TimeoutError(f"no Celery worker answered within {timeout:.0f}s; see the worker log under data/logs")


def run_up(settings: Settings, console, stop_after_minutes: int | None = None) -> None:
    """`optask up`: the whole stack in one command until Ctrl-C, with a live line per stored minute."""
    import redis

    from optask.calendar import get_calendar
    from optask.clock import current_minute_iso
    from optask.config import mask_url
    from optask.demo import latest_session_day
    from optask.ledger import Ledger
    from optask.services import bundled_redis_url, ensure_redis, stop_bundled_redis
    from optask.timeutils import IST, now_utc, parse_ts

    root = settings.data.root
    had_bundled = settings.redis.configured or bundled_redis_url(root) is not None
    url = ensure_redis(settings)
    extra: dict[str, str] = {}
    calendar = get_calendar(settings.data.calendar_overrides)
    simulated_day = settings.market.simulated_session_day
    if settings.market.provider == "simulated" and simulated_day is None and not calendar.in_session(now_utc()):
        simulated_day = latest_session_day(settings)
        extra["OPTASK_SIMULATED_SESSION_DAY"] = simulated_day.isoformat()
        console.print(f"[yellow]Market closed now: simulating the session of {simulated_day} from its open, "
                      "one minute per minute (simulated data, not live).[/yellow]")
    stack = Stack(settings, url, root, extra_env=extra)
    ledger = Ledger(redis.Redis.from_url(url))
    try:
        stack.start_worker()
        stack.start_beat()
        _, auth = stack.start_flower()
        user, _, password = auth.partition(":")
        mon = settings.monitoring
        console.print(f"Flower:  http://{mon.flower_address}:{mon.flower_port}  user [bold]{user}[/bold]"
                      + ("" if mon.flower_basic_auth.get_secret_value() else f"  password [bold]{password}[/bold] (generated)"))
        console.print(f"Data:    {root}   Redis: {mask_url(url)}   logs: {root / 'logs'}")
        client = celery_client(settings, url)
        wait_for_workers(client)
        # Don't make a newcomer wait for the next minute boundary: collect the current minute now
        # (in a simulated session, beat's clock starts at the open as the stack starts).
        first = calendar.session_minutes(simulated_day)[0].isoformat() if simulated_day else current_minute_iso()
        client.send_task("tasks.collect_minute", args=(first,), queue="optask", expires=55)
        console.print("Running. Ctrl-C stops everything cleanly.")
        pending: dict[str, dict] = {}
        last_id = "$"
        printed = 0
        n_indices = len(settings.market.indices)
        while True:
            for event_id, ev in ledger.events(last_id, block_ms=1000):
                last_id = event_id
                p = pending.setdefault(ev["ts"], {"indices": 0, "legs": 0, "last": 0.0})
                p["indices"] += 1
                p["legs"] += int(ev["legs"])
                p["last"] = max(p["last"], float(ev["stored_at"]))
            for ts in sorted(pending):
                p = pending[ts]
                if p["indices"] >= n_indices or time.time() - p["last"] > 30:
                    dispatched = ledger.claimed_at("collect_minute", ts)
                    latency = f"{p['last'] - dispatched:.2f}s" if dispatched else "-"
                    local = parse_ts(ts).astimezone(IST).strftime("%Y-%m-%d %H:%M IST")
                    console.print(f"{local}  {p['indices']}/{n_indices} indices  {p['legs']:,} legs  tick->stored {latency}")
                    del pending[ts]
                    printed += 1
            dead = [name for name, ok in stack.alive().items() if not ok]
            if dead:
                console.print(f"[red]{', '.join(dead)} exited; see {root / 'logs'}. Stopping.[/red]")
                break
            if stop_after_minutes and printed >= stop_after_minutes:
                break
    except KeyboardInterrupt:
        console.print("Stopping: beat, Flower, then the worker after its running tasks ...")
    finally:
        stack.stop()
        if not had_bundled:
            stop_bundled_redis(root)
        console.print("Stopped.")
