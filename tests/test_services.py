"""Redis that is always there: the bundled server, reused, persistent; a configured one never replaced."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import psutil
import pytest
import redis
from conftest import need

from optask.core.config import load_settings
from optask.infra.procutil import free_port
from optask.infra.redis_server import (
    RedisServer,
    RedisUnavailable,
    bundled_redis_url,
    ensure_redis,
    redis_server_binary,
)


def optask(*args, env=None):
    return subprocess.run([sys.executable, "-m", "optask.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_bundled_redis_start_reuse_stop_and_aof(isolated_settings):
    root = isolated_settings
    try:
        first = optask("redis", "start")
        assert first.returncode == 0 and "started" in first.stdout, first.stderr
        url = bundled_redis_url(root)
        assert url and url.startswith("redis://:") and "@127.0.0.1:" in url
        assert redis.Redis.from_url(url).config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        again = optask("redis", "start")
        assert "already running" in again.stdout and bundled_redis_url(root) == url
        redis.Redis.from_url(url).set("optask:test:key", "kept")
        assert optask("redis", "stop").returncode == 0
        assert bundled_redis_url(root) is None
        assert optask("redis", "status").returncode == 1
        assert optask("redis", "start").returncode == 0
        url2 = bundled_redis_url(root)
        assert redis.Redis.from_url(url2).get("optask:test:key") == b"kept"
        assert (root / "redis").is_dir()
    finally:
        optask("redis", "stop")


def test_ensure_redis_uses_configured(redis_url):
    assert ensure_redis(load_settings()) == redis_url


def test_configured_but_unreachable_is_an_error(monkeypatch, isolated_settings):
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(free_port()))
    with pytest.raises(RedisUnavailable, match="cannot be reached"):
        ensure_redis(load_settings())
    assert bundled_redis_url(isolated_settings) is None  # never silently replaced
    proc = optask("redis", "start")
    assert proc.returncode == 1 and "cannot be reached" in proc.stderr


# --- nobody in: the bundled server's password, file modes, an open configured server refused -------

def test_the_bundled_redis_refuses_a_client_without_its_password(isolated_settings):
    """Before: no password, and its port in server.json: anyone on the host read the Kite token."""
    import stat
    import urllib.parse

    import psutil

    root = isolated_settings
    try:
        assert optask("redis", "start").returncode == 0
        url = bundled_redis_url(root)
        port = urllib.parse.urlsplit(url).port
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).get("optask:kite:access_token:x")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="guess", socket_timeout=2).ping()
        assert redis.Redis.from_url(url).ping()
        folder = root / "redis"
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
        assert mode(folder) == 0o700  # the AOF, the password and the config inside are the owner's only
        assert mode(folder / "password") == 0o600 and mode(folder / "redis.conf") == 0o600
        password = (folder / "password").read_text().strip()
        assert len(password) >= 32
        assert password not in (folder / "server.json").read_text()
        servers = [p for p in psutil.process_iter(["cmdline"]) if str(port) in " ".join(p.info["cmdline"] or [])]
        assert servers and all(password not in " ".join(p.info["cmdline"]) for p in servers)  # not in `ps`
    finally:
        optask("redis", "stop")


def test_every_optask_process_finds_the_password_as_it_finds_the_port(isolated_settings):
    try:
        assert optask("redis", "start").returncode == 0
        status = optask("redis", "status")
        assert status.returncode == 0, status.stderr
        password = (isolated_settings / "redis" / "password").read_text().strip()
        assert password not in status.stdout + status.stderr  # shown masked
        again = optask("redis", "start")  # restarted on the same data: the same password
        assert "already running" in again.stdout
    finally:
        optask("redis", "stop")
    assert optask("redis", "start").returncode == 0
    try:
        assert (isolated_settings / "redis" / "password").read_text().strip() == password
        assert redis.Redis.from_url(bundled_redis_url(isolated_settings)).ping()
    finally:
        optask("redis", "stop")


def test_a_network_redis_without_a_password_is_refused_at_start(monkeypatch):
    from optask.core.config import SettingsError

    monkeypatch.setenv("REDIS_URL", "redis://10.20.30.40:6379/0")
    with pytest.raises(SettingsError, match="REDIS_ALLOW_NO_AUTH"):
        load_settings()
    proc = optask("config", env={"REDIS_URL": "redis://10.20.30.40:6379/0"})
    assert proc.returncode == 2 and "without a password" in proc.stderr, proc
    monkeypatch.setenv("REDIS_URL", "redis://:pw@10.20.30.40:6379/0")
    assert load_settings().redis.url  # with a password: fine
    monkeypatch.setenv("REDIS_URL", "redis://10.20.30.40:6379/0")
    monkeypatch.setenv("REDIS_ALLOW_NO_AUTH", "true")
    assert load_settings().redis.allow_no_auth  # told to: accepted


def test_a_configured_redis_listening_beyond_loopback_without_a_password_is_refused(tmp_path, monkeypatch):
    port = free_port()
    server = subprocess.Popen([redis_server_binary(), "--bind", "0.0.0.0", "--port", str(port), "--save", "",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        from optask.infra.redis_server import wait_for_redis

        wait_for_redis(f"redis://127.0.0.1:{port}/0")
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        with pytest.raises(RedisUnavailable, match="no password and listens beyond this host"):
            ensure_redis(load_settings())
        monkeypatch.setenv("REDIS_ALLOW_NO_AUTH", "true")
        assert ensure_redis(load_settings()) == f"redis://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait()


def test_the_test_redis_itself_has_a_password(redis_server):
    assert isinstance(redis_server, RedisServer) and ":" in redis_server.url.split("@")[0].removeprefix("redis://")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=2).ping()


# --- one bundled server per data root, on the machine that runs it; its files are its owner's only -----

def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private_files(folder) -> dict[str, str]:
    """Entries of the bundled server's folder that are not the owner's only (files 0600, folders 0700)."""
    return {str(p.relative_to(folder)): oct(mode_of(p)) for p in folder.rglob("*")
            if mode_of(p) != (0o700 if p.is_dir() else 0o600)}


def test_the_bundled_servers_files_are_created_its_owners_only(isolated_settings):
    """Before: the AOF, the log, the pid file and server.json were created 0644 (the user's umask), readable by
    anyone who could reach the folder (a copy, a sync, a chmod) although the AOF holds the Kite token."""
    from optask.infra.redis_server import redis_for_command

    root = isolated_settings
    folder = root / "redis"
    try:
        assert optask("redis", "start").returncode == 0
        redis.Redis.from_url(bundled_redis_url(root)).set("optask:test:key", "kept")  # into the AOF
        names = {p.name for p in folder.rglob("*")}
        assert {"redis.log", "redis.pid", "server.json", "password", "redis.conf"} <= names, names
        assert any(n.startswith("appendonly") for n in names), names
        assert private_files(folder) == {}
    finally:
        optask("redis", "stop")
    with redis_for_command(load_settings()) as url:  # a one-shot command's private server on the same folder
        assert redis.Redis.from_url(url).get("optask:test:key") == b"kept"
        assert (folder / "server.json").exists() and private_files(folder) == {}


def on_another_machine(*args: str) -> subprocess.CompletedProcess:
    """`optask ARGS` as a second machine that mounts the same data root runs it: a hostname and a network of its own
    (its own 127.0.0.1), through Linux namespaces, as `make chaos-distributed` makes its nodes."""
    script = f"hostname node-b && ip link set lo up && exec {sys.executable} -m optask.cli {' '.join(args)}"
    return subprocess.run(["unshare", "--map-root-user", "--uts", "--net", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60)


def test_a_second_machine_on_a_shared_data_root_never_starts_a_second_bundled_redis(isolated_settings):
    """Before: a command on another machine without REDIS_URL read the first machine's server.json, could not reach
    its 127.0.0.1, and started a second redis-server on the same AOF folder (split brain, a corrupt AOF)."""
    root = isolated_settings
    folder = root / "redis"
    can = shutil.which("unshare") and shutil.which("ip") and subprocess.run(
        ["unshare", "--map-root-user", "--uts", "--net", "true"], capture_output=True).returncode == 0
    need(bool(can), "cannot make a UTS and network namespace here (unshare, ip, user namespaces) to act as a second machine")

    def servers_on_the_folder() -> list[psutil.Process]:  # redis-server works in its --dir (and renames its title)
        return [p for p in psutil.process_iter(["name", "cwd"]) if (p.info["name"] or "").startswith("redis-server")
                and p.info["cwd"] == str(folder)]

    try:
        first = on_another_machine("redis", "start")
        assert first.returncode == 0 and "started" in first.stdout, first.stdout + first.stderr
        record = (folder / "server.json").read_text()
        theirs = servers_on_the_folder()
        assert len(theirs) == 1
        for args in (["redis", "start"], ["redis", "status"], ["redis", "stop"], ["up"],
                     ["backfill", "--index", "NIFTY", "--from", "2026-12-07", "--to", "2026-12-07"]):
            proc = optask(*args, env={"FLOWER_PORT": str(free_port()), "METRICS_PORT": str(free_port()),
                                      "API_PORT": str(free_port())})
            errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            assert proc.returncode == 2 and len(errors) == 1, (args, proc.stdout, proc.stderr)
            assert "node-b" in errors[0] and "REDIS_URL" in errors[0] and "Traceback" not in proc.stderr, errors
        check = optask("health", "--check")
        assert check.returncode == 2 and "CRIT redis.reachable" in check.stdout and "node-b" in check.stdout, check.stdout
        assert servers_on_the_folder() == theirs  # no second server on that AOF, theirs untouched
        assert (folder / "server.json").read_text() == record  # and its record left where it is
        assert json.loads(record)["host"] == "node-b"  # the host that runs it, which every other host compares
    finally:
        for proc in servers_on_the_folder():
            proc.terminate()
        psutil.wait_procs(servers_on_the_folder(), timeout=10)
