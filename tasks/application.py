"""The Celery app: broker from settings (or the bundled Redis), config from one module, one beat schedule.

The configuration is a promise: the broker is resolved (and the bundled Redis started when
nothing is configured) only when Celery first needs it, not when `tasks` is imported.
"""

from __future__ import annotations

from celery import Celery

import beat_schedule
from optask.config import get_settings
from optask.services import ensure_redis
from tasks.celeryconfig import celery_config


def _configuration() -> dict:
    settings = get_settings()
    conf = celery_config(settings, ensure_redis(settings))
    conf["beat_schedule"] = beat_schedule.BEAT_SCHEDULE
    conf["timezone"] = beat_schedule.TIMEZONE
    return conf


def create_app() -> Celery:
    celery = Celery("optask")
    celery.add_defaults(_configuration)
    return celery


app = create_app()
