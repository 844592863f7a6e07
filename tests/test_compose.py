"""docker-compose.yml cannot run here (no container engine): check it is a real optask deployment."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_present():
    services = load()["services"]
    assert {"redis", "influxdb", "worker", "maintenance", "beat", "flower"} <= set(services)
    # live minutes and catch-up work on separate workers, together consuming every queue
    assert "--exclude-queues=maintenance" in services["worker"]["command"]
    assert "--queues=maintenance" in services["maintenance"]["command"]
    # the KiteTicker process, for KITE_FETCH=ticker: `docker compose --profile ticker up`
    assert services["ticker"]["command"] == ["optask", "ticker"] and services["ticker"]["profiles"] == ["ticker"]


def test_commands_are_real_invocations(redis_url):
    import typer.main

    from optask.cli import app as cli_app
    from tasks.application import app as celery_app  # noqa: F401 - importing proves `-A tasks` resolves

    services = load()["services"]
    for name in ("worker", "maintenance", "beat", "flower"):
        cmd = services[name]["command"]
        cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
        assert cmd[:3] == ["celery", "-A", "tasks"], cmd
        assert cmd[3] == {"maintenance": "worker"}.get(name, name)
    redis_cmd = services["redis"]["command"]
    assert "noeviction" in redis_cmd and "--appendonly" in redis_cmd
    flower = " ".join(services["flower"]["command"])
    assert "--basic-auth=" in flower
    click_cmd = typer.main.get_command(cli_app)
    for svc in services.values():
        cmd = svc.get("command") or []
        if cmd and cmd[0] == "optask":
            assert cmd[1] in click_cmd.commands


def test_every_variable_is_documented():
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
                  if "=" in line and not line.startswith("#")}
    assert used, "compose uses .env variables"
    assert used <= documented, used - documented


def test_dockerfile_installs_the_project():
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and "COPY optask" in text and "COPY tasks" in text
