"""The push endpoints: /v1/stream (Server-Sent Events) and /v1/ws (WebSocket), both fed by live.Hub, and
/v1/session, the page's login (a session cookie, so that the browser's EventSource needs no token in a URL).

A stream is bounded like a request: per token and per process (API_STREAMS_PER_TOKEN, API_STREAMS_MAX), its replay
charged to the token's rate limit event by event, a WebSocket's messages limited, and its token (or the session it
came with) checked again every RECHECK_S: a revoked token or a logout ends it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson
import redis
from fastapi import APIRouter, Query, Request, Response, Security, WebSocket, WebSocketDisconnect
from fastapi.security import HTTPBearer

from optask.api.live import LIMITED, REVOKED, WHAT, Ask, Charge, Hub, Subscriber, rounded_window
from optask.api.params import ApiError, checked_expiry, checked_index
from optask.api.replay import checked_event_id
from optask.api.routes import ERRORS
from optask.api.state import ServerState
from optask.api.tokens import COOKIE, LoginRefused, credential

log = logging.getLogger("optask.api")
router = APIRouter(prefix="/v1", dependencies=[Security(HTTPBearer(auto_error=False))], responses=ERRORS)
HEARTBEAT_S = 15.0
DROP_GRACE_S = 5.0  # a dropped subscriber's last chance to be told why, before its connection is cut
RETRY_MS = 2000  # EventSource reconnects after this (with Last-Event-ID)
RECHECK_S = 2.0  # every open stream's token or session is checked again this often
WS_MESSAGES = (20, 60.0)  # a WebSocket may send this many messages in this many seconds


def _checked_ask(state: ServerState, indices, what: str, atm_window, expiry) -> tuple[set[str], Ask]:
    if isinstance(indices, str):
        indices = [i for i in indices.split(",") if i.strip()]
    names = {checked_index(i.strip(), state.indices) for i in indices} if indices else set(state.indices)
    if what not in WHAT:
        raise ApiError(400, "what", f"what={what!r}: one of {', '.join(WHAT)}")
    if atm_window is not None and (not isinstance(atm_window, int) or not 0 <= atm_window <= 500):
        raise ApiError(400, "atm_window", f"atm_window={atm_window!r}: a whole number of strikes, 0 to 500")
    return names, Ask(what, checked_expiry(expiry), rounded_window(atm_window))


def _charger(state: ServerState, sha: str) -> Charge:
    """Charge a stream's replayed events (or WebSocket messages) to its token: why to end it, or None."""
    async def charge(n: int) -> tuple[int, str] | None:
        try:
            verdict = await state.tokens.check_digest(sha, n)
        except redis.RedisError:
            return None  # Redis away: what is open goes on; new requests are refused by the gate
        if not verdict.known:
            return REVOKED, "the token was revoked"
        if verdict.count > state.tokens.limit:
            return LIMITED, (f"token {verdict.name!r} reached its rate limit ({state.tokens.limit} requests in "
                             f"{state.tokens.window_s} s; a replay counts each event): retry after {verdict.reset_s} s")
        return None
    return charge


def _subscriber(state: ServerState, scope: dict, names: set[str], ask: Ask, transport: str) -> Subscriber:
    who = scope.get("state", {})
    return Subscriber(names, ask, f"token {who.get('token')!r}, {transport}", who.get("token_sha"), who.get("session"),
                      _charger(state, who.get("token_sha")))


@router.get("/stream", summary="Every stored minute, pushed as Server-Sent Events (resume with Last-Event-ID)",
            response_class=Response, responses={200: {"content": {"text/event-stream": {}}}})
async def stream(request: Request, indices: str | None = Query(None, description="Comma-separated (default: all)"),
                 what: str = Query("summary", description="summary, or chain (the /v1/chain document)"),
                 atm_window: int | None = Query(None, ge=0, le=500, description="Strikes each side of ATM, rounded "
                                                "up to one of 0-3, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, ..."),
                 expiry: str | None = None,
                 last_event_id: str | None = Query(None, description="Resume after this event id (the "
                                                   "Last-Event-ID header wins)")) -> Response:
    state: ServerState = request.app.state.optask
    names, ask = _checked_ask(state, indices, what, atm_window, expiry)
    after = checked_event_id(request.headers.get("last-event-id") or last_event_id, "Last-Event-ID")
    return EventStream(state, _subscriber(state, request.scope, names, ask, "SSE"), after)


class EventStream(Response):
    """text/event-stream: one `id:`/`event:`/`data:` frame per event, a comment every HEARTBEAT_S, and, when the hub
    lets the subscriber go, an `event: close` frame with the reason before the response ends."""

    def __init__(self, state: ServerState, sub: Subscriber, after: str | None) -> None:
        super().__init__(media_type="text/event-stream", headers={"Cache-Control": "no-cache",
                                                                   "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # it is open-ended
        self.state, self.hub, self.sub, self.after = state, state.hub, sub, after
        self.lock = asyncio.Lock()

    async def __call__(self, scope, receive, send) -> None:
        api = self.state.settings.api
        if (refused := self.hub.open_stream(self.sub.sha, api.streams_per_token, api.streams_max)) is not None:
            headers = {"Retry-After": "30"}
            return await ApiError(refused[0], None, refused[1]).response(headers)(scope, receive, send)
        try:
            await self._serve(receive, send)
        finally:
            self.hub.close_stream(self.sub.sha)

    async def _serve(self, receive, send) -> None:
        self.hub.add(self.sub)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        writer = asyncio.create_task(self._write(send))
        tasks = {writer, asyncio.create_task(self._beat(send)), asyncio.create_task(_disconnected(receive)),
                 asyncio.create_task(self.sub.gone.wait())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if writer not in done and self.sub.gone.is_set():  # let go: the writer sends why, if it can
                await asyncio.wait({writer}, timeout=DROP_GRACE_S)
        finally:
            self.hub.remove(self.sub)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if writer.done() and not writer.cancelled() and writer.exception() is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send, chunk: bytes) -> None:
        async with self.lock:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def _write(self, send) -> None:
        await self._send(send, f"retry: {RETRY_MS}\n\n".encode())
        async for batch in self.hub.batches(self.sub, self.after):
            await self._send(send, b"".join(b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.kind.encode(),
                                                                                  payload) if event else
                                            b"event: lost\ndata: %s\n\n" % payload for event, payload in batch))
        await self._send(send, b"event: close\ndata: %s\n\n" % orjson.dumps({"reason": self.sub.closed}))

    async def _beat(self, send) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self._send(send, b": heartbeat\n\n")


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.websocket("/ws")
async def websocket(socket: WebSocket) -> None:
    """JSON messages: {"action": "subscribe", "indices": [...], "what": "chain", "atm_window": N, "expiry": ...,
    "last_id": "..."} (resume after last_id) and {"action": "unsubscribe", "indices": [...]}; each event as the SSE
    data. A subscriber that falls behind is closed with code 1013 and the reason; 4401 when its token is revoked,
    4429 past its rate limit or WS_MESSAGES, 4503 past API_STREAMS_MAX."""
    state: ServerState = socket.app.state.optask
    sha, api = socket.scope.get("state", {}).get("token_sha"), state.settings.api
    await socket.accept()
    if (refused := state.hub.open_stream(sha, api.streams_per_token, api.streams_max)) is not None:
        return await socket.close(code=4000 + refused[0], reason=refused[1][:120])
    try:
        await _converse(state, socket)
    finally:
        state.hub.close_stream(sha)


async def _converse(state: ServerState, socket: WebSocket) -> None:
    sub: Subscriber | None = None
    sender: asyncio.Task | None = None
    sent: list[float] = []
    charge = _charger(state, socket.scope.get("state", {}).get("token_sha"))
    try:
        while True:
            text = await socket.receive_text()
            sent = [t for t in sent if t > time.monotonic() - WS_MESSAGES[1]] + [time.monotonic()]
            stop = (LIMITED, f"more than {WS_MESSAGES[0]} messages in {WS_MESSAGES[1]:.0f} s") \
                if len(sent) > WS_MESSAGES[0] else await charge(1)
            if stop is not None:
                return await socket.close(code=stop[0], reason=stop[1][:120])
            try:
                sub, sender = await _act(state, socket, orjson.loads(text), sub, sender)
            except (orjson.JSONDecodeError, ApiError) as exc:
                text = exc.message if isinstance(exc, ApiError) else f"not JSON: {exc}"
                await socket.send_text(orjson.dumps({"type": "error", "message": text}).decode())
    except WebSocketDisconnect:
        pass
    finally:
        await _stop(state.hub, sub, sender)


async def _act(state: ServerState, socket: WebSocket, message, sub: Subscriber | None, sender: asyncio.Task | None):
    """One subscribe or unsubscribe message: the subscriber and its sender task afterwards."""
    action = message.get("action") if isinstance(message, dict) else None
    if action == "subscribe":
        names, ask = _checked_ask(state, message.get("indices"), message.get("what", "summary"),
                                  message.get("atm_window"), message.get("expiry"))
        after = checked_event_id(message.get("last_id"), "last_id")
        await _stop(state.hub, sub, sender)
        sub = _subscriber(state, socket.scope, names, ask, "WebSocket")
        state.hub.add(sub)
        sender = asyncio.create_task(_forward(socket, state.hub, sub, after))
        await socket.send_text(orjson.dumps({"type": "subscribed", "indices": sorted(names), "what": ask.what,
                                             "atm_window": ask.atm_window}).decode())
    elif action == "unsubscribe" and sub is not None:
        sub.indices -= {checked_index(i, state.indices) for i in message.get("indices") or sub.indices}
        await socket.send_text(orjson.dumps({"type": "unsubscribed", "indices": sorted(sub.indices)}).decode())
    else:
        raise ApiError(400, "action", f"action={action!r}: subscribe or unsubscribe")
    return sub, sender


async def _forward(socket: WebSocket, hub: Hub, sub: Subscriber, after: str | None) -> None:
    async for batch in hub.batches(sub, after):
        for _event, payload in batch:
            await socket.send_text(payload.decode())
    if sub.closed:  # let go by the hub (a client that reads nothing at all is cut by the WebSocket ping timeout)
        await asyncio.wait_for(socket.close(code=sub.code, reason=sub.closed[:120]), DROP_GRACE_S)


async def _stop(hub: Hub, sub: Subscriber | None, sender: asyncio.Task | None) -> None:
    if sub is not None:
        hub.remove(sub)
    if sender is not None and not sender.done():
        if sub is not None and sub.closed:  # let it tell the client why, briefly
            await asyncio.wait({sender}, timeout=DROP_GRACE_S)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def watch(state: ServerState) -> None:
    """For as long as the server runs: every RECHECK_S, each subscriber's token (and the session it came with)
    asked of Redis again; one that was revoked or logged out is closed, saying so."""
    while True:
        await asyncio.sleep(RECHECK_S)
        subs = list(state.hub.subscribers)
        if not subs:
            continue
        try:
            known = await state.tokens.known({s.sha for s in subs if s.sha})
            holders = await state.sessions.holders({s.session for s in subs if s.session})
        except redis.RedisError as exc:
            log.warning("cannot check the open streams' tokens (%s); trying again in %.0f s", exc, RECHECK_S)
            continue
        for sub in subs:
            if sub.session is not None and holders.get(sub.session) != sub.sha:
                state.hub.drop(sub, "the page logged out (its session ended)", REVOKED)
            elif sub.sha not in known:
                state.hub.drop(sub, "the token was revoked", REVOKED)


@router.get("/session", summary="Whether this browser's session cookie is logged in (no token needed)",
            responses={503: {"description": "Redis is away: whether it is logged in cannot be told"}})
async def session_state(request: Request) -> dict:
    state: ServerState = request.app.state.optask
    try:
        sha, _ = await credential(dict(request.scope["headers"]), state.sessions)
        verdict = await state.tokens.check_digest(sha, 0) if sha else None
    except redis.RedisError:
        raise ApiError(503, None, "the API cannot reach its Redis to check this login; try again shortly",
                       headers={"Retry-After": "5"}) from None
    return {"logged_in": bool(verdict and verdict.known), "token": verdict.name if verdict else None}


@router.post("/session", summary="The page's login: a session cookie for the bearer token sent", status_code=204)
async def open_session(request: Request) -> Response:
    state: ServerState = request.app.state.optask
    if request.headers.get("authorization") is None:
        raise ApiError(400, "Authorization", "log in with 'Authorization: Bearer TOKEN'; a session cannot open another")
    try:
        sid = await state.sessions.open(request.state.token_sha)
    except LoginRefused as refused:
        raise ApiError(429, None, str(refused), headers={"Retry-After": str(refused.retry_s)}) from None
    out = Response(status_code=204)
    out.set_cookie(COOKIE, sid, max_age=state.sessions.ttl_s, httponly=True, samesite="strict", path="/",
                   secure=request.url.scheme == "https")
    return out


@router.delete("/session", summary="Log the page out (its session cookie no longer opens anything)", status_code=204)
async def close_session(request: Request) -> Response:
    state: ServerState = request.app.state.optask
    if sid := request.cookies.get(COOKIE):
        await state.sessions.close(sid)
    out = Response(status_code=204)
    out.delete_cookie(COOKIE, path="/")
    return out
