"""The API application: FastAPI with the docs served from the package (no CDN), bearer tokens and a shared
rate limit in front of /v1, and every refusal as one JSON body that names what was wrong."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
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
from optask.api.live import Hub
from optask.api.params import ApiError
from optask.api.state import ServerState
from optask.api.tokens import AUTHORIZE, Sessions, TokenLedger, credential
from optask.core.calendar import get_calendar
from optask.core.config import Settings, get_settings
from optask.infra.redis_client import connect_async
from optask.infra.redis_server import client_for, url_if_running

log = logging.getLogger("optask.api")
BUILDERS = 2


def _error(status: int, parameter: str | None, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, parameter, message).body(), status_code=status, headers=headers)


class TokenGate:
    """The ASGI app uvicorn runs: in front of FastAPI, every /v1 request (and WebSocket) needs a known token within
    its rate limit, else 401 or 429 (one Redis round trip, tokens.AUTHORIZE); the limit's headers go on every
    answer. The token comes as `Authorization: Bearer`, or from the page's session cookie. A chain asked again
    before its index changed is answered here from the kept bytes."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app, self.limit, self.window = app, settings.api.rate_limit, settings.api.rate_window_s

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or not scope["path"].startswith("/v1") or scope.get("method") == "OPTIONS" \
                or (scope["path"] == "/v1/session" and scope["method"] == "GET"):
            return await self.app(scope, receive, send)  # lifespan, the page and its login check, docs, CORS preflight
        state: ServerState = self.app.state.optask
        headers = dict(scope["headers"])
        refuse = _refuse_socket if kind == "websocket" else _refuse_http
        sha, by_cookie = await credential(headers, state.sessions)
        if sha is None:
            return await refuse(scope, receive, send, 401, "an API token is needed: send 'Authorization: Bearer "
                                "TOKEN' (make one with `optask api token create NAME`), or log in on the page",
                                {"WWW-Authenticate": "Bearer"})
        if by_cookie and kind == "websocket" and not _same_origin(headers):
            return await refuse(scope, receive, send, 403, "a WebSocket opened with the page's session must come "
                                "from the page's own origin")
        try:
            verdict = await state.tokens.check_digest(sha)
        except Exception as exc:  # noqa: BLE001 - Redis away: refuse plainly rather than serve unauthenticated
            log.warning("cannot check a token: %s", exc)
            return await refuse(scope, receive, send, 503, "the API cannot reach its Redis to check tokens; try "
                                "again shortly", {"Retry-After": "5"})
        if not verdict.known:
            return await refuse(scope, receive, send, 401, "this token is not known (revoked, or never made here)",
                                {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        left = max(0, self.limit - verdict.count)
        extra = [(b"x-ratelimit-limit", str(self.limit).encode()), (b"x-ratelimit-remaining", str(left).encode()),
                 (b"x-ratelimit-reset", str(verdict.reset_s).encode())]
        if verdict.count > self.limit:
            limits = {k.decode(): v.decode() for k, v in extra} | {"Retry-After": str(verdict.reset_s)}
            return await refuse(scope, receive, send, 429, f"token {verdict.name!r} made more than {self.limit} "
                                f"requests in {self.window} s; retry after {verdict.reset_s} s", limits)
        scope.setdefault("state", {}).update(token=verdict.name, token_sha=sha)
        if kind == "websocket":
            return await self.app(scope, receive, send)

        kept = state.kept_answer(scope["path"], scope["query_string"].decode("latin-1"))
        if kept is not None:  # the same question since the index last changed: skip routing and parsing
            return await _send_kept(headers, send, state, *kept, extra)

        async def send_with_limits(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return await self.app(scope, receive, send_with_limits)


def _same_origin(headers: dict) -> bool:
    origin = headers.get(b"origin", b"").decode("latin-1")
    return not origin or origin.split("://", 1)[-1] == headers.get(b"host", b"").decode("latin-1")


async def _refuse_http(scope, receive, send, status: int, message: str, headers: dict | None = None) -> None:
    await _error(status, None if status in (403, 429, 503) else "Authorization", message, headers)(scope, receive, send)


async def _refuse_socket(scope, receive, send, status: int, message: str, headers: dict | None = None) -> None:
    """A WebSocket refused with a close code of 4000 + the HTTP status and the reason (browsers cannot read the
    body of a refused handshake)."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})


async def _send_kept(headers: dict, send, state: ServerState, etag: str, body: bytes, extra: list) -> None:
    fresh = routes.holds(headers.get(b"if-none-match", b"").decode("latin-1"), etag)
    out = [(b"etag", etag.encode()), (b"x-stored-cursor", state.last_event_id.encode()),
           (b"cache-control", b"no-cache"), *extra]
    if not fresh:
        out += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 304 if fresh else 200, "headers": out})
    await send({"type": "http.response.body", "body": b"" if fresh else body})


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


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


def create_app(settings: Settings | None = None) -> TokenGate:
    settings = settings or get_settings()
    url, why = url_if_running(settings)
    if url is None:
        raise RuntimeError(why)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Answers are built in two threads (reads release the GIL, building holds it): more would only take turns
        # on the GIL, and a shorter switch interval keeps the event loop answering kept answers meanwhile.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(BUILDERS, thread_name_prefix="build"))
        sys.setswitchinterval(0.001)
        client, events = connect_async(url), connect_async(url, timeout_s=15.0)  # events: its read blocks 5 s
        state = ServerState(Catalog.from_settings(settings), get_calendar(settings.data.calendar_overrides), client,
                            tuple(settings.market.indices), sync_redis=client_for(settings), settings=settings)
        state.tokens = TokenLedger(client, settings.api.rate_window_s, await client.script_load(AUTHORIZE))
        state.sessions = Sessions(client, settings.api.session_hours * 3600)
        state.hub = Hub(client, functools.partial(routes.chain_of, state), settings.api.push_queue)
        await state.start_cursor()
        await asyncio.to_thread(state.load_latest)
        app.state.optask = state
        chores = [asyncio.create_task(state.follow(events)), asyncio.create_task(state.tokens.flush_forever())]
        try:
            yield
        finally:
            for task in chores:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.aclose()
            await events.aclose()

    app = FastAPIOffline(title="optask", version=__version__, lifespan=lifespan,
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

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        """For supervisors and probes: no token, no data; the newest stored-minute event this process saw, and how many
        push subscribers it has (and has dropped)."""
        state = app.state.optask
        return {"ok": True, "stored_cursor": state.last_event_id, "subscribers": len(state.hub.subscribers),
                "subscribers_dropped": state.hub.dropped}

    if settings.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.api.cors_origins), allow_methods=["GET"],
                           allow_headers=["Authorization", "If-None-Match"],
                           expose_headers=["ETag", "X-Stored-Cursor", "X-Next-Cursor", "X-RateLimit-Limit",
                                           "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"])
    app.openapi = functools.partial(_openapi_without_422, app, app.openapi)
    return TokenGate(app, settings)


def app_from_env() -> TokenGate:
    """uvicorn's factory when it runs several worker processes (`API_WORKERS`)."""
    return create_app()

