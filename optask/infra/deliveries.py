"""Deliveries counted per task attempt, so a task that keeps killing its worker is parked, not run forever.

With `acks_late` and `reject_on_worker_lost`, a task whose pool process dies (an OOM kill, a segfault) goes
back to the queue and comes round again; one that always dies would starve the single-process maintenance
worker. Each delivery of an attempt (task id + retry number) is counted in Redis; past `MAX_DELIVERIES`
the task is parked in `optask:parked` (with its name, arguments and count), counted, and the health check
raises it as CRIT with the command that runs it again, instead of running it a fourth time.
"""

from __future__ import annotations

import json
import time

import redis

from optask.infra import counters
from optask.infra.coordination import PREFIX

MAX_DELIVERIES = 3
PARKED = f"{PREFIX}:parked"
_COUNT_TTL_S = 3 * 24 * 3600


def count_delivery(client: redis.Redis, task_id: str, attempt: int) -> int:
    """This delivery's number for the attempt (1 the first time)."""
    key = f"{PREFIX}:deliveries:{task_id}:{attempt}"
    with client.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, _COUNT_TTL_S)
        return int(pipe.execute()[0])


def park(client: redis.Redis, name: str, task_id: str, args: list, kwargs: dict, deliveries: int) -> dict:
    entry = {"at": time.time(), "task": name, "id": task_id, "args": args, "kwargs": kwargs, "deliveries": deliveries}
    with client.pipeline() as pipe:
        pipe.lpush(PARKED, json.dumps(entry, default=str))
        pipe.ltrim(PARKED, 0, 99)
        pipe.execute()
    counters.count(client, "parked", name)
    return entry


def parked(client: redis.Redis, n: int = 20) -> list[dict]:
    return [json.loads(x) for x in client.lrange(PARKED, 0, n - 1)]
