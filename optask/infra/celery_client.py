"""The one optask module that imports Celery: the configuration every app and client of optask shares
(each setting with why, DESIGN section 5) and a client that sends tasks by name."""

from __future__ import annotations

import time

from celery import Celery
from celery.signals import before_task_publish
from kombu import Queue

from optask.core.config import Settings
from optask.infra.queues import (
    DEFAULT_QUEUE,
    FALLBACK_QUEUE,
    MAINTENANCE_QUEUE,
    MINUTE_HARD_LIMIT_S,
    MINUTE_SOFT_LIMIT_S,
    process_queue,
    route_task,
)


def celery_config(settings: Settings, broker_url: str) -> dict:
    # Longer than the longest task (EOD), so Redis never hands a running task to a second worker;
    # a task of a worker killed whole comes back after it (or at the next worker start past it).
    visibility_timeout = settings.service.celery_visibility_timeout_s
    transport = {
        "visibility_timeout": visibility_timeout,
        # Every network call has a timeout: a Redis that vanishes without closing TCP is noticed.
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": 25,
        # Sweep for tasks of dead workers every few seconds, not every 100 (kombu's 10 s x throttle 10).
        "unacked_restore_interval": min(10, max(1, visibility_timeout // 2)),
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": broker_url,
        "result_backend": broker_url,
        # JSON only: pickle would let anyone who can write to Redis run code in the workers.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Ack after the task ran, and requeue when the worker process dies mid-task: every task is
        # idempotent, so a redelivery is harmless and a kill loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: a slow minute does not hold others hostage in its prefetch.
        "worker_prefetch_multiplier": 1,
        # Set identically for broker and result backend (Celery's Redis caveat).
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": visibility_timeout,
        # Defaults for minute tasks; end_of_day declares its own, longer limits.
        "task_soft_time_limit": MINUTE_SOFT_LIMIT_S,
        "task_time_limit": MINUTE_HARD_LIMIT_S,
        # Replace a worker child that grew past the memory budget (kilobytes) after its current task.
        "worker_max_memory_per_child": settings.service.max_memory_usage_mb * 1024,
        # Keep retrying the broker at start instead of dying when Redis is a moment late.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Beat's crontabs are in market time.
        "timezone": "Asia/Kolkata",
        "enable_utc": True,
        # Per-index queues, the maintenance queue and the default one; declared so `celery worker` without -Q consumes all of them.
        "task_default_queue": DEFAULT_QUEUE,
        "task_queues": [Queue(DEFAULT_QUEUE), Queue(MAINTENANCE_QUEUE), Queue(FALLBACK_QUEUE)]
        + [Queue(process_queue(i)) for i in settings.market.indices],
        "task_routes": (route_task,),
        # Flower shows tasks live, including when they were sent and by whom.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        # Results are small status dicts; keep them an hour for Flower and the CLI, then let Redis drop them.
        "result_expires": 3600,
        "worker_hijack_root_logger": False,
    }


def celery_client(settings: Settings, redis_url: str) -> Celery:
    """A Celery app that only sends tasks by name, with optask's serializer and routing."""
    client = Celery("optask-client")
    client.conf.update(celery_config(settings, redis_url))
    return client


@before_task_publish.connect
def stamp_sent_at(headers=None, **_):
    """Every message carries when it was sent: the health check reads the oldest waiting task's age from it."""
    if headers is not None:
        headers.setdefault("sent_at", time.time())
