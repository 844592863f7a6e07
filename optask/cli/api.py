"""The read side: `optask serve` and the API's tokens (`optask api token create|list|revoke`)."""

from __future__ import annotations

import typer
from rich.table import Table

from optask.cli.app import app, console, fail, when
from optask.core.config import get_settings

api_app = typer.Typer(no_args_is_help=True, help="The HTTP API's tokens (`optask serve` serves it).")
token_app = typer.Typer(no_args_is_help=True, help="Read-only API tokens, stored hashed in Redis.")
api_app.add_typer(token_app, name="token")
app.add_typer(api_app, name="api")
#: How long `optask serve` waits for a configured Redis to answer before it gives up (exit 2).
REDIS_WAIT_S = 30.0


@app.command()
def serve(
    host: str = typer.Option("", help="Address to bind (default API_HOST, 127.0.0.1)."),
    port: int = typer.Option(0, help="Port (default API_PORT, 8008)."),
    workers: int = typer.Option(0, min=0, max=64, help="API processes (default API_WORKERS, 1); they share tokens "
                                "and the rate limit."),
) -> None:
    """Serve every stored minute over HTTP (/v1; docs at /docs) until Ctrl-C or SIGTERM.

    Reads the stores under BASE_DATA_DIR and never writes them; Redis (the stack's, or the bundled one for
    this command's lifetime) holds the tokens and rate limits and tells it what is new.
    """
    from optask.api.server import PortInUse, check_port
    from optask.api.server import serve as run_server
    from optask.infra.redis_server import RedisUnavailable, redis_for_command, wait_for_redis

    settings = get_settings()
    try:
        if settings.redis.effective_url():  # started with the stack, or after Redis restarts: give it time to answer
            wait_for_redis(settings.redis.effective_url(), REDIS_WAIT_S)
        h, p = host or settings.api.host, port or settings.api.port
        check_port(h, p)  # before anything is started or printed: a taken port is one line and exit 2
        with redis_for_command(settings):
            console.print(f"optask API on http://{h}:{p}/v1 (page http://{h}:{p}/, docs http://{h}:{p}/docs), data "
                          f"{settings.data.root}", highlight=False)
            run_server(settings, h, p, workers or settings.api.workers)
    except (PortInUse, RedisUnavailable, RuntimeError) as exc:
        fail(str(exc))


@token_app.command("create")
def token_create(name: str = typer.Argument(..., help="Who or what the token is for, e.g. notebook.")) -> None:
    """Make a token and print it once, alone on the last line (only its hash is kept)."""
    from optask.api.tokens import TokenError, Tokens
    from optask.infra.redis_client import connect
    from optask.infra.redis_server import redis_for_command

    with redis_for_command(get_settings()) as url:
        try:
            token = Tokens(connect(url)).create(name)
        except TokenError as exc:
            fail(str(exc))
    console.print(f"token {name!r} made; it is shown only now: keep it (send it as 'Authorization: Bearer TOKEN')",
                  highlight=False)
    print(token)


@token_app.command("list")
def token_list() -> None:
    """Every token's name, when it was made and last used (never the token)."""
    from optask.api.tokens import Tokens
    from optask.infra.redis_client import connect
    from optask.infra.redis_server import redis_for_command

    with redis_for_command(get_settings()) as url:
        rows = Tokens(connect(url)).list()
    table = Table("name", "id", "created", "last used", title=f"{len(rows)} API tokens", title_justify="left")
    for t in rows:
        table.add_row(t["name"], t["id"], when(t["created_at"]), when(t["last_used_at"]) if t["last_used_at"] else "never")
    console.print(table)


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke a token: every API process refuses it from its next request."""
    from optask.api.tokens import TokenError, Tokens
    from optask.infra.redis_client import connect
    from optask.infra.redis_server import redis_for_command

    with redis_for_command(get_settings()) as url:
        try:
            Tokens(connect(url)).revoke(name)
        except TokenError as exc:
            fail(str(exc))
    console.print(f"token {name!r} revoked", highlight=False)
