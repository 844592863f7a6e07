"""The push endpoints: /v1/stream (Server-Sent Events) and /v1/ws (WebSocket), both fed by live.Hub, and
/v1/session, the page's login (a session cookie, so that the browser's EventSource needs no token in a URL)."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from fastapi import APIRouter, Query, Request, Response, Security, WebSocket, WebSocketDisconnect
from fastapi.security import HTTPBearer

from optask.api.live import WHAT, Ask, Hub, Subscriber, checked_event_id
from optask.api.params import ApiError, checked_expiry, checked_index
from optask.api.routes import ERRORS
from optask.api.state import ServerState
from optask.api.tokens import COOKIE, credential

router = APIRouter(prefix="/v1", dependencies=[Security(HTTPBearer(auto_error=False))], responses=ERRORS)
HEARTBEAT_S = 15.0
DROP_GRACE_S = 5.0  # a dropped subscriber's last chance to be told why, before its connection is cut
RETRY_MS = 2000  # EventSource reconnects after this (with Last-Event-ID)


def _checked_ask(state: ServerState, indices, what: str, atm_window, expiry) -> tuple[set[str], Ask]:
    if isinstance(indices, str):
        indices = [i for i in indices.split(",") if i.strip()]
    names = {checked_index(i.strip(), state.indices) for i in indices} if indices else set(state.indices)
    if what not in WHAT:
        raise ApiError(400, "what", f"what={what!r}: one of {', '.join(WHAT)}")
    if atm_window is not None and (not isinstance(atm_window, int) or not 0 <= atm_window <= 500):
        raise ApiError(400, "atm_window", f"atm_window={atm_window!r}: a whole number of strikes, 0 to 500")
    return names, Ask(what, checked_expiry(expiry), atm_window)


@router.get("/stream", summary="Every stored minute, pushed as Server-Sent Events (resume with Last-Event-ID)",
            response_class=Response, responses={200: {"content": {"text/event-stream": {}}}})
async def stream(request: Request, indices: str | None = Query(None, description="Comma-separated (default: all)"),
                 what: str = Query("summary", description="summary, or chain (the /v1/chain document)"),
                 atm_window: int | None = Query(None, ge=0, le=500), expiry: str | None = None,
                 last_event_id: str | None = Query(None, description="Resume after this event id (the "
                                                   "Last-Event-ID header wins)")) -> Response:
    state: ServerState = request.app.state.optask
    names, ask = _checked_ask(state, indices, what, atm_window, expiry)
    after = checked_event_id(request.headers.get("last-event-id") or last_event_id, "Last-Event-ID")
    sub = Subscriber(names, ask, f"token {request.state.token!r}, SSE")
    return EventStream(state.hub, sub, after)


class EventStream(Response):
    """text/event-stream: one `id:`/`event:`/`data:` frame per event, a comment every HEARTBEAT_S, and, when the hub
    drops the subscriber, an `event: close` frame with the reason before the response ends."""

    def __init__(self, hub: Hub, sub: Subscriber, after: str | None) -> None:
        super().__init__(media_type="text/event-stream", headers={"Cache-Control": "no-cache",
                                                                   "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # it is open-ended
        self.hub, self.sub, self.after = hub, sub, after
        self.lock = asyncio.Lock()

    async def __call__(self, scope, receive, send) -> None:
        self.hub.add(self.sub)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        writer = asyncio.create_task(self._write(send))
        tasks = {writer, asyncio.create_task(self._beat(send)), asyncio.create_task(_disconnected(receive)),
                 asyncio.create_task(self.sub.gone.wait())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if writer not in done and self.sub.gone.is_set():  # dropped: the writer sends why, if it can
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
    data. A subscriber that falls behind is closed with code 1013 and the reason."""
    state: ServerState = socket.app.state.optask
    await socket.accept()
    who = f"token {socket.scope.get('state', {}).get('token')!r}, WebSocket"
    sub: Subscriber | None = None
    sender: asyncio.Task | None = None
    try:
        while True:
            try:
                message = orjson.loads(await socket.receive_text())
                action = message.get("action") if isinstance(message, dict) else None
                if action == "subscribe":
                    names, ask = _checked_ask(state, message.get("indices"), message.get("what", "summary"),
                                              message.get("atm_window"), message.get("expiry"))
                    after = checked_event_id(message.get("last_id"), "last_id")
                    await _stop(state.hub, sub, sender)
                    sub = Subscriber(names, ask, who)
                    state.hub.add(sub)
                    sender = asyncio.create_task(_forward(socket, state.hub, sub, after))
                    await socket.send_text(orjson.dumps({"type": "subscribed", "indices": sorted(names),
                                                         "what": ask.what}).decode())
                elif action == "unsubscribe" and sub is not None:
                    sub.indices -= {checked_index(i, state.indices) for i in message.get("indices") or sub.indices}
                    await socket.send_text(orjson.dumps({"type": "unsubscribed",
                                                         "indices": sorted(sub.indices)}).decode())
                else:
                    raise ApiError(400, "action", f"action={action!r}: subscribe or unsubscribe")
            except (orjson.JSONDecodeError, ApiError) as exc:
                text = exc.message if isinstance(exc, ApiError) else f"not JSON: {exc}"
                await socket.send_text(orjson.dumps({"type": "error", "message": text}).decode())
    except WebSocketDisconnect:
        pass
    finally:
        await _stop(state.hub, sub, sender)


async def _forward(socket: WebSocket, hub: Hub, sub: Subscriber, after: str | None) -> None:
    async for batch in hub.batches(sub, after):
        for _event, payload in batch:
            await socket.send_text(payload.decode())
    if sub.closed:  # dropped by the hub (a client that reads nothing at all is cut by the WebSocket ping timeout)
        await asyncio.wait_for(socket.close(code=1013, reason=sub.closed[:120]), DROP_GRACE_S)


async def _stop(hub: Hub, sub: Subscriber | None, sender: asyncio.Task | None) -> None:
    if sub is not None:
        hub.remove(sub)
    if sender is not None and not sender.done():
        if sub is not None and sub.closed:  # let it tell the client why, briefly
            await asyncio.wait({sender}, timeout=DROP_GRACE_S)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


@router.get("/session", summary="Whether this browser's session cookie is logged in (no token needed)")
async def session_state(request: Request) -> dict:
    state: ServerState = request.app.state.optask
    sha, _ = await credential(dict(request.scope["headers"]), state.sessions)
    verdict = await state.tokens.check_digest(sha) if sha else None
    return {"logged_in": bool(verdict and verdict.known), "token": verdict.name if verdict else None}


@router.post("/session", summary="The page's login: a session cookie for the bearer token sent", status_code=204)
async def open_session(request: Request) -> Response:
    state: ServerState = request.app.state.optask
    if request.headers.get("authorization") is None:
        raise ApiError(400, "Authorization", "log in with 'Authorization: Bearer TOKEN'; a session cannot open another")
    sid = await state.sessions.open(request.state.token_sha)
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
