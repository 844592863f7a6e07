"""API tokens and their rate limit, in Redis so that every API process on every machine agrees.

A token is shown once, when it is made; Redis keeps only its SHA-256 (a token is 256 random bits, so a
plain hash is as strong as a slow one) with its name. One Lua script checks a token, adds the requests
counted for it since the last call to the current window of the limit (on Redis' clock) and notes when it
was last used. Each API process calls it for a token at most every SYNC_S (and at a window's end): in between
it counts locally, so a revoked token is refused and the limit is shared across processes within SYNC_S,
and a request costs no Redis round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass, field

import redis
from starlette.requests import cookie_parser

from optask.infra.coordination import PREFIX

TOKENS = f"{PREFIX}:api:tokens"  # sha256 -> {"name", "created_at"}
USED = f"{PREFIX}:api:token_used"  # sha256 -> last use (Redis time)
RATE = f"{PREFIX}:api:rate"  # :{sha256}:{window start} -> requests in that window
TOKEN_PREFIX = "opt_"

SYNC_S = 0.1
#: ARGV: sha256, window (s), requests to add -> {0} unknown token; {1, count in the window, ms left in it, info}
AUTHORIZE = """
local info = redis.call('HGET', KEYS[1], ARGV[1])
if not info then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2]) * 1000
local start = now - (now % window)
local key = KEYS[2] .. ':' .. ARGV[1] .. ':' .. start
local n = redis.call('INCRBY', key, ARGV[3])
redis.call('PEXPIRE', key, window + 1000)
redis.call('HSET', KEYS[3], ARGV[1], math.floor(now / 1000))
return {1, n, start + window - now, info}
"""


class TokenError(ValueError):
    """A token command that cannot be done (a duplicate or unknown name); the message is for a person."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Tokens:
    redis: redis.Redis

    def create(self, name: str) -> str:
        """A new token for `name` (letters, digits, '-', '_', '.'); returned once, stored hashed."""
        if not name or not all(c.isalnum() or c in "-_." for c in name) or len(name) > 64:
            raise TokenError(f"token name {name!r}: 1-64 letters, digits, '-', '_' or '.'")
        if any(t["name"] == name for t in self.list()):
            raise TokenError(f"a token named {name!r} exists; revoke it first or choose another name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.redis.hset(TOKENS, digest(token), json.dumps({"name": name, "created_at": time.time()}))
        return token

    def list(self) -> list[dict]:
        """Every token's name, when it was made and last used (never the token)."""
        raw = self.redis.hgetall(TOKENS)
        used = self.redis.hgetall(USED)
        out = []
        for sha, info in raw.items():
            doc = json.loads(info)
            last = used.get(sha)
            out.append({**doc, "last_used_at": float(last) if last else None, "id": sha.decode()[:12]})
        return sorted(out, key=lambda t: t["created_at"])

    def revoke(self, name: str) -> None:
        for sha, info in self.redis.hgetall(TOKENS).items():
            if json.loads(info)["name"] == name:
                self.redis.hdel(TOKENS, sha)
                self.redis.hdel(USED, sha)
                return
        known = ", ".join(t["name"] for t in self.list()) or "none"
        raise TokenError(f"no token named {name!r}; tokens: {known}")


@dataclass(frozen=True)
class Verdict:
    """What the server answers a request with a token: who it is, and where it stands in its window."""

    name: str | None
    count: int = 0
    reset_s: int = 0

    @property
    def known(self) -> bool:
        return self.name is not None


@dataclass
class _Seen:
    name: str | None
    count: int  # in the window, as Redis had it at the last sync, plus what was counted here since
    pending: int  # counted here since the last sync
    synced: float  # monotonic time of the last sync
    window_end: float  # monotonic time the window ends


@dataclass
class TokenLedger:
    """Per API process: each known token's verdict and its count in the window, synced with Redis every SYNC_S.
    An unknown token is kept nowhere (a flood of random ones would fill this ledger): each costs one Redis call,
    and the gate limits how many a client address may try."""

    redis: object  # redis.asyncio.Redis
    window_s: int
    script_sha: str = ""
    limit: int = 6000  # API_RATE_LIMIT, for the verdicts' callers
    seen: dict[str, _Seen] = field(default_factory=dict)
    syncing: dict[str, asyncio.Future] = field(default_factory=dict)  # sha -> the sync in flight for it

    async def _sync(self, sha: str, add: int):
        args = (3, TOKENS, RATE, USED, sha, self.window_s, add)
        try:
            return await self.redis.evalsha(self.script_sha, *args)
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot it
            self.script_sha = await self.redis.script_load(AUTHORIZE)
            return await self.redis.evalsha(self.script_sha, *args)

    async def flush_forever(self) -> None:
        """Every SYNC_S, hand Redis what was counted here and not yet synced, so other processes see it."""
        while True:
            await asyncio.sleep(SYNC_S)
            await self.flush()

    async def flush(self) -> None:
        """One pass of flush_forever: each token's requests counted here since its last sync, to Redis."""
        now = time.monotonic()
        for sha, entry in list(self.seen.items()):
            if entry.pending and now < entry.window_end:
                add, entry.pending = entry.pending, 0  # taken before the await: a request syncing meanwhile
                try:  # must not hand the same requests to Redis again
                    reply = await self._sync(sha, add)
                except Exception:  # noqa: BLE001 - Redis away: counted again at the next request
                    entry.pending += add
                    break
                if reply and int(reply[0]):  # what was counted here during the await stays pending
                    entry.count, entry.synced = int(reply[1]) + entry.pending, now
                    entry.window_end = now + int(reply[2]) / 1000
                else:  # revoked meanwhile
                    self.seen.pop(sha, None)
            elif now - entry.synced > 60:
                del self.seen[sha]  # not seen for a minute: forget it

    def knows(self, sha: str | None) -> bool:
        """Whether this process has seen the token known lately (no Redis call)."""
        return sha in self.seen

    async def check(self, token: str) -> Verdict:
        return await self.check_digest(digest(token))

    async def check_digest(self, sha: str, add: int = 1) -> Verdict:
        """The verdict on the token whose sha256 is `sha` (a bearer token's, or the one a session stands for),
        counting `add` requests (a replay counts its events)."""
        now = time.monotonic()
        entry = self.seen.get(sha)
        if entry is not None and now - entry.synced < SYNC_S and now < entry.window_end:
            return _counted_here(entry, now, add)
        if sha in self.syncing:  # a burst (hundreds of subscribers connecting at once): one sync, the rest wait on it
            entry = await asyncio.shield(self.syncing[sha])
            return _counted_here(entry, time.monotonic(), add) if entry is not None else Verdict(None)
        if entry is not None and now < entry.window_end:
            add, entry.pending = add + entry.pending, 0  # taken before the await (see flush)
        done = self.syncing[sha] = asyncio.get_running_loop().create_future()
        try:
            reply = await self._sync(sha, add)
        except BaseException:
            del self.syncing[sha]
            done.set_exception(redis.exceptions.ConnectionError("the token check this request waited on did not "
                                                                "reach Redis"))
            done.exception()  # retrieved: nothing to warn about when no request waited on it
            raise
        del self.syncing[sha]
        if not reply or int(reply[0]) == 0:
            self.seen.pop(sha, None)
            done.set_result(None)
            return Verdict(None)
        name, left = json.loads(reply[3])["name"], int(reply[2]) / 1000
        entry = self.seen[sha] = _Seen(name, int(reply[1]), 0, now, now + left)
        done.set_result(entry)
        return Verdict(name, int(reply[1]), max(1, math.ceil(left)))

    async def known(self, shas: set[str]) -> set[str]:
        """Which of these token digests Redis still has (one HMGET): a revoked one is not."""
        if not shas:
            return set()
        order = sorted(shas)
        return {sha for sha, info in zip(order, await self.redis.hmget(TOKENS, order), strict=True) if info}


def _counted_here(entry: _Seen, now: float, add: int = 1) -> Verdict:
    """A request (or `add` of them) counted in this process, to be handed to Redis by the next sync."""
    entry.pending += add
    entry.count += add
    return Verdict(entry.name, entry.count, max(1, math.ceil(entry.window_end - now)))


SESSIONS = f"{PREFIX}:api:session"  # :{sha256 of the session id} -> the sha256 of the token that opened it
SESSIONS_OF = f"{SESSIONS}:of"  # :{token sha256} -> its sessions' digests, by when they were opened (expiring)
LOGINS = f"{RATE}:login"  # :{token sha256} -> its logins of the last minute (expiring)
COOKIE = "optask_session"
SESSION_RECHECK_S = 1.0
LOGINS_PER_MINUTE = 5
#: KEYS: logins, sessions of the token. ARGV: logins a minute, session digest, session key prefix, token sha, ttl (s),
#: sessions kept -> {1} opened; {0, seconds until another login may open}
LOGIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.ceil((tonumber(oldest[2]) + 60000 - now) / 1000)}
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], 61000)
redis.call('SET', ARGV[3] .. ARGV[2], ARGV[4], 'EX', ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]) * 1000)
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if over > 0 then
  for _, gone in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do redis.call('DEL', ARGV[3] .. gone) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
return {1}
"""


class LoginRefused(Exception):
    """Too many logins with one token in a minute; `retry_s` says when another may open."""

    def __init__(self, retry_s: int) -> None:
        super().__init__(f"more than {LOGINS_PER_MINUTE} page logins a minute with this token; retry after {retry_s} s")
        self.retry_s = retry_s


@dataclass
class Sessions:
    """The page's logins: a random session id in an HttpOnly cookie stands for a token (never the token itself in
    the browser's storage or a URL); revoking the token ends its sessions, since each request checks the token.
    Bounded in Redis: LOGINS_PER_MINUTE logins a minute per token, and its newest `per_token` sessions kept (a new
    login ends the oldest), each for `ttl_s`."""

    redis: object  # redis.asyncio.Redis
    ttl_s: int
    per_token: int = 20  # API_SESSIONS_PER_TOKEN
    known: dict[str, tuple[str | None, float]] = field(default_factory=dict)  # session digest -> (token sha, when)

    async def open(self, token_sha: str) -> str:
        """A new session id for the token; LoginRefused past LOGINS_PER_MINUTE."""
        sid = secrets.token_urlsafe(32)
        keys = (f"{LOGINS}:{token_sha}", f"{SESSIONS_OF}:{token_sha}")
        args = (LOGINS_PER_MINUTE, digest(sid), f"{SESSIONS}:", token_sha, self.ttl_s, self.per_token)
        reply = await self.redis.eval(LOGIN, 2, *keys, *args)
        if not int(reply[0]):
            raise LoginRefused(max(1, int(reply[1])))
        return sid

    async def token_of(self, sid: str) -> str | None:
        """The token sha a session stands for (asked of Redis at most every SESSION_RECHECK_S), or None."""
        key, now = digest(sid), time.monotonic()
        hit = self.known.get(key)
        if hit is not None and now - hit[1] < SESSION_RECHECK_S:
            return hit[0]
        raw = await self.redis.get(f"{SESSIONS}:{key}")
        if len(self.known) > 10_000:
            self.known.clear()
        self.known[key] = (raw.decode() if raw else None, now)
        return self.known[key][0]

    async def holders(self, digests: set[str]) -> dict[str, str | None]:
        """Session digest -> the token sha it stands for, or None once it ended (one MGET)."""
        if not digests:
            return {}
        order = sorted(digests)
        raw = await self.redis.mget([f"{SESSIONS}:{d}" for d in order])
        return {d: v.decode() if v else None for d, v in zip(order, raw, strict=True)}

    async def close(self, sid: str) -> None:
        self.known.pop(digest(sid), None)
        await self.redis.delete(f"{SESSIONS}:{digest(sid)}")


def bearer_digest(headers: dict) -> str | None:
    """The sha256 of a request's bearer token, or None (no Redis call)."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return digest(token) if token else None


async def credential(headers: dict, sessions: Sessions) -> tuple[str | None, str | None]:
    """The sha256 of a request's token (from its bearer header, else from its session cookie), and the digest of
    the session cookie it came from (None for a bearer token); `headers` as the ASGI scope has them (bytes).
    Redis errors propagate: the caller answers 503, not "log in again"."""
    if sha := bearer_digest(headers):
        return sha, None
    sid = cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(COOKIE)
    if not sid:
        return None, None
    return await sessions.token_of(sid), digest(sid)
