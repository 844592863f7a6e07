"""The Celery app: broker from settings (or the bundled Redis), config from one module, one beat schedule."""

from __future__ import annotations

from celery import Celery

import beat_schedule
from optask.config import get_settings
from optask.services import ensure_redis
from tasks.celeryconfig import celery_config


def create_app() -> Celery:
    settings = get_settings()
    broker = ensure_redis(settings)
    celery = Celery("optask")
    celery.conf.update(celery_config(settings, broker))
    celery.conf.beat_schedule = beat_schedule.BEAT_SCHEDULE
    celery.conf.timezone = beat_schedule.TIMEZONE
    return celery


app = create_app()
