"""The token gate: the ASGI app in front of FastAPI. Every /v1 request (and WebSocket) needs a known token within
its rate limit, else 401 or 429 (one Redis round trip at most, tokens.AUTHORIZE); the limit's headers go on every
answer. The token comes as `Authorization: Bearer`, or from the page's session cookie. A client address that
presents more than AUTH_FAILURES_PER_MINUTE unknown tokens or sessions a minute is refused without asking Redis
(only tokens this process already knows still pass). A chain asked again before its index changed is answered
here from the kept bytes."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import redis
from fastapi import FastAPI

from optask.api import routes
from optask.api.params import ApiError
from optask.api.state import ServerState
from optask.api.tokens import bearer_digest, credential
from optask.core.config import Settings

log = logging.getLogger("optask.api")
AUTH_FAILURES_PER_MINUTE = 30
ADDRESSES_KEPT = 100_000  # client addresses whose failures are counted at once (the oldest are forgotten first)


class Failures:
    """Failed authentications per client address in the current minute, in this process: bounded in memory."""

    def __init__(self, most: int = AUTH_FAILURES_PER_MINUTE) -> None:
        self.most = most
        self.seen: OrderedDict[str, list] = OrderedDict()  # address -> [failures, when its minute started]

    def _entry(self, address: str) -> list | None:
        entry = self.seen.get(address)
        if entry is not None and time.monotonic() - entry[1] >= 60:
            del self.seen[address]
            return None
        return entry

    def retry_s(self, address: str) -> int | None:
        """Seconds until the address may try again, or None when it may now."""
        entry = self._entry(address)
        if entry is None or entry[0] < self.most:
            return None
        return max(1, int(entry[1] + 60 - time.monotonic()) + 1)

    def add(self, address: str) -> None:
        entry = self._entry(address)
        if entry is None:
            entry = self.seen[address] = [0, time.monotonic()]
            while len(self.seen) > ADDRESSES_KEPT:
                self.seen.popitem(last=False)
        entry[0] += 1


class TokenGate:
    """In front of FastAPI: each /v1 request checked (see the module), refusals as one JSON body."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app, self.limit, self.window = app, settings.api.rate_limit, settings.api.rate_window_s
        self.failures = Failures()

    def close_streams(self, reason: str) -> None:
        """Tell every push subscriber `reason` and end its stream (the server is stopping)."""
        state = getattr(self.app.state, "optask", None)
        if state is not None and state.hub is not None:
            state.hub.close_all(reason)

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or not scope["path"].startswith("/v1") or scope.get("method") == "OPTIONS" \
                or (scope["path"] == "/v1/session" and scope["method"] == "GET"):
            return await self.app(scope, receive, send)  # lifespan, the page and its login check, docs, CORS preflight
        state: ServerState = self.app.state.optask
        refuse = _refuse_socket if kind == "websocket" else _refuse_http
        verdict, why = await self._verdict(scope, state)
        if why is not None:
            return await refuse(scope, receive, send, *why)
        left = max(0, self.limit - verdict.count)
        extra = [(b"x-ratelimit-limit", str(self.limit).encode()), (b"x-ratelimit-remaining", str(left).encode()),
                 (b"x-ratelimit-reset", str(verdict.reset_s).encode())]
        if verdict.count > self.limit:
            limits = {k.decode(): v.decode() for k, v in extra} | {"Retry-After": str(verdict.reset_s)}
            return await refuse(scope, receive, send, 429, f"token {verdict.name!r} made more than {self.limit} "
                                f"requests in {self.window} s; retry after {verdict.reset_s} s", limits)
        if kind == "websocket":
            return await self.app(scope, receive, send)
        kept = state.kept_answer(scope["path"], scope["query_string"].decode("latin-1"))
        if kept is not None:  # the same question since the index last changed: skip routing and parsing
            return await _send_kept(dict(scope["headers"]), send, state, *kept, extra)

        async def send_with_limits(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return await self.app(scope, receive, send_with_limits)

    async def _verdict(self, scope, state: ServerState):
        """(the token's verdict, None), or (None, (status, message[, headers])) to refuse the request with."""
        headers = dict(scope["headers"])
        address = (scope.get("client") or ("unknown",))[0]
        if (wait := self.failures.retry_s(address)) is not None and not state.tokens.knows(bearer_digest(headers)):
            return None, (429, f"too many failed authentications from {address} (more than {self.failures.most} a "
                          f"minute); retry after {wait} s", {"Retry-After": str(wait)})
        try:
            sha, session = await credential(headers, state.sessions)
            verdict = await state.tokens.check_digest(sha) if sha else None
        except (redis.RedisError, OSError) as exc:  # Redis away: refuse plainly rather than serve unauthenticated
            log.warning("cannot check a token: %s", exc)
            return None, (503, "the API cannot reach its Redis to check tokens; try again shortly", {"Retry-After": "5"})
        if sha is None and session is None:
            return None, (401, "an API token is needed: send 'Authorization: Bearer TOKEN' (make one with `optask "
                          "api token create NAME`), or log in on the page", {"WWW-Authenticate": "Bearer"})
        if verdict is None or not verdict.known:
            self.failures.add(address)
            what = "session has ended (log in again)" if sha is None else "token is not known (revoked, or never made here)"
            return None, (401, f"this {what}", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if session is not None and scope["type"] == "websocket" and not _same_origin(headers):
            return None, (403, "a WebSocket opened with the page's session must come from the page's own origin")
        scope.setdefault("state", {}).update(token=verdict.name, token_sha=sha, session=session)
        return verdict, None


def _same_origin(headers: dict) -> bool:
    origin = headers.get(b"origin", b"").decode("latin-1")
    return not origin or origin.split("://", 1)[-1] == headers.get(b"host", b"").decode("latin-1")


async def _refuse_http(scope, receive, send, status: int, message: str, headers: dict | None = None) -> None:
    parameter = None if status in (403, 429, 503) else "Authorization"
    await ApiError(status, parameter, message).response(headers)(scope, receive, send)


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
