"""Celery's settings for `-A tasks`: they live in `optask.infra.celery_client` (which `optask up`'s client shares)
and the queues, routes and limits in `optask.infra.queues`; re-exported here for existing imports."""

from optask.infra.celery_client import celery_config, stamp_sent_at
from optask.infra.queues import (
    EOD_HARD_LIMIT_S,
    EOD_SOFT_LIMIT_S,
    FALLBACK_QUEUE,
    MAINTENANCE_QUEUE,
    MAINTENANCE_TASKS,
    MINUTE_EXPIRES_S,
    MINUTE_HARD_LIMIT_S,
    MINUTE_SOFT_LIMIT_S,
    live_process_queues,
    process_queue,
    route_task,
)

__all__ = [
    "EOD_HARD_LIMIT_S", "EOD_SOFT_LIMIT_S", "FALLBACK_QUEUE", "MAINTENANCE_QUEUE", "MAINTENANCE_TASKS",
    "MINUTE_EXPIRES_S", "MINUTE_HARD_LIMIT_S", "MINUTE_SOFT_LIMIT_S", "celery_config", "live_process_queues",
    "process_queue", "route_task", "stamp_sent_at",
]
