"""Watching it run: health checks, alerts, the metrics exporter."""

from __future__ import annotations

import typer
from rich.table import Table

from optask.cli.app import app, console, fail, when
from optask.core.config import get_settings


def _health_table(checks: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("check", "status", "reason", "value"):
        table.add_column(col)
    for c in checks:
        style = {"OK": "green", "WARN": "yellow"}.get(c["status"], "red")
        table.add_row(c["name"], f"[{style}]{c['status']}[/{style}]", c["reason"], "" if c["value"] is None else str(c["value"]))
    return table


def run_health(mode: str) -> int:
    """The body of `optask health` and `python -m optask.health`; returns the exit status."""
    import signal as _signal

    from optask.ops.health.checks import RANK
    from optask.ops.health.monitor import HealthMonitor

    monitor = HealthMonitor(get_settings())
    if mode == "check":
        report = monitor.check()
        for c in report.checks:
            if c.status != "OK":
                console.print(f"{c.status} {c.name}: {c.reason}", highlight=False)
        console.print(report.summary().split(":")[0], highlight=False)
        return RANK[report.status]
    if mode == "status":
        state = monitor.status()
        report = state["report"]
        console.print(_health_table(report["checks"], f"optask health: {report['status']} (checked {when(report['at'])})"))
        if state["actions"]:
            actions = Table(title="self-healing actions (newest first)")
            for col in ("when", "action", "target", "result"):
                actions.add_column(col)
            for a in state["actions"][:10]:
                actions.add_row(when(a["at"]), a["action"], a["target"], a["result"])
            console.print(actions)
        for channel, d in state["delivery"].items():
            if channel == "outbox":
                if d["waiting"]:
                    console.print(f"alert outbox: {d['waiting']} notifications waiting for a channel", highlight=False)
            elif not d["ok"]:
                console.print(f"[yellow]alert delivery by {channel} failing since {when(d['at'])}: {d['error']} "
                              "(kept and retried)[/yellow]", highlight=False)
        return RANK[report["status"]]
    if mode == "alerts":
        from optask.ops.alerts import Alerter

        active = monitor.status()["alerts"]
        if not active:
            console.print("no active alerts")
        table = Table(title="active alerts")
        for col in ("alert", "severity", "state", "since", "reason"):
            table.add_column(col)
        for a in active:
            table.add_row(a["name"], a["severity"], a["status"], when(a["since"]), a["reason"])
        if active:
            console.print(table)
        history = Alerter(monitor.settings, monitor._client()).history(10)
        for h in history:
            console.print(f"{when(h['at'])}  {h['kind']:<9} {h['name']}: {h['reason']}", highlight=False)
        return 1 if active else 0
    import os

    # start: in the foreground until a signal, which ends it at once: a round of checks blocked on a server
    # that is gone (the stack's own Redis, when `up` was killed) must not hold the process. Checks only read,
    # and alert state changes are single Redis commands, so an abandoned round leaves nothing half-done.
    def stop(signum, frame):
        os._exit(0)  # not SystemExit: interpreter shutdown would join threads still blocked on the dead server

    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, stop)
    console.print(f"checking every {monitor.settings.monitoring.health_check_interval} s; Ctrl-C stops")
    last = {"line": ""}

    def show(report) -> None:
        line = report.summary()
        if line != last["line"]:
            console.print(f"{when(report.at)}  {line}", highlight=False)
            last["line"] = line

    monitor.start_monitoring(on_report=show)
    return 0


@app.command()
def health(
    status: bool = typer.Option(False, "--status", help="Every check as a table, with self-healing actions and alert delivery."),
    check: bool = typer.Option(False, "--check", help="Check once; exit 0 OK, 1 WARN, 2 CRIT (for cron and monitoring)."),
    alerts: bool = typer.Option(False, "--alerts", help="Active alerts and since when, and the latest notifications."),
    start: bool = typer.Option(False, "--start", help="Check every HEALTH_CHECK_INTERVAL seconds in the foreground."),
) -> None:
    """Is optask working: system, Redis, broker queues, workers, beat, data freshness, provider, InfluxDB, last EOD."""
    modes = [m for m, on in (("status", status), ("check", check), ("alerts", alerts), ("start", start)) if on]
    if len(modes) != 1:
        fail("give exactly one of --status, --check, --alerts, --start")
    raise typer.Exit(run_health(modes[0]))


@app.command()
def metrics() -> None:
    """Serve optask's Prometheus metrics on METRICS_ADDRESS:METRICS_PORT (127.0.0.1:9108) until a signal."""
    import signal as _signal
    import threading

    from optask.infra.redis_client import connect
    from optask.infra.redis_server import url_if_running
    from optask.ops.metrics import serve

    settings = get_settings()
    url, why = url_if_running(settings)
    if url is None:
        fail(why)
    try:
        server = serve(settings, connect(url))
    except OSError as exc:
        mon = settings.monitoring
        fail(f"cannot listen on {mon.metrics_address}:{mon.metrics_port} ({exc.strerror or exc}); set METRICS_PORT "
             "to a free port")
    done = threading.Event()
    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, lambda *_: done.set())
    mon = settings.monitoring
    console.print(f"metrics on http://{mon.metrics_address}:{mon.metrics_port}/metrics")
    done.wait()
    server.shutdown()
