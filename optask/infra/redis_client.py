"""The one way optask opens a Redis client: every call has a timeout, so a Redis that vanishes is noticed,
not waited on forever. Which server to open is `optask.infra.redis_server`'s business."""

from __future__ import annotations

from urllib.parse import quote

import redis
import redis.asyncio


def connect(url: str, timeout_s: float = 10.0, connect_timeout_s: float | None = None) -> redis.Redis:
    """A client whose every call has a timeout (`timeout_s`; connecting at most `connect_timeout_s`)."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s,
                                socket_connect_timeout=connect_timeout_s or min(timeout_s, 5.0))


ASYNC_CONNECTIONS = 32


def connect_async(url: str, timeout_s: float = 2.0) -> redis.asyncio.Redis:
    """The asyncio client (the API server's event loop), with the same rule: every call has a timeout."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(  # a burst of requests waits for a connection, never
        url, max_connections=ASYNC_CONNECTIONS, timeout=timeout_s,  # opens hundreds of them
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return redis.asyncio.Redis(connection_pool=pool)


def url_of(client: redis.Redis) -> str:
    """The URL of the server a client talks to, its password included: for a second client of the same server."""
    kw = client.connection_pool.connection_kwargs
    auth = f":{quote(kw['password'], safe='')}@" if kw.get("password") else ""
    return f"redis://{auth}{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
