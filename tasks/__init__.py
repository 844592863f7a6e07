"""Celery app and tasks of optask: thin wrappers that call the `optask` library.

`celery -A tasks worker`, `celery -A tasks beat`, `celery -A tasks flower`.
"""

from tasks.application import app
from tasks.health import health_check
from tasks.minute import (
    backfill_minutes,
    collect_minute,
    end_of_day,
    process_index,
    repair_missed,
)

__all__ = ["app", "backfill_minutes", "collect_minute", "end_of_day", "health_check", "process_index", "repair_missed"]
