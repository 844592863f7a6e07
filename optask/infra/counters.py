"""Counters of what optask does, kept in Redis so every process and machine adds to the same figures.

Workers record with cheap Redis increments; the exporter (`optask.ops.metrics`) turns them into
Prometheus metrics at each scrape.
"""

from __future__ import annotations

import json
import time

import redis

from optask.infra.coordination import PREFIX

#: Tick-to-stored latency buckets, seconds (the goal is p99 < 2 s).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
KEY = f"{PREFIX}:metrics"


def _bucket(seconds: float) -> str:
    return next((f"{b:g}" for b in LATENCY_BUCKETS if seconds <= b), "+Inf")


def record_latency(client: redis.Redis, index: str, seconds: float) -> None:
    pipe = client.pipeline(transaction=False)
    key = f"{KEY}:latency:{index}"
    pipe.hincrby(key, _bucket(seconds), 1)
    pipe.hincrbyfloat(key, "sum", seconds)
    pipe.hincrby(key, "count", 1)
    pipe.execute()


def count(client: redis.Redis, family: str, label: str, n: int = 1) -> None:
    """A counter by one label: family in stored, missed, retries, failures, actions."""
    client.hincrby(f"{KEY}:{family}", label, n)


def record_sampling(client: redis.Redis, index: str, span_ms: float, offset_ms: float | None) -> None:
    """The last stored minute's sampling span and spot offset per index (gauges)."""
    with client.pipeline() as pipe:
        pipe.hset(f"{KEY}:sample_span_ms", index, span_ms)
        if offset_ms is not None:
            pipe.hset(f"{KEY}:spot_offset_ms", index, offset_ms)
        pipe.execute()


def record_provider_error(client: redis.Redis, provider: str, exc: BaseException, permanent: bool) -> None:
    """The provider's last error, for the health check (an expired token is CRIT with its fix)."""
    client.set(f"{KEY}:provider:last_error", json.dumps({
        "at": time.time(), "provider": provider, "kind": type(exc).__name__, "message": str(exc)[:500],
        "permanent": permanent}))


def record_provider_ok(client: redis.Redis, provider: str) -> None:
    client.set(f"{KEY}:provider:last_ok", json.dumps({"at": time.time(), "provider": provider}))


def provider_state(client: redis.Redis) -> tuple[dict | None, dict | None]:
    err, ok = client.mget(f"{KEY}:provider:last_error", f"{KEY}:provider:last_ok")
    return (json.loads(err) if err else None), (json.loads(ok) if ok else None)
