"""API tokens and their rate limit, in Redis so that every API process on every machine agrees.

A token is shown once, when it is made; Redis keeps only its SHA-256 (a token is 256 random bits, so a
plain hash is as strong as a slow one) with its name. One Lua script per request checks the token,
counts it in the current window of the limit (on Redis' clock) and notes when it was last used: one
round trip, whatever the number of API processes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

import redis

from optask.infra.coordination import PREFIX

TOKENS = f"{PREFIX}:api:tokens"  # sha256 -> {"name", "created_at"}
USED = f"{PREFIX}:api:token_used"  # sha256 -> last use (Redis time)
RATE = f"{PREFIX}:api:rate"  # :{sha256}:{window start} -> requests in that window
TOKEN_PREFIX = "opt_"

#: -> {0} unknown token; {1, count, seconds left in the window, info}
AUTHORIZE = """
local info = redis.call('HGET', KEYS[1], ARGV[1])
if not info then return {0} end
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[2])
local start = now - (now % window)
local key = KEYS[2] .. ':' .. ARGV[1] .. ':' .. start
local n = redis.call('INCR', key)
if n == 1 then redis.call('EXPIRE', key, window + 1) end
redis.call('HSET', KEYS[3], ARGV[1], now)
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


def verdict_of(reply) -> Verdict:
    if not reply or int(reply[0]) == 0:
        return Verdict(None)
    return Verdict(json.loads(reply[3])["name"], int(reply[1]), max(1, int(reply[2])))
