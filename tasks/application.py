"""The Celery app: broker from settings (or the bundled Redis), config from one module, one beat schedule.

The configuration is a promise: the broker is resolved (and the bundled Redis started when
nothing is configured) only when Celery first needs it, not when `tasks` is imported.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

import beat_schedule
from optask.core.config import get_settings
from optask.infra.celery_client import celery_config
from optask.infra.coordination import CONSUMER_TTL_S, announce_consumer, withdraw_consumer
from optask.infra.redis_client import connect
from optask.infra.redis_server import ensure_redis
from optask.jobs.context import use_worker_memory_pool, warm_up


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


_announcing = threading.Event()
log = logging.getLogger(__name__)


@worker_process_init.connect
def warm_up_process(**_) -> None:
    """Each pool process takes its memory pool and warms its libraries before its first task (a fraction of a
    second)."""
    try:
        use_worker_memory_pool()
        warm_up()
    except Exception:  # noqa: BLE001 - a warm-up that fails costs the first task its speed, never the worker
        log.warning("worker warm-up failed; the first task will be slower", exc_info=True)


@worker_ready.connect
def announce_queues(sender, **_) -> None:
    """Tell Redis which queues this worker consumes, every few seconds while it lives, so a minute of an
    index whose only worker was lost goes to the shared fallback queue (`live_process_queues`)."""
    hostname = sender.hostname
    queues = [q.name for q in sender.task_consumer.queues]
    client = connect(sender.app.conf.broker_url, timeout_s=5)

    def beat() -> None:
        while not _announcing.wait(CONSUMER_TTL_S / 3):
            try:
                announce_consumer(client, hostname, queues)
            except Exception:  # noqa: BLE001 - Redis away for a moment: the next beat says it again
                pass

    try:
        announce_consumer(client, hostname, queues)
    except Exception:  # noqa: BLE001
        pass
    threading.Thread(target=beat, name="optask-announce", daemon=True).start()
    worker_shutting_down.connect(lambda **__: _withdraw(client, hostname, queues), weak=False)


def _withdraw(client, hostname: str, queues: list[str]) -> None:
    _announcing.set()
    try:
        withdraw_consumer(client, hostname, queues)
    except Exception:  # noqa: BLE001 - a worker stopping with Redis gone: its word expires on its own
        pass
