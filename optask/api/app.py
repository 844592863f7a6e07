"""The API application: FastAPI with the docs served from the package (no CDN), bearer tokens and a shared
rate limit in front of /v1, and every refusal as one JSON body that names what was wrong."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from optask import __version__
from optask.api import page, routes, stream
from optask.api.catalog import Catalog
from optask.api.gate import TokenGate
from optask.api.live import Hub
from optask.api.params import ApiError
from optask.api.state import ServerState
from optask.api.tokens import AUTHORIZE, Sessions, TokenLedger
from optask.core.calendar import get_calendar
from optask.core.config import Settings, get_settings
from optask.infra.redis_client import connect_async
from optask.infra.redis_server import client_for, url_if_running

log = logging.getLogger("optask.api")
BUILDERS = 2


def _error(status: int, parameter: str | None, message: str, headers: dict | None = None) -> JSONResponse:
    return ApiError(status, parameter, message).response(headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = first["loc"][-1] if first.get("loc") else None
    given = first.get("input")
    return _error(400, str(where), f"{where}={given!r}: {first.get('msg', 'not allowed')}")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, None, str(exc.detail), getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("error answering %s", request.url.path)
    return _error(500, None, "internal error answering this request; the server's log has the details")


def _openapi_without_422(app: FastAPI, build):
    """FastAPI documents a 422 for every parameter check; this API answers those with a 400 (documented)."""
    if app.openapi_schema is None:
        spec = build()
        for path in spec.get("paths", {}).values():
            for op in path.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            spec.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = spec
    return app.openapi_schema


def create_app(settings: Settings | None = None):
    """The ASGI app uvicorn runs: CORS (when configured) outside the token gate, so that its own refusals carry
    the CORS headers too; the gate outside FastAPI."""
    settings = settings or get_settings()
    url, why = url_if_running(settings)
    if url is None:
        raise RuntimeError(why)
    app = FastAPIOffline(title="optask", version=__version__, lifespan=functools.partial(_lifespan, settings, url),
                         description="Every stored minute of Indian index-option chains: the chain as of any "
                         "minute, history, series and coverage. Every /v1 call needs 'Authorization: Bearer TOKEN' "
                         "(`optask api token create NAME`).")
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(routes.router)
    app.include_router(stream.router)
    page.mount(app)
    app.add_api_route("/healthz", _healthz, include_in_schema=False)
    app.openapi = functools.partial(_openapi_without_422, app, app.openapi)
    gate = TokenGate(app, settings)
    if not settings.api.cors_origins:
        return gate
    return CORSMiddleware(gate, allow_origins=list(settings.api.cors_origins), allow_methods=["GET"],
                          allow_headers=["Authorization", "If-None-Match"],
                          expose_headers=["ETag", "X-Stored-Cursor", "X-Next-Cursor", "X-Rows", "X-RateLimit-Limit",
                                          "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"])


@contextlib.asynccontextmanager
async def _lifespan(settings: Settings, url: str, app: FastAPI):
    # Answers are built in two threads (reads release the GIL, building holds it): more would only take turns on
    # the GIL, and a shorter switch interval keeps the event loop answering kept answers meanwhile.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(BUILDERS, thread_name_prefix="build"))
    sys.setswitchinterval(0.001)
    client, events = connect_async(url), connect_async(url, timeout_s=15.0)  # events: its read blocks 5 s
    api = settings.api
    state = ServerState(Catalog.from_settings(settings), get_calendar(settings.data.calendar_overrides), client,
                        tuple(settings.market.indices), sync_redis=client_for(settings), settings=settings)
    state.tokens = TokenLedger(client, api.rate_window_s, await client.script_load(AUTHORIZE), api.rate_limit)
    state.sessions = Sessions(client, api.session_hours * 3600, api.sessions_per_token)
    state.hub = Hub(client, state.chains.pushed, api.push_queue, api.replay_max, lambda index: state.latest_day(index))
    state.heavy = routes.Turns(api.heavy_concurrency)
    await state.start_cursor()
    state.redis_state = "ok"  # it just answered
    await asyncio.to_thread(state.load_latest)
    app.state.optask = state
    threading.Thread(target=state.warm_calendar, name="calendar", daemon=True).start()  # not a builder's time
    chores = [asyncio.create_task(c) for c in (state.follow(events), state.watch_redis(events), stream.watch(state),
                                               state.tokens.flush_forever())]
    _close_streams_on_exit_signals(state)
    try:
        yield
    finally:
        for task in chores:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.aclose()
        await events.aclose()


def _close_streams_on_exit_signals(state: ServerState) -> None:
    """On SIGTERM or SIGINT, before uvicorn's own handler starts its graceful shutdown, tell every push subscriber
    the server is stopping and end its stream: an open stream never holds the process (it is a chain of handlers:
    uvicorn's, in every worker process, comes next)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        before = signal.getsignal(signum)

        def handler(sig, frame, before=before) -> None:
            loop.call_soon_threadsafe(state.hub.close_all, "the server is shutting down; reconnect shortly")
            if callable(before):
                before(sig, frame)

        with contextlib.suppress(ValueError):  # not the main thread (an app run by a test client): nothing to do
            signal.signal(signum, handler)


async def _healthz(request: Request) -> JSONResponse:
    """For supervisors, probes and proxies: no token, no data. 200 while Redis answers (asked every second) and
    the stored-minute events are followed, else 503 saying which is down; the newest event seen, the push
    subscribers. Answered from what the process knows: it waits on nothing."""
    state: ServerState = request.app.state.optask
    events = "following" if state.following is None else state.following
    ok = state.redis_state == "ok" and state.following is None
    return JSONResponse({"ok": ok, "redis": state.redis_state, "events": events, "stored_cursor": state.last_event_id,
                         "subscribers": len(state.hub.subscribers), "subscribers_dropped": state.hub.dropped},
                        status_code=200 if ok else 503)


def app_from_env() -> TokenGate:
    """uvicorn's factory when it runs several worker processes (`API_WORKERS`)."""
    return create_app()

