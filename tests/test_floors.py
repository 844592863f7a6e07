"""Dependency floors that tell the truth (issue 18, item 10): each floor in pyproject.toml is at least the first
release that has what the code uses. Found by installing every direct dependency at its floor
(`uv pip install --resolution lowest-direct -e '.[dev]'`) and running the suite there, on 2026-12-01."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

#: package -> (first version with what optask uses, what that is)
NEEDS = {
    "kombu": ("5.7", "the Redis transport's unacked_restore_interval/throttle (older kombu ignores them silently)"),
    "celery": ("5.7", "requires kombu 5.7"),
    "redis": ("6.4", "kombu 5.7's redis extra"),
    "pydantic": ("2.7", "pydantic-settings 2.7"),
    "pydantic-settings": ("2.7", "NoDecode for comma-separated settings"),
    "typer": ("0.12.5", "`optask config` with a bad value exits 2 (0.12.0 with today's click prints the version)"),
    "pandas_market_calendars": ("5.5", "NSE holidays and Muhurat sessions of 2025 and 2026"),
    "aiosmtpd": ("1.4.3", "an authenticator that sees the STARTTLS session (the SMTP TLS tests)"),
    "import-linter": ("2.6", "the acyclic_siblings contract"),
    "ruff": ("0.17", "the import sorting the tree is formatted to"),
}


def floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
    out = {}
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([0-9][0-9.]*)", req)
        if m:
            out[m.group(1).lower().replace("_", "-")] = Version(m.group(2))
    return out


@pytest.mark.parametrize("package", sorted(NEEDS))
def test_each_floor_is_a_release_that_has_what_the_code_uses(package):
    need, why = NEEDS[package]
    have = floors().get(package.lower().replace("_", "-"))
    assert have is not None, f"{package} has no floor in pyproject.toml"
    assert have >= Version(need), f"{package}>={have} allows releases without {why}: the floor is {need}"


def test_the_transport_options_celery_config_relies_on_exist():
    """A kombu that did not know them would drop them without a word: the sweep for dead workers' tasks
    would run every 100 s instead of every few."""
    import kombu.transport.redis as transport

    from optask.core.config import load_settings
    from optask.infra.celery_client import celery_config

    used = set(celery_config(load_settings(), "redis://127.0.0.1:1/0")["broker_transport_options"])
    assert {"unacked_restore_interval", "unacked_restore_throttle"} <= used
    assert used <= set(transport.Channel.from_transport_options), used - set(transport.Channel.from_transport_options)
