"""Setting up: the effective settings, the market calendar, the Redis optask uses, Kite's token."""

from __future__ import annotations

import datetime as dt

import typer
from rich.table import Table

from optask.cli.app import app, console, err, fail, kite_app, parse_day, redis_app
from optask.core.config import get_settings


@app.command()
def config(
    example: bool = typer.Option(False, "--example", help="Print a documented .env.example with the defaults instead."),
) -> None:
    """Print the effective settings, grouped; secrets as ***."""
    if example:
        from optask.core.config_text import env_example_text

        typer.echo(env_example_text())
        return
    from optask.core.config_text import ignored_settings

    settings = get_settings()
    for group, rows in settings.display().items():
        table = Table(title=group, title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column("variable", style="cyan")
        table.add_column("value")
        for name, value in rows.items():
            table.add_row(name, value)
        console.print(table)
        console.print()
    for line in ignored_settings(settings):
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False)


@app.command()
def calendar(
    from_: str = typer.Option(..., "--from", help="First day, YYYY-MM-DD."),
    to: str = typer.Option(..., "--to", help="Last day, YYYY-MM-DD."),
) -> None:
    """List market sessions between two days, with open and close in IST."""
    from optask.core.calendar import CalendarError, get_calendar

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
    from optask.core.config import mask_url
    from optask.infra.redis_server import RedisElsewhere, bundled_redis_url, redis_ping

    settings = get_settings()
    url = settings.redis.effective_url()
    if url:
        ok = redis_ping(url)
        console.print(f"configured Redis {mask_url(url)}: {'up' if ok else 'DOWN'}")
        raise typer.Exit(0 if ok else 1)
    try:
        url = bundled_redis_url(settings.data.root)
    except RedisElsewhere as exc:
        fail(str(exc))
    console.print(f"bundled Redis: {mask_url(url) + ' up' if url else 'not running'} (data in {settings.data.root / 'redis'}; "
                  "password in its 0600 file `password` there)")
    raise typer.Exit(0 if url else 1)


@redis_app.command("start")
def redis_start() -> None:
    """Start the bundled Redis (or reuse the running one); a configured Redis is only checked."""
    from optask.core.config import mask_url
    from optask.infra.redis_server import RedisElsewhere, RedisUnavailable, ensure_redis, start_bundled_redis

    settings = get_settings()
    try:
        if settings.redis.configured:
            console.print(f"using configured Redis {mask_url(ensure_redis(settings))}")
            return
        url, started = start_bundled_redis(settings.data.root)
    except RedisUnavailable as exc:
        fail(str(exc), 2 if isinstance(exc, RedisElsewhere) else 1)
    console.print(f"bundled Redis {'started' if started else 'already running'} at {mask_url(url)}")


@redis_app.command("stop")
def redis_stop() -> None:
    """Stop the bundled Redis cleanly (its AOF is flushed); a configured Redis is never touched."""
    from optask.infra.redis_server import RedisElsewhere, stop_bundled_redis

    settings = get_settings()
    if settings.redis.configured:
        fail("Redis is configured (REDIS_URL/REDIS_HOST); optask stops only its bundled server", 1)
    try:
        stopped = stop_bundled_redis(settings.data.root)
    except RedisElsewhere as exc:
        fail(str(exc))
    console.print("bundled Redis stopped" if stopped else "bundled Redis was not running")


@kite_app.command("set-token")
def kite_set_token(token: str = typer.Argument(..., help="Today's access token from Kite's login flow.")) -> None:
    """Hand every running worker a new access token (Kite's expire daily); no restart needed.

    It is kept in optask's Redis, so it outlives a restart of the stack but not the day's expiry.
    """
    from optask.infra.redis_client import connect
    from optask.infra.redis_server import url_if_running
    from optask.providers.kite.session import store_token

    settings = get_settings()
    if not settings.kite.api_key:
        fail("KITE_API_KEY is not set: the token belongs to an API key")
    if len(token.strip()) < 8 or any(c.isspace() for c in token.strip()):
        fail("that does not look like a Kite access token (a 32-character string from the login flow)")
    url, why = url_if_running(settings)
    if url is None:
        fail(f"{why}; with the stack stopped, set KITE_ACCESS_TOKEN in .env instead")
    store_token(connect(url), settings.kite.api_key, token.strip(), how="set-token")
    console.print(f"access token for API key {settings.kite.api_key} set ({token.strip()[:4]}***); "
                  "workers use it from their next call")


@kite_app.command("login")
def kite_login(answer: str = typer.Argument("", metavar="[REQUEST_TOKEN | REDIRECT_URL]",
                                            help="The URL Kite redirected to after login, or its request_token; "
                                                 "asked for when left out.")) -> None:
    """The day's Kite login: exchange a request token for the access token (with KITE_API_SECRET) and hand it
    to every worker, as `optask kite set-token` does. Without an argument, prints the login URL and asks."""
    from optask.core.timeutils import IST
    from optask.infra.redis_client import connect
    from optask.infra.redis_server import RedisUnavailable, redis_for_command
    from optask.providers.kite.session import LoginRefused, exchange, login_url, request_token_of, store_token

    settings = get_settings()
    k = settings.kite
    if not k.api_key:
        fail("KITE_API_KEY is not set: the login is for an API key (developers.kite.trade)")
    if not k.api_secret.get_secret_value():
        fail("KITE_API_SECRET is not set: the request token is exchanged with the API key's secret")
    if not answer:
        console.print(f"Log in at\n  {login_url(k.api_key)}\nthen paste the URL Kite sends you to (or its request_token).")
        answer = typer.prompt("redirect URL or request_token")
    try:
        session = exchange(k.api_key, k.api_secret.get_secret_value(), request_token_of(answer), k.root_url, k.timeout_s)
    except LoginRefused as exc:
        fail(str(exc))
    try:
        with redis_for_command(settings) as url:
            meta = store_token(connect(url), k.api_key, session.access_token, session.login_time)
    except RedisUnavailable as exc:
        fail(f"{exc}; the access token was made but could not be handed to the workers: log in again once "
             "Redis answers (a request token works once)")
    dies = dt.datetime.fromisoformat(meta["dies_at"]).astimezone(IST)
    console.print(f"logged in as {session.user_id or 'the API key owner'}; access token {session.access_token[:4]}*** "
                  f"stored for every worker, valid until {dies:%a %d %b %H:%M} IST")
