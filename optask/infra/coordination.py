"""Redis coordination: one writer per file, idempotency keys, heartbeats, incremental-read cursors.

- `writer_lock`: a Redis lock per file (or day of a table) across processes and machines,
  acquired with bounded retries and kept alive by a background extension while the holder
  works; a holder that dies leaves a lock that expires after `timeout_s`.
- `claim_once`: SET NX with expiry, so a task runs once per (task, index, minute).
- `heartbeat` / `heartbeats`: per-component liveness with a timestamp.
- cursors: where each consumer's last incremental read stopped (see storage.*.read_new);
- consumers: which worker consumes which queue, for the fallback route.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from optask.infra.fsutil import StorageError

PREFIX = "optask"
log = logging.getLogger(__name__)


class LockTimeout(TimeoutError):
    """Another writer held the lock for longer than we were willing to wait."""


class LockLost(StorageError):
    """This writer's lock expired and may be another's now: its commit was abandoned (retryable)."""


@dataclass
class Fence:
    """The holder's proof, at each commit, that the lock is still its own.

    `check()` compares the lock's token in Redis with ours and extends it in one atomic script (redis-py's
    `reacquire`): after a passing check the lock stays ours for another `timeout_s`, so the rename, the
    sidecar replace or the unlink right after it happens under the lock. A failing check raises `LockLost`
    and the caller abandons its commit, leaving the store as the lock's new holder made it.
    """

    lock: redis.lock.Lock
    name: str
    renewals_lost: int = 0

    def check(self) -> None:
        try:
            self.lock.reacquire()
            return
        except redis.exceptions.LockNotOwnedError:
            why = "another writer holds it now"
        except (redis.RedisError, OSError) as exc:
            why = f"Redis could not confirm it ({type(exc).__name__})"
        raise LockLost(0, f"lost the writer lock {self.name} before committing ({why}); nothing was "
                          "committed, the task retries")


def _renew(lock: redis.lock.Lock) -> None:
    """The keep-alive's renewal, apart from `Fence.check` (the fencing tests make renewals fail here)."""
    lock.reacquire()


@contextlib.contextmanager
def writer_lock(client: redis.Redis, name: str, timeout_s: float = 30.0, wait_s: float = 60.0) -> Iterator[Fence]:
    """Hold the lock `name` while the block runs; extended every timeout/3 so long writes keep it. Yields the
    `Fence` that every commit inside the block checks first."""
    lock = client.lock(f"{PREFIX}:lock:{name}", timeout=timeout_s, blocking_timeout=wait_s, sleep=0.01,
                       thread_local=False)
    if not lock.acquire():
        raise LockTimeout(f"could not lock {name} within {wait_s:.0f}s: another writer holds it; retry later")
    fence = Fence(lock, name)
    stop = threading.Event()

    def keep_alive() -> None:
        while not stop.wait(timeout_s / 3):
            try:
                _renew(lock)
            except (redis.RedisError, OSError) as exc:
                fence.renewals_lost += 1
                if fence.renewals_lost == 1:
                    log.warning("writer lock %s: renewal failed (%s: %s); every commit checks the lock first",
                                name, type(exc).__name__, exc)
                with contextlib.suppress(redis.RedisError, OSError):
                    client.hincrby(f"{PREFIX}:metrics:lock_renewals_lost", name.split(":", 1)[0], 1)

    keeper = threading.Thread(target=keep_alive, name=f"{threading.current_thread().name}-lock-keeper", daemon=True)
    keeper.start()
    try:
        yield fence
    finally:
        stop.set()
        keeper.join()
        with contextlib.suppress(redis.exceptions.LockError, redis.RedisError):
            lock.release()


def claim_once(client: redis.Redis, task: str, key: str, ttl_s: int = 2 * 24 * 3600) -> bool:
    """True for the first caller of (task, key) only, across processes and machines."""
    return bool(client.set(f"{PREFIX}:claim:{task}:{key}", repr(time.time()), nx=True, ex=ttl_s))


def heartbeat(client: redis.Redis, component: str, **info: object) -> None:
    client.hset(f"{PREFIX}:heartbeats", component, json.dumps({"at": time.time(), **info}))


def heartbeats(client: redis.Redis) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in client.hgetall(f"{PREFIX}:heartbeats").items()}


#: A worker's word that it consumes a queue holds this long unless renewed (it renews every third of it).
CONSUMER_TTL_S = 15.0


def announce_consumer(client: redis.Redis, hostname: str, queues: list[str], ttl_s: float = CONSUMER_TTL_S) -> None:
    """`hostname` consumes `queues` for the next `ttl_s` seconds (a sorted set per queue, scored by expiry)."""
    now = time.time()
    with client.pipeline() as pipe:
        for queue in queues:
            pipe.zadd(f"{PREFIX}:consumers:{queue}", {hostname: now + ttl_s})
            pipe.zremrangebyscore(f"{PREFIX}:consumers:{queue}", "-inf", now)
        pipe.execute()


def withdraw_consumer(client: redis.Redis, hostname: str, queues: list[str]) -> None:
    with client.pipeline() as pipe:
        for queue in queues:
            pipe.zrem(f"{PREFIX}:consumers:{queue}", hostname)
        pipe.execute()


def live_consumers(client: redis.Redis, queues: list[str]) -> dict[str, int]:
    """How many workers announced each queue and have not gone quiet since."""
    now = time.time()
    with client.pipeline() as pipe:
        for queue in queues:
            pipe.zcount(f"{PREFIX}:consumers:{queue}", now, "+inf")
        return dict(zip(queues, pipe.execute(), strict=True))


@dataclass
class Cursor:
    """A consumer's position in one (store, table, index, day): opaque JSON kept in Redis."""

    client: redis.Redis
    key: str

    @classmethod
    def of(cls, client: redis.Redis, consumer: str, store: str, table: str, index: str, day: str) -> Cursor:
        return cls(client, f"{PREFIX}:cursor:{consumer}:{store}:{table}:{index}:{day}")

    def load(self) -> dict:
        raw = self.client.get(self.key)
        return json.loads(raw) if raw else {}

    def save(self, state: dict) -> None:
        self.client.set(self.key, json.dumps(state))


@dataclass
class RedisCoordinator:
    """The seed platform's entry point, kept: `get_redis_coordinator().ping()`."""

    client: redis.Redis

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def lock(self, name: str, timeout_s: float = 30.0, wait_s: float = 60.0):
        return writer_lock(self.client, name, timeout_s, wait_s)

    def claim(self, task: str, key: str, ttl_s: int = 2 * 24 * 3600) -> bool:
        return claim_once(self.client, task, key, ttl_s)

    def heartbeat(self, component: str, **info: object) -> None:
        heartbeat(self.client, component, **info)
