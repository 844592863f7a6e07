"""Proving it: benchmarks and the soak. Their machinery is test code (`optask.testkit`), imported in the verb."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from optask.cli.app import app, console, fail, indices_option


@app.command()
def bench(
    json_file: str = typer.Option(None, "--json", help="Also write every measure, with its runs, to this file."),
    only: list[str] = typer.Option([], "--only", help="Run only these scripts (e.g. bench_storage.py); repeatable."),
    repeats: int = typer.Option(3, "--repeats", min=3, help="Repeats of every measure (at least 3)."),
) -> None:
    """Run every benchmark (bench/bench_*.py, from a clone) and print one table: each measure, optask's
    figure and the baseline measured in the same run as median (min-max), their ratio, the goal, and whether
    every repeat meets it. Takes about 55 minutes on 2 cores (bench_ticker.py alone plays six sessions through
    the stack, 17 minutes; bench_api.py 11, bench_stream.py 6, bench_abuse.py 5). Exit 1 when a script failed."""
    import os

    from optask.testkit.bench_report import BENCH_DIR, SCRIPTS, fmt, goal_text, run_all

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
    days: int = typer.Option(1, "--days", min=1, max=60, help="Calendar days to play (more than 1: weekends, "
                             "holidays and expiries, a row per day; from --start)."),
    start: str = typer.Option("2026-11-21", "--start", help="With --days: the first day (default: Sat 2026-11-21)."),
    holiday: list[str] = typer.Option(["2026-11-27"], "--holiday", help="With --days: a holiday declared in the "
                                      "overrides file (repeatable; default Fri 2026-11-27)."),
    retention_days: int = typer.Option(3, "--retention-days", min=1, help="With --days: LEDGER_RETENTION_DAYS, "
                                       "short so that Redis is seen to stay flat once the window is full."),
) -> None:
    """Play a whole session of the full universe through `optask up` with a schedule of faults (Redis, worker
    and up killed, a late and a doubled beat, the clock stepping back) and print what the product made of it:
    faults, alerts raised and resolved, minutes self-healed, score per index, duplicates, wall time, peak
    memory per process. Exit 0 when the day verifies 100 with no duplicate, 1 otherwise. A whole day takes
    about 15 minutes at the default speed; it starts its own stack on free ports and leaves nothing running."""
    from pathlib import Path

    from optask.core.clock import WallClock
    from optask.core.timeutils import IST
    from optask.testkit.soak import run_soak

    indices = tuple(indices_option(index)) if index else None
    work = Path(root) if root else Path(tempfile.mkdtemp(prefix="optask-soak-"))
    if days > 1:
        raise typer.Exit(_soak_days(work, days, start, holiday, retention_days, speed, strikes, indices, markdown,
                                    keep=bool(root)))
    result = run_soak(work, minutes=minutes, speed=speed, strikes=strikes, indices=indices,
                      echo=lambda line: console.print(line, highlight=False, markup=False))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    today = WallClock().now().astimezone(IST).date().isoformat()
    table = Table(title=f"optask soak ({machine}, {today})", title_justify="left")
    table.add_column("measure")
    table.add_column("result", overflow="fold")
    for key, value in result.rows():
        table.add_row(key, value)
    (console if console.is_terminal else Console(width=200)).print(table)
    if markdown:
        Path(markdown).write_text(result.markdown(machine, today) + "\n")
        console.print(f"written: {markdown}")
    if not root:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    v = result.verdict
    if v.score != 100 or v.duplicate_keys or v.unreadable_files:
        raise typer.Exit(1)


def _soak_days(work, days: int, start: str, holidays: list[str], retention_days: int, speed: float, strikes: int,
               indices, markdown: str | None, keep: bool) -> int:
    """`optask soak --days N`: a row per calendar day, then what grew; 0 when nothing should worry anyone."""
    import datetime as dt
    import shutil

    from optask.core.clock import WallClock
    from optask.core.timeutils import IST
    from optask.testkit.soak_days import COLUMNS, run_soak_days

    try:
        first, off = dt.date.fromisoformat(start), tuple(dt.date.fromisoformat(h) for h in holidays)
    except ValueError as exc:
        fail(f"--start and --holiday take dates like 2026-11-21 ({exc})")
    result = run_soak_days(work, days, first, off, speed, strikes, indices, retention_days=retention_days,
                           echo=lambda line: console.print(line, highlight=False, markup=False))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    today = WallClock().now().astimezone(IST).date().isoformat()
    title = f"optask soak --days {days} ({machine}, {today})"
    table = Table(title=title, title_justify="left")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for row in result.rows:
        table.add_row(*row.cells())
    out = console if console.is_terminal else Console(width=250)
    out.print(table)
    for key, value in result.verdict.items():
        out.print(f"{key}: {value}", highlight=False)
    if markdown:
        Path(markdown).write_text(result.markdown(title) + "\n")
        console.print(f"written: {markdown}")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result.ok else 1
