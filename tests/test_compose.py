"""docker-compose.yml cannot run here (no container engine): check it is a real optask deployment, in the
config as compose renders it (its `${VAR}`, `${VAR:?message}` interpolation from .env, and YAML merges)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


class ComposeRefused(ValueError):
    """What `docker compose up` prints and stops on: a required variable is unset or empty."""


def render(env: dict[str, str]) -> dict:
    """The compose file as `docker compose config` renders it: `${VAR:?msg}` refuses an unset or empty VAR."""

    def value(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        got = env.get(name, "")
        if op == ":?" and not got:
            raise ComposeRefused(f"required variable {name} is missing a value: {arg}")
        if op == ":-" and not got:
            return arg
        return got

    text = re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:\?|:-)([^}]*))?\}", value, (ROOT / "docker-compose.yml").read_text())
    return yaml.safe_load(text)


def dotenv(**override: str) -> dict[str, str]:
    env = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in (ROOT / ".env.example").read_text().splitlines()
           if "=" in line and not line.startswith("#")}
    return {**env, **override}


def seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", text))


OPTASK_SERVICES = ("worker", "maintenance", "beat", "flower", "monitor", "metrics", "ticker", "api")


def test_redis_needs_its_password_and_every_client_sends_it():
    with pytest.raises(ComposeRefused, match="REDIS_PASSWORD"):
        render(dotenv(REDIS_PASSWORD="", FLOWER_BASIC_AUTH="ops:pw"))
    services = render(dotenv(REDIS_PASSWORD="0123abcd", FLOWER_BASIC_AUTH="ops:pw"))["services"]
    cmd = services["redis"]["command"]
    assert cmd[cmd.index("--requirepass") + 1] == "0123abcd"
    assert all(p.startswith("127.0.0.1:") for p in services["redis"]["ports"])
    for name in OPTASK_SERVICES:
        assert services[name]["environment"]["REDIS_URL"] == "redis://:0123abcd@redis:6379/0", name


def test_flower_never_runs_without_auth():
    with pytest.raises(ComposeRefused, match="FLOWER_BASIC_AUTH"):
        render(dotenv(REDIS_PASSWORD="pw", FLOWER_BASIC_AUTH=""))
    flower = render(dotenv(REDIS_PASSWORD="pw", FLOWER_BASIC_AUTH="ops:s3cret"))["services"]["flower"]
    assert "--basic-auth=ops:s3cret" in flower["command"]


def test_health_has_a_monitor_of_its_own_not_a_task_in_the_worker_it_watches():
    services = render(dotenv(REDIS_PASSWORD="pw", FLOWER_BASIC_AUTH="ops:pw"))["services"]
    assert services["monitor"]["command"] == ["optask", "health", "--start"]
    assert services["monitor"]["restart"] == "unless-stopped"
    for name in OPTASK_SERVICES:
        assert services[name]["environment"]["HEALTH_IN_BEAT"] == "false", name


def test_workers_stop_warm_within_their_task_limits_and_without_gossip():
    from optask.infra.queues import EOD_HARD_LIMIT_S, MINUTE_HARD_LIMIT_S

    services = render(dotenv(REDIS_PASSWORD="pw", FLOWER_BASIC_AUTH="ops:pw"))["services"]
    assert seconds(services["worker"]["stop_grace_period"]) > MINUTE_HARD_LIMIT_S
    assert seconds(services["maintenance"]["stop_grace_period"]) > EOD_HARD_LIMIT_S
    for name in ("worker", "maintenance"):
        assert {"--without-gossip", "--without-mingle"} <= set(services[name]["command"]), name


def test_the_api_is_a_service_of_its_own_on_the_hosts_loopback():
    api = render(dotenv(REDIS_PASSWORD="pw", FLOWER_BASIC_AUTH="ops:pw"))["services"]["api"]
    assert api["command"] == ["optask", "serve"] and api["environment"]["API_HOST"] == "0.0.0.0"
    assert api["ports"] == ["127.0.0.1:8008:8008"] and api["restart"] == "unless-stopped"


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
