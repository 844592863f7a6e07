"""Redis that is always there: the bundled server, reused, persistent; a configured one never replaced."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from optask.core.config import load_settings
from optask.infra.procutil import free_port
from optask.infra.redis_server import RedisUnavailable, bundled_redis_url, ensure_redis


def optask(*args, env=None):
    return subprocess.run([sys.executable, "-m", "optask.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_bundled_redis_start_reuse_stop_and_aof(isolated_settings):
    root = isolated_settings
    try:
        first = optask("redis", "start")
        assert first.returncode == 0 and "started" in first.stdout, first.stderr
        url = bundled_redis_url(root)
        assert url and url.startswith("redis://127.0.0.1:")
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
