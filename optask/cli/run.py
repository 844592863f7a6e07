"""Running it: the whole stack (`up`), the Kite ticker, and a demo session."""

from __future__ import annotations

import typer
from rich.table import Table

from optask.cli.app import app, console, err, fail, parse_day
from optask.core.config import get_settings


@app.command()
def ticker() -> None:
    """Stream the day's universe from KiteTicker and cut every session minute (KITE_FETCH=ticker) until a signal.

    `optask up` starts it when OPTASK_PROVIDER=kite and KITE_FETCH=ticker. It needs Redis (the stack's) and
    Kite's API key and access token; a minute it cannot cut is fetched over REST by collect_minute.
    """
    import logging
    import signal as _signal

    from optask.infra.redis_server import url_if_running
    from optask.jobs.ticker import Ticker
    from optask.providers.base import ProviderError

    settings = get_settings()
    if settings.market.provider != "kite" or settings.kite.fetch != "ticker":
        fail("optask ticker streams Kite: set OPTASK_PROVIDER=kite and KITE_FETCH=ticker")
    url, why = url_if_running(settings)
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
def up() -> None:
    """Run the whole stack here: Redis, a worker, beat and Flower, until Ctrl-C, SIGTERM or SIGHUP.

    Children stop in order (beat, Flower, the worker after its running tasks, the Redis it started)
    and die with it even if it is killed. Exit status: 0 stopped by a signal, 2 a child failed to
    start or died past its restart limit (the reason in one line), or another `up` runs on this data root.
    """
    from optask.infra.procutil import unsupported_platform

    if why := unsupported_platform():  # before the supervisor's imports, some of which are POSIX-only
        fail(why)
    from optask.infra.redis_server import RedisUnavailable
    from optask.ops.supervisor import run_up

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
    serve: bool = typer.Option(False, "--serve", help="Then serve what was collected (the page and the API) until "
                               "Ctrl-C."),
) -> None:
    """Drive a simulated session through the real broker, worker and stores at an accelerated clock."""
    from pathlib import Path

    from optask.core.schema import INDICES
    from optask.testkit.demo import run_demo, serve_demo

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
    if serve:
        raise typer.Exit(serve_demo(settings, root, chosen, lambda line: console.print(line, highlight=False)))
    console.print(f"Look at it in a browser: optask demo --serve, or BASE_DATA_DIR={root} optask serve, then "
                  f"http://{settings.api.host}:{settings.api.port}/", highlight=False)
