"""Redis that is always there: the bundled server, reused, persistent; a configured one never replaced."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

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
