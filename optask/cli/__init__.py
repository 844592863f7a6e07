"""The `optask` command: one verb per job; each verb parses, calls one library function, renders.

Heavy imports live inside the verbs so `optask --help` stays fast.
"""

from __future__ import annotations

import datetime as dt
import sys

import typer
from rich.console import Console
from rich.table import Table

from optask import __version__
from optask.config import SettingsError, get_settings

app = typer.Typer(
    name="optask", no_args_is_help=True, add_completion=False,
    help="Collect, enrich, store and verify Indian index-option chains every market minute.",
)
redis_app = typer.Typer(no_args_is_help=True, help="The Redis server optask uses (configured, or the bundled one).")
app.add_typer(redis_app, name="redis")
kite_app = typer.Typer(no_args_is_help=True, help="Zerodha Kite Connect credentials at run time.")
app.add_typer(kite_app, name="kite")

# No wrapping of long lines: under systemd or docker, output goes to a log, one event per line.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """One line for the operator, no traceback."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_day(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text!r} is not a date; use YYYY-MM-DD")
        raise  # unreachable: fail() exits


def _version(value: bool) -> None:
    if value:
        console.print(f"optask {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    # Every verb needs valid settings: read them first so a bad value stops any command with exit 2.
    try:
        get_settings()
    except SettingsError as exc:
        fail(str(exc))


@app.command()
def config(
    example: bool = typer.Option(False, "--example", help="Print a documented .env.example with the defaults instead."),
) -> None:
    """Print the effective settings, grouped; secrets as ***."""
    if example:
        from optask.config import env_example_text

        typer.echo(env_example_text())
        return
    for group, rows in get_settings().display().items():
        table = Table(title=group, title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column("variable", style="cyan")
        table.add_column("value")
        for name, value in rows.items():
            table.add_row(name, value)
        console.print(table)
        console.print()


@app.command()
def calendar(
    from_: str = typer.Option(..., "--from", help="First day, YYYY-MM-DD."),
    to: str = typer.Option(..., "--to", help="Last day, YYYY-MM-DD."),
) -> None:
    """List market sessions between two days, with open and close in IST."""
    from optask.calendar import CalendarError, get_calendar

    start, end = parse_day(from_, "--from"), parse_day(to, "--to")
    if end < start:
        fail(f"--to {to} is before --from {from_}")
    try:
        sessions = get_calendar().sessions(start, end)
    except CalendarError as exc:
        fail(str(exc))
    table = Table(title=f"Sessions {start} .. {end} (IST)")
    for col in ("day", "weekday", "open", "close", "minutes", "kind"):
        table.add_column(col)
    for s in sessions:
        table.add_row(
            s.day.isoformat(), s.day.strftime("%a"), s.open.strftime("%H:%M"), s.close.strftime("%H:%M"),
            str(s.minutes), "special" if s.special else "regular",
        )
    console.print(table)
    console.print(f"{len(sessions)} sessions")


@redis_app.command("status")
def redis_status() -> None:
    """Say which Redis optask uses and whether it answers."""
    from optask.config import mask_url
    from optask.services import bundled_redis_url, redis_ping

    settings = get_settings()
    url = settings.redis.effective_url()
    if url:
        ok = redis_ping(url)
        console.print(f"configured Redis {mask_url(url)}: {'up' if ok else 'DOWN'}")
        raise typer.Exit(0 if ok else 1)
    url = bundled_redis_url(settings.data.root)
    console.print(f"bundled Redis: {url + ' up' if url else 'not running'} (data in {settings.data.root / 'redis'})")
    raise typer.Exit(0 if url else 1)


@redis_app.command("start")
def redis_start() -> None:
    """Start the bundled Redis (or reuse the running one); a configured Redis is only checked."""
    from optask.config import mask_url
    from optask.services import RedisUnavailable, ensure_redis, start_bundled_redis

    settings = get_settings()
    try:
        if settings.redis.configured:
            console.print(f"using configured Redis {mask_url(ensure_redis(settings))}")
            return
        url, started = start_bundled_redis(settings.data.root)
    except RedisUnavailable as exc:
        fail(str(exc), 1)
    console.print(f"bundled Redis {'started' if started else 'already running'} at {url}")


@redis_app.command("stop")
def redis_stop() -> None:
    """Stop the bundled Redis cleanly (its AOF is flushed); a configured Redis is never touched."""
    from optask.services import stop_bundled_redis

    settings = get_settings()
    if settings.redis.configured:
        fail("Redis is configured (REDIS_URL/REDIS_HOST); optask stops only its bundled server", 1)
    stopped = stop_bundled_redis(settings.data.root)
    console.print("bundled Redis stopped" if stopped else "bundled Redis was not running")


@kite_app.command("set-token")
def kite_set_token(token: str = typer.Argument(..., help="Today's access token from Kite's login flow.")) -> None:
    """Hand every running worker a new access token (Kite's expire daily); no restart needed.

    It is kept in optask's Redis, so it outlives a restart of the stack but not the day's expiry.
    """
    from optask.health import redis_url_if_running
    from optask.providers.kite import token_key

    settings = get_settings()
    if not settings.kite.api_key:
        fail("KITE_API_KEY is not set: the token belongs to an API key")
    if len(token.strip()) < 8 or any(c.isspace() for c in token.strip()):
        fail("that does not look like a Kite access token (a 32-character string from the login flow)")
    url, why = redis_url_if_running(settings)
    if url is None:
        fail(f"{why}; with the stack stopped, set KITE_ACCESS_TOKEN in .env instead")
    import redis

    redis.Redis.from_url(url).set(token_key(settings.kite.api_key), token.strip(), ex=36 * 3600)
    console.print(f"access token for API key {settings.kite.api_key} set ({token.strip()[:4]}***); "
                  "workers use it from their next call")


@app.command()
def collect(
    index: str = typer.Option(..., "--index", help="Index to fetch, e.g. NIFTY."),
    at: str = typer.Option("", "--at", help="Minute to fetch (ISO 8601, IST if no offset); default: now or the last session minute."),
    provider: str = typer.Option("", "--provider", help="simulated | kite | replay; default OPTASK_PROVIDER."),
    out: str = typer.Option("", "--out", help="Also write the normalized legs to FILE (.csv or .parquet)."),
) -> None:
    """Fetch one minute of one index in-process (no broker) and print a short table.

    Redis (the Kite provider paces its calls through it): the configured one, else the running stack's
    bundled one; with neither, a private bundled server that is stopped before the command exits.
    """
    import time as _time
    from contextlib import ExitStack
    from pathlib import Path

    from optask.calendar import get_calendar
    from optask.providers.base import ProviderError, get_provider
    from optask.schema import INDICES
    from optask.timeutils import IST, TimestampParseError, floor_minute, now_utc, parse_minute

    index = index.strip().upper()
    if index not in INDICES:
        fail(f"--index: unknown index {index!r}; allowed: {', '.join(INDICES)}")
    if provider and provider not in ("simulated", "kite", "replay"):
        fail(f"--provider: unknown provider {provider!r}; allowed: simulated, kite, replay")
    if out and Path(out).suffix not in (".csv", ".parquet"):
        fail(f"--out: {out!r} must end in .csv or .parquet")
    settings = get_settings()
    calendar = get_calendar(settings.data.calendar_overrides)
    if at:
        try:
            ts = parse_minute(at)
        except TimestampParseError as exc:
            fail(f"--at: {exc}")
        if not calendar.in_session(ts):
            fail(f"--at: {ts.astimezone(IST):%Y-%m-%d %H:%M} IST is outside a market session")
    else:
        now = floor_minute(now_utc())
        if calendar.in_session(now):
            ts = now
        else:
            day = now.astimezone(IST).date()
            s = calendar.session(day)
            if s is None or now < s.open:
                s = calendar.session(calendar.previous_trading_day(day))
            ts = calendar.session_minutes(s.day)[-1].to_pydatetime()
    from optask.services import RedisUnavailable, redis_for_command

    try:
        with ExitStack() as servers:
            if (provider or settings.market.provider) == "kite":
                servers.enter_context(redis_for_command(settings))
            source = get_provider(provider or None, settings)
            start = _time.perf_counter()
            snap = source.snapshot(index, ts)
            took = _time.perf_counter() - start
    except (ProviderError, RedisUnavailable) as exc:
        fail(str(exc))
    t = snap.table
    table = Table(title=f"{index} at {ts.astimezone(IST):%Y-%m-%d %H:%M} IST from {snap.provider}")
    for col in ("expiry", "kind", "strikes", "legs", "spot"):
        table.add_column(col)
    rows = t.select(["expiry", "expiry_kind", "strike", "spot"]).to_pandas()
    for (expiry, kind), g in rows.groupby(["expiry", "expiry_kind"]):
        table.add_row(str(expiry), kind, f"{g.strike.min():g}..{g.strike.max():g} ({g.strike.nunique()})",
                      str(len(g)), f"{g.spot.iloc[0]:,.2f}")
    console.print(table)
    dropped = ", ".join(f"{k}: {v}" for k, v in snap.issues.items()) or "none"
    console.print(f"{t.num_rows} legs in {took * 1000:.0f} ms; dropped or flagged: {dropped}")
    if snap.sample_span_ms is not None:
        offset = "" if snap.spot_offset_ms is None else f"; spot {snap.spot_offset_ms:+,.0f} ms from its options"
        console.print(f"sampling span {snap.sample_span_ms:,.0f} ms (first to last quote call){offset}")
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(t, path)
        else:
            from optask.storage.csv import to_csv_bytes

            path.write_bytes(to_csv_bytes(t, header=True))
        console.print(f"wrote {path}")


def _indices_option(values: list[str]) -> list[str]:
    from optask.schema import INDICES

    chosen = [v.strip().upper() for item in values for v in item.split(",") if v.strip()]
    unknown = [i for i in chosen if i not in INDICES]
    if unknown:
        fail(f"--index: unknown index {','.join(unknown)}; allowed: {','.join(INDICES)}")
    return chosen


def _show_verification(results: dict) -> int:
    """The compact table a person reads after verify or backfill; returns the exit status (0 PASS, 1 WARN, 2 FAIL)."""
    table = Table(title=f"Verification of {results['day']}: {results['overall_status']} "
                        f"(score {results['summary']['data_quality_score']:.1f})")
    for col in ("index", "score", "status", "missing minutes per store", "findings"):
        table.add_column(col)
    for index, r in results["indices"].items():
        missing = {k: len(v.get("missing", [])) for k, v in r.get("completeness", {}).items()}
        gaps = ", ".join(f"{k} {n}" for k, n in missing.items() if n) or "none"
        findings = ", ".join(f"{k} {n}" for k, n in sorted(r.get("findings_by_kind", {}).items())) or "none"
        style = {"PASS": "green", "WARN": "yellow"}.get(r["status"], "red")
        table.add_row(index, f"{r['score']:.1f}", f"[{style}]{r['status']}[/{style}]", gaps, findings)
    console.print(table)
    return {"PASS": 0, "WARN": 1}.get(results["overall_status"], 2)


@app.command()
def verify(
    day: str = typer.Option(..., "--day", help="Session to verify, YYYY-MM-DD."),
    index: list[str] = typer.Option([], "--index", help="Index to verify (repeatable); default OPTASK_INDICES."),
    as_json: bool = typer.Option(False, "--json", help="Print the full results as JSON instead of the table."),
) -> None:
    """Verify a day's stored data (completeness per store, integrity, values, no-arbitrage, consistency).

    Writes reports/eod/{day}/ (JSON and an HTML page). Exit status: 0 PASS, 1 WARN, 2 FAIL or bad input.
    """
    import json

    from optask.calendar import get_calendar
    from optask.verify import EODDataVerificationSystem

    settings = get_settings()
    the_day = parse_day(day, "--day")
    if get_calendar(settings.data.calendar_overrides).session(the_day) is None:
        fail(f"--day {the_day} is not a market session (weekend or holiday); see `optask calendar`")
    chosen = _indices_option(index) or list(settings.market.indices)
    system = EODDataVerificationSystem(settings)
    results = system.run_eod_verification(the_day, indices=chosen)
    path = system.save_verification_report(results)
    if as_json:
        typer.echo(json.dumps(results, indent=2, default=str))
        code = {"PASS": 0, "WARN": 1}.get(results["overall_status"], 2)
    else:
        code = _show_verification(results)
        console.print(f"report: {path}")
    raise typer.Exit(code)


@app.command()
def backfill(
    index: list[str] = typer.Option(..., "--index", help="Index to backfill (repeatable, or comma-separated)."),
    from_: str = typer.Option(..., "--from", help="First day, YYYY-MM-DD."),
    to: str = typer.Option(..., "--to", help="Last day, YYYY-MM-DD."),
    only_missing: bool = typer.Option(False, "--only-missing", help="Only minutes a store lacks (else every session minute)."),
    wait: bool = typer.Option(False, "--wait", help="Show progress until done, then verify each day."),
    here: bool = typer.Option(False, "--here", help="Run in this process even if a worker serves the maintenance queue."),
) -> None:
    """Rebuild minutes from the raw archive, else the provider's history, on the maintenance queue.

    Idempotent: minutes every store holds are skipped, so a second run does nothing. With no worker
    on the maintenance queue (or --here) it runs in this process. Exit status: 0 done (and PASS with
    --wait), 1 some minutes unavailable or WARN, 2 failure, FAIL or bad input.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from optask import backfill as bf
    from optask.services import RedisUnavailable, redis_for_command
    from optask.stack import celery_client

    settings = get_settings()
    chosen = _indices_option(index)
    start, end = parse_day(from_, "--from"), parse_day(to, "--to")
    try:
        with redis_for_command(settings) as url:
            try:
                plan = bf.plan_backfill(chosen, start, end, only_missing=only_missing, settings=settings)
            except bf.BackfillError as exc:
                fail(str(exc))
            for skipped, why in plan.skipped_days:
                console.print(f"{skipped}: skipped, {why}")
            if plan.total == 0:
                console.print(f"nothing to do: every session minute of {', '.join(chosen)} from {start} to {end} "
                              "is in every store")
                raise typer.Exit(0)
            client = celery_client(settings, url)
            workers = [] if here else bf.maintenance_workers(client)
            if workers and not wait:
                sent = bf.enqueue(plan, client)
                console.print(f"enqueued {len(sent)} backfill tasks ({plan.total:,} minutes) on the maintenance "
                              f"queue, served by {', '.join(workers)}; follow them in Flower or run with --wait")
                raise typer.Exit(0)
            if not workers and not here:
                console.print("no worker consumes the maintenance queue (`optask up` runs one); "
                              "running the backfill in this process")
            progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console)
            bars = {i: progress.add_task(i, total=n) for i, n in plan.minutes_by_index().items()}
            with progress:
                def advance(idx: str, n: int) -> None:
                    progress.advance(bars[idx], n)

                if workers:
                    results = bf.wait(bf.enqueue(plan, client), on_progress=advance)
                else:
                    results = bf.run_here(plan, settings, on_progress=advance)
            client.close()
            errors = [r for r in results if "error" in r]
            unavailable = sum(r.get("unavailable", 0) for r in results)
            stored = sum(r.get("stored", 0) for r in results)
            console.print(f"stored {stored:,} minutes ({sum(r.get('from_archive', 0) for r in results):,} from the raw "
                          f"archive, {sum(r.get('from_history', 0) for r in results):,} from the provider's history); "
                          f"{unavailable:,} unavailable; {len(errors)} failed tasks")
            for e in errors[:10]:
                console.print(f"[red]failed:[/red] {e['index']} {e['day']}: {e['error']}", highlight=False)
            code = 2 if errors else (1 if unavailable else 0)
            from optask.storage.sinks import compact_day
            from optask.verify import EODDataVerificationSystem

            for chunk in {(c.index, c.day) for c in plan.chunks}:  # fold the rebuilt minutes into their day files
                compact_day(*chunk, settings=settings)

            system = EODDataVerificationSystem(settings)
            for day in plan.days:
                results_day = system.run_eod_verification(day, indices=chosen)
                system.save_verification_report(results_day)
                code = max(code, _show_verification(results_day))
    except RedisUnavailable as exc:
        fail(str(exc))
    raise typer.Exit(code)


def _health_table(checks: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("check", "status", "reason", "value"):
        table.add_column(col)
    for c in checks:
        style = {"OK": "green", "WARN": "yellow"}.get(c["status"], "red")
        table.add_row(c["name"], f"[{style}]{c['status']}[/{style}]", c["reason"], "" if c["value"] is None else str(c["value"]))
    return table


def _when(epoch: float) -> str:
    import datetime as _dt

    from optask.timeutils import IST

    return _dt.datetime.fromtimestamp(epoch, IST).strftime("%Y-%m-%d %H:%M:%S IST")


def run_health(mode: str) -> int:
    """The body of `optask health` and `python -m optask.health`; returns the exit status."""
    import signal as _signal

    from optask.health import RANK, get_enhanced_monitor

    monitor = get_enhanced_monitor(get_settings())
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
        console.print(_health_table(report["checks"], f"optask health: {report['status']} (checked {_when(report['at'])})"))
        if state["actions"]:
            actions = Table(title="self-healing actions (newest first)")
            for col in ("when", "action", "target", "result"):
                actions.add_column(col)
            for a in state["actions"][:10]:
                actions.add_row(_when(a["at"]), a["action"], a["target"], a["result"])
            console.print(actions)
        for channel, d in state["delivery"].items():
            if channel == "outbox":
                if d["waiting"]:
                    console.print(f"alert outbox: {d['waiting']} notifications waiting for a channel", highlight=False)
            elif not d["ok"]:
                console.print(f"[yellow]alert delivery by {channel} failing since {_when(d['at'])}: {d['error']} "
                              "(kept and retried)[/yellow]", highlight=False)
        return RANK[report["status"]]
    if mode == "alerts":
        from optask.alerts import Alerter

        active = monitor.status()["alerts"]
        if not active:
            console.print("no active alerts")
        table = Table(title="active alerts")
        for col in ("alert", "severity", "state", "since", "reason"):
            table.add_column(col)
        for a in active:
            table.add_row(a["name"], a["severity"], a["status"], _when(a["since"]), a["reason"])
        if active:
            console.print(table)
        history = Alerter(monitor.settings, monitor._client()).history(10)
        for h in history:
            console.print(f"{_when(h['at'])}  {h['kind']:<9} {h['name']}: {h['reason']}", highlight=False)
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
            console.print(f"{_when(report.at)}  {line}", highlight=False)
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

    from optask.coordination import connect
    from optask.health import redis_url_if_running
    from optask.metrics import serve

    settings = get_settings()
    url, why = redis_url_if_running(settings)
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


@app.command()
def ticker() -> None:
    """Stream the day's universe from KiteTicker and cut every session minute (KITE_FETCH=ticker) until a signal.

    `optask up` starts it when OPTASK_PROVIDER=kite and KITE_FETCH=ticker. It needs Redis (the stack's) and
    Kite's API key and access token; a minute it cannot cut is fetched over REST by collect_minute.
    """
    import logging
    import signal as _signal

    from optask.health import redis_url_if_running
    from optask.providers.base import ProviderError
    from optask.ticker import Ticker

    settings = get_settings()
    if settings.market.provider != "kite" or settings.kite.fetch != "ticker":
        fail("optask ticker streams Kite: set OPTASK_PROVIDER=kite and KITE_FETCH=ticker")
    url, why = redis_url_if_running(settings)
    if url is None:
        fail(why)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        t = Ticker(settings)
    except ProviderError as exc:
        fail(str(exc))
    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, lambda *_: t.stop_event.set())
    console.print(f"ticker: {settings.kite.ticker_url} for {', '.join(settings.market.indices)}")
    t.run()


@app.command()
def bench(
    json_file: str = typer.Option(None, "--json", help="Also write every measure, with its runs, to this file."),
    only: list[str] = typer.Option([], "--only", help="Run only these scripts (e.g. bench_storage.py); repeatable."),
    repeats: int = typer.Option(3, "--repeats", min=3, help="Repeats of every measure (at least 3)."),
) -> None:
    """Run every benchmark (bench/bench_*.py, from a clone) and print one table: each measure, optask's
    figure and the baseline measured in the same run as median (min-max), their ratio, the goal, and whether
    every repeat meets it. Takes about 40 minutes on 2 cores (bench_ticker.py alone plays six sessions through
    the stack, 17 minutes). Exit 1 when a script failed."""
    import json
    import os
    import platform
    from pathlib import Path

    from optask.benchmarks import BENCH_DIR, SCRIPTS, fmt, goal_text, run_all

    if not BENCH_DIR.is_dir():
        fail(f"no bench/ folder at {BENCH_DIR}: `optask bench` runs from a clone of the repository")
    unknown = [s for s in only if s not in SCRIPTS]
    if unknown:
        fail(f"unknown script {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    console.print(f"optask bench on {machine}, {repeats} repeats per measure", highlight=False)
    measures, failed = run_all(list(only) or None, repeats,
                               echo=lambda line: console.print(line, highlight=False, markup=False))
    table = Table(title=f"optask bench ({machine})", title_justify="left")
    for col in ("measure", "optask: median (min-max)", "baseline", "ratio: median (min-max)", "goal", "verdict"):
        table.add_column(col, overflow="fold")
    colour = {"meets": "green", "misses": "red", "straddles": "yellow"}
    for m in measures:
        base = f"{m.baseline_name}: {fmt(m.baseline, m.unit)}" if m.baseline else "-"
        verdict = m.verdict()
        table.add_row(m.measure, fmt(m.ours, m.unit), base, fmt(m.ratios(), "x") if m.baseline else "-",
                      goal_text(m), f"[{colour.get(verdict, 'white')}]{verdict}[/]")
    (console if console.is_terminal else Console(width=200)).print(table)  # a log keeps whole rows
    if json_file:
        Path(json_file).write_text(json.dumps({"machine": machine, "repeats": repeats, "failed": failed,
                                               "measures": [m.as_dict() for m in measures]}, indent=1))
        console.print(f"written: {json_file}")
    if failed:
        fail(f"{', '.join(failed)} failed (output above)", code=1)


@app.command()
def soak(
    minutes: int = typer.Option(375, "--minutes", min=10, max=375, help="Session minutes to play (a whole day: 375)."),
    speed: float = typer.Option(30.0, "--speed", min=1.0, max=120.0, help="Clock speed, x real time."),
    strikes: int = typer.Option(50, "--strikes", min=1, max=200, help="Strikes each side of ATM (full universe: 50)."),
    index: list[str] = typer.Option([], "--index", help="Indices to play (default: all six); repeatable."),
    root: str = typer.Option(None, "--root", help="Keep the soak's data here (default: a temporary folder)."),
    markdown: str = typer.Option(None, "--markdown", help="Also write the table as Markdown (for the README)."),
) -> None:
    """Play a whole session of the full universe through `optask up` with a schedule of faults (Redis, worker
    and up killed, a late and a doubled beat, the clock stepping back) and print what the product made of it:
    faults, alerts raised and resolved, minutes self-healed, score per index, duplicates, wall time, peak
    memory per process. Exit 0 when the day verifies 100 with no duplicate, 1 otherwise. A whole day takes
    about 15 minutes at the default speed; it starts its own stack on free ports and leaves nothing running."""
    import os
    import platform
    import tempfile
    from pathlib import Path

    from optask.soak import run_soak

    indices = tuple(_indices_option(index)) if index else None
    work = Path(root) if root else Path(tempfile.mkdtemp(prefix="optask-soak-"))
    result = run_soak(work, minutes=minutes, speed=speed, strikes=strikes, indices=indices,
                      echo=lambda line: console.print(line, highlight=False, markup=False))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    table = Table(title=f"optask soak ({machine}, {dt.date.today().isoformat()})", title_justify="left")
    table.add_column("measure")
    table.add_column("result", overflow="fold")
    for key, value in result.rows():
        table.add_row(key, value)
    (console if console.is_terminal else Console(width=200)).print(table)
    if markdown:
        Path(markdown).write_text(result.markdown(machine, dt.date.today().isoformat()) + "\n")
        console.print(f"written: {markdown}")
    if not root:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    v = result.verdict
    if v.score != 100 or v.duplicate_keys or v.unreadable_files:
        raise typer.Exit(1)


@app.command()
def up() -> None:
    """Run the whole stack here: Redis, a worker, beat and Flower, until Ctrl-C, SIGTERM or SIGHUP.

    Children stop in order (beat, Flower, the worker after its running tasks, the Redis it started)
    and die with it even if it is killed. Exit status: 0 stopped by a signal, 2 a child failed to
    start or died past its restart limit (the reason in one line), or another `up` runs on this data root.
    """
    from optask.services import RedisUnavailable
    from optask.stack import run_up

    try:
        code = run_up(get_settings(), console, err)
    except RedisUnavailable as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def demo(
    minutes: int = typer.Option(0, "--minutes", min=0, help="Session minutes to play; 0 = the whole session."),
    speed: float = typer.Option(300.0, "--speed", min=1.0, help="Clock speed, x real time."),
    indices: str = typer.Option("", "--indices", help="Comma-separated indices; default OPTASK_INDICES."),
    day: str = typer.Option("", "--day", help="Session to simulate, YYYY-MM-DD; default the latest closed one."),
    data_dir: str = typer.Option("", "--data-dir", help="Where the demo writes; default BASE_DATA_DIR/demo."),
) -> None:
    """Drive a simulated session through the real broker, worker and stores at an accelerated clock."""
    from pathlib import Path

    from optask.demo import run_demo
    from optask.schema import INDICES

    settings = get_settings()
    chosen = [i.strip().upper() for i in indices.split(",") if i.strip()] or list(settings.market.indices)
    unknown = [i for i in chosen if i not in INDICES]
    if unknown:
        fail(f"--indices: unknown index {','.join(unknown)}; allowed: {','.join(INDICES)}")
    the_day = parse_day(day, "--day") if day else None
    root = Path(data_dir).resolve() if data_dir else settings.data.root / "demo"
    with console.status("starting Redis and a worker ...") as status:
        def progress(ts: str, done: int, total: int) -> None:
            status.update(f"stored {done}/{total} index-minutes (last {ts})")

        try:
            summary = run_demo(settings, root, minutes=minutes or None, speed=speed, indices=chosen, day=the_day,
                               on_minute=progress)
        except ValueError as exc:
            fail(str(exc))
    p50, p99 = summary.latency_quantiles()
    table = Table(title=f"optask demo: simulated session of {summary.day}", show_header=False)
    table.add_column("what", style="cyan")
    table.add_column("value")
    table.add_row("minutes x indices", f"{summary.minutes} x {len(summary.indices)} ({', '.join(summary.indices)})")
    table.add_row("stored / missed", f"{summary.stored} / {summary.missed}")
    table.add_row("legs", f"{summary.legs:,}")
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    table.add_row("tick -> stored", f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    for store, rows in summary.rows.items():
        table.add_row(f"rows in {store}", f"{rows:,}")
    for index, c in (summary.completeness.get("indices") or {}).items():
        table.add_row(f"completeness {index}", f"{c.get('stored', 0)}/{c.get('expected', 0)} minutes")
    table.add_row("files", str(root))
    console.print(table)


def main() -> None:
    try:
        app()
    except SettingsError as exc:  # settings read lazily inside a verb
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
