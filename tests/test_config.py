"""Settings: names of the seed platform, grouped access, one-line errors, secrets masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optask.core.config import SettingsError, get_settings, load_settings

OPTASK = [sys.executable, "-m", "optask.cli"]


def run_optask(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*OPTASK, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=60)


def test_groups_and_seed_names(monkeypatch):
    monkeypatch.setenv("PROCESSING_BATCH_SIZE", "250")
    monkeypatch.setenv("ENABLE_INCREMENTAL", "false")
    monkeypatch.setenv("OPTASK_INDICES", "nifty, SENSEX")
    monkeypatch.setenv("ALERT_RECIPIENTS", "a@example.com,b@example.com")
    s = load_settings()
    assert s.service.processing_batch_size == 250
    assert s.data.enable_incremental is False
    assert s.market.indices == ("NIFTY", "SENSEX")
    assert s.alerts.alert_recipients == ("a@example.com", "b@example.com")


def test_redis_url_wins_over_host(monkeypatch):
    monkeypatch.setenv("REDIS_HOST", "10.0.0.5")
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@cache.example:6380/2")
    s = load_settings()
    assert s.redis.effective_url() == "rediss://:pw@cache.example:6380/2"
    assert "pw" not in s.display()["redis"]["REDIS_URL"]


def test_env_file_is_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("PROCESSING_MAX_WORKERS=7\nKITE_API_KEY=abc\n")
    s = load_settings()
    assert s.service.processing_max_workers == 7
    assert s.kite.api_key == "abc"


@pytest.mark.parametrize(
    ("var", "value"),
    [("PROCESSING_BATCH_SIZE", "abc"), ("OPTASK_INDICES", "NIFTY,FOO"), ("REDIS_PORT", "70000"),
     ("OPTASK_PROVIDER", "yahoo"), ("REDIS_URL", "http://x")],
)
def test_bad_value_names_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert str(exc.value).startswith(f"{var}={value}:")


@pytest.mark.parametrize(
    ("var", "value", "allowed"),
    [("PROCESSING_BATCH_SIZE", "abc", "integer"), ("OPTASK_INDICES", "NIFTY,FOO", "BANKNIFTY"),
     ("REDIS_PORT", "70000", "65535")],
)
def test_cli_exits_2_with_one_line(var, value, allowed):
    for verb in (["config"], ["calendar", "--from", "2026-01-01", "--to", "2026-01-02"], ["redis", "status"]):
        proc = run_optask(*verb, env={var: value})
        assert proc.returncode == 2, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and var in lines[0] and value in lines[0] and allowed in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout


def test_config_masks_secrets():
    secrets = {"KITE_ACCESS_TOKEN": "secret123", "INFLUXDB_TOKEN": "tok456", "SMTP_PASSWORD": "pw789",
               "REDIS_URL": "redis://:hunter2@127.0.0.1:1/0", "FLOWER_BASIC_AUTH": "admin:flowerpw"}
    proc = run_optask("config", env=secrets)
    assert proc.returncode == 0, proc.stderr
    for value in ("secret123", "tok456", "pw789", "hunter2", "flowerpw"):
        assert value not in proc.stdout
    assert "KITE_ACCESS_TOKEN" in proc.stdout and "***" in proc.stdout
    assert "secret123" not in repr(load_settings(kite={"access_token": "secret123"}))


def test_version_and_help():
    assert "optask" in run_optask("--version").stdout
    out = run_optask("--help").stdout
    for verb in ("config", "calendar", "redis"):
        assert verb in out


def test_get_settings_is_cached_and_clearable(monkeypatch):
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setenv("PROCESSING_BATCH_SIZE", "3")
    get_settings.cache_clear()
    assert get_settings().service.processing_batch_size == 3


def test_env_example_documents_every_variable():
    from optask.core.config import _GROUPS, env_name

    example = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    documented = {line.split("=", 1)[0].strip() for line in example.splitlines() if "=" in line and not line.startswith("#")}
    for cls in _GROUPS.values():
        for field in cls.model_fields:
            assert env_name(cls, field) in documented, env_name(cls, field)


def test_env_example_is_current():
    from optask.core.config_text import env_example_text

    example = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    assert example.strip() == env_example_text().strip(), "regenerate: optask config --example > .env.example"
