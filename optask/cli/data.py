"""Data verbs: fetch one minute, verify a day, backfill what the stores lack."""

from __future__ import annotations

import typer
from rich.table import Table

from optask.cli.app import app, console, fail, indices_option, parse_day, show_verification
from optask.core.config import get_settings


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
    import time
    from contextlib import ExitStack
    from pathlib import Path

    from optask.core.schema import INDICES
    from optask.infra.redis_server import RedisUnavailable, redis_for_command
    from optask.providers import PROVIDERS, ProviderError, get_provider

    index = index.strip().upper()
    if index not in INDICES:
        fail(f"--index: unknown index {index!r}; allowed: {', '.join(INDICES)}")
    if provider and provider not in PROVIDERS:
        fail(f"--provider: unknown provider {provider!r}; allowed: {', '.join(PROVIDERS)}")
    if out and Path(out).suffix not in (".csv", ".parquet"):
        fail(f"--out: {out!r} must end in .csv or .parquet")
    settings = get_settings()
    ts = _minute_to_collect(at, settings)
    try:
        with ExitStack() as servers:
            if (provider or settings.market.provider) == "kite":
                servers.enter_context(redis_for_command(settings))
            source = get_provider(provider or None, settings)
            start = time.perf_counter()
            snap = source.snapshot(index, ts)
            took = time.perf_counter() - start
    except (ProviderError, RedisUnavailable) as exc:
        fail(str(exc))
    _show_snapshot(snap, index, ts, took)
    if out:
        _write_legs(snap.table, Path(out))


def _minute_to_collect(at: str, settings):
    """`--at` (checked to be a session minute), else now in session, else the last minute of the last session."""
    from optask.core.calendar import get_calendar
    from optask.core.clock import WallClock
    from optask.core.timeutils import IST, TimestampParseError, floor_minute, parse_minute

    calendar = get_calendar(settings.data.calendar_overrides)
    if at:
        try:
            ts = parse_minute(at)
        except TimestampParseError as exc:
            fail(f"--at: {exc}")
        if not calendar.in_session(ts):
            fail(f"--at: {ts.astimezone(IST):%Y-%m-%d %H:%M} IST is outside a market session")
        return ts
    now = floor_minute(WallClock().now())
    if calendar.in_session(now):
        return now
    return calendar.session_minutes(calendar.last_closed_session(now))[-1].to_pydatetime()


def _show_snapshot(snap, index: str, ts, took: float) -> None:
    from optask.core.timeutils import IST

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


def _write_legs(t, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(t, path)
    else:
        from optask.storage.csv import to_csv_bytes

        path.write_bytes(to_csv_bytes(t, header=True))
    console.print(f"wrote {path}")


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

    from optask.core.calendar import get_calendar
    from optask.quality.verify import DayVerifier

    settings = get_settings()
    the_day = parse_day(day, "--day")
    if get_calendar(settings.data.calendar_overrides).session(the_day) is None:
        fail(f"--day {the_day} is not a market session (weekend or holiday); see `optask calendar`")
    chosen = indices_option(index) or list(settings.market.indices)
    verifier = DayVerifier(settings)
    results = verifier.verify(the_day, indices=chosen)
    path = verifier.save(results)
    if as_json:
        typer.echo(json.dumps(results.as_dict(), indent=2, default=str))
        code = {"PASS": 0, "WARN": 1}.get(results.overall_status, 2)
    else:
        code = show_verification(results)
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
    from optask.infra.celery_client import celery_client
    from optask.infra.redis_server import RedisUnavailable, redis_for_command
    from optask.jobs import backfill as bf

    settings = get_settings()
    chosen = indices_option(index)
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
            outcome = bf.BackfillOutcome(_run_with_progress(plan, settings, client, workers))
            client.close()
            console.print(outcome.line())
            for e in outcome.errors[:10]:
                console.print(f"[red]failed:[/red] {e['index']} {e['day']}: {e['error']}", highlight=False)
            bf.finish(plan, settings)
            code = max(outcome.exit_code, _verify_days(plan.days, chosen, settings))
    except RedisUnavailable as exc:
        fail(str(exc))
    raise typer.Exit(code)


def _run_with_progress(plan, settings, client, workers: list[str]) -> list[dict]:
    """The chunks on the maintenance workers (or here), with a progress bar per index."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from optask.jobs import backfill as bf

    progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    bars = {i: progress.add_task(i, total=n) for i, n in plan.minutes_by_index().items()}
    with progress:
        def advance(idx: str, n: int) -> None:
            progress.advance(bars[idx], n)

        if workers:
            return bf.wait(bf.enqueue(plan, client), on_progress=advance)
        return bf.run_here(plan, settings, on_progress=advance)


def _verify_days(days, indices: list[str], settings) -> int:
    """Verify each day, write its report, show it; the worst exit status."""
    from optask.quality.verify import DayVerifier

    verifier = DayVerifier(settings)
    code = 0
    for day in days:
        results = verifier.verify(day, indices=indices)
        verifier.save(results)
        code = max(code, show_verification(results))
    return code
