"""Where `optask up` runs: Linux and macOS; on native Windows it stops at once with one line (Celery has no
Windows support since 4.0), decided by one function so the check is tested here without Windows."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from optask.cli import app
from optask.core.config import get_settings
from optask.infra.procutil import unsupported_platform


def test_native_windows_is_refused_with_the_ways_that_work():
    why = unsupported_platform("win32")
    assert why is not None and "\n" not in why
    assert "Windows" in why and "Celery" in why and "WSL2" in why and "Docker Desktop" in why


def test_linux_and_macos_are_supported():
    assert unsupported_platform("linux") is None
    assert unsupported_platform("darwin") is None
    assert unsupported_platform() is None  # this machine: the tests run on Linux


def test_up_on_native_windows_stops_at_once_with_one_line(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # were the check gone, up would fail fast here
    get_settings.cache_clear()
    monkeypatch.delitem(sys.modules, "optask.ops.supervisor", raising=False)  # restored after the test
    monkeypatch.setattr(sys, "platform", "win32")
    result = CliRunner().invoke(app, ["up"])
    imported = "optask.ops.supervisor" in sys.modules  # it must not even be imported: it needs fcntl
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "native Windows" in lines[0] and "WSL2" in lines[0], result.output
    assert not imported
