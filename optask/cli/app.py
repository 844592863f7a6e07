"""The `optask` command's shared parts: the Typer app and its groups, the consoles, and one-line failures."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from optask import __version__
from optask.core.config import SettingsError, get_settings
from optask.core.schema import INDICES
from optask.core.timeutils import IST

if TYPE_CHECKING:
    from optask.quality.results import DayVerification

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
        settings = get_settings()
    except SettingsError as exc:
        fail(str(exc))
    if settings.service.debug:  # DEBUG=true: every logger of the command at debug level
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger().setLevel(logging.DEBUG)


def indices_option(values: list[str]) -> list[str]:
    chosen = [v.strip().upper() for item in values for v in item.split(",") if v.strip()]
    unknown = [i for i in chosen if i not in INDICES]
    if unknown:
        fail(f"--index: unknown index {','.join(unknown)}; allowed: {','.join(INDICES)}")
    return chosen


def show_verification(results: DayVerification) -> int:
    """The compact table a person reads after verify or backfill; returns the exit status (0 PASS, 1 WARN, 2 FAIL)."""
    table = Table(title=f"Verification of {results.day}: {results.overall_status} (score {results.score:.1f})")
    for col in ("index", "score", "status", "missing minutes per store", "findings"):
        table.add_column(col)
    for index, r in results.indices.items():
        gaps = ", ".join(f"{k} {len(c.missing)}" for k, c in r.completeness.items() if c.missing) or "none"
        findings = ", ".join(f"{k} {n}" for k, n in sorted(r.findings_by_kind.items())) or "none"
        style = {"PASS": "green", "WARN": "yellow"}.get(r.status, "red")
        table.add_row(index, f"{r.score:.1f}", f"[{style}]{r.status}[/{style}]", gaps, findings)
    console.print(table)
    return {"PASS": 0, "WARN": 1}.get(results.overall_status, 2)


def when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, IST).strftime("%Y-%m-%d %H:%M:%S IST")
