"""A request pacer shared by every process on every machine: the slot schedule lives in Redis.

Each caller atomically books the next free slot (a Lua script on Redis' own clock, so
machines with skewed clocks still agree) and sleeps until it. N processes calling at once
are spaced `1/rate` seconds apart, whichever machine they run on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from optask.infra.coordination import PREFIX

_BOOK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, nxt)
redis.call('SET', KEYS[1], tostring(slot + interval), 'PX', math.ceil((slot + interval - now) * 1000) + 1000)
return tostring(slot - now)
"""


@dataclass
class RedisPacer:
    client: redis.Redis
    name: str
    rate_per_s: float

    def __post_init__(self) -> None:
        self._script = self.client.register_script(_BOOK)

    def wait(self) -> float:
        """Block until this caller's slot; returns the seconds waited."""
        delay = float(self._script(keys=[f"{PREFIX}:pace:{self.name}"], args=[1.0 / self.rate_per_s]))
        if delay > 0:
            time.sleep(delay)
        return delay
