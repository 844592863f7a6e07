"""Every queue name, route, time limit and expiry of optask, once (DESIGN section 5).

Health checks, the metrics exporter, the supervisor, the Celery configuration and the beat schedule
all read them from here, so a queue added here is watched and exported everywhere.
"""

from __future__ import annotations

import json
import time

from optask.infra.coordination import live_consumers

#: Fan-out of minutes and anything without a route of its own.
DEFAULT_QUEUE = "optask"
#: Long, catch-up work (backfill, end of day, repair): never on the queues live minutes use.
MAINTENANCE_QUEUE = "maintenance"
#: Every node also consumes this queue: an index whose own queue has lost its last worker is sent here.
FALLBACK_QUEUE = "process.any"
MAINTENANCE_TASKS = ("tasks.backfill_minutes", "tasks.end_of_day", "tasks.repair_missed")

#: Longest a minute task may run. A minute that takes longer is late anyway; it is retried or backfilled.
MINUTE_SOFT_LIMIT_S = 45
MINUTE_HARD_LIMIT_S = 55
#: End of day compacts and verifies whole days: minutes, not seconds.
EOD_SOFT_LIMIT_S = 900
EOD_HARD_LIMIT_S = 960
#: A queued minute older than this is stale: fresh minutes go first, the stale one is recorded for backfill.
MINUTE_EXPIRES_S = 120
#: A `collect_minute` nobody picked up within its minute is useless: the next one is already due.
TICK_EXPIRES_S = 55
#: Beat's other sends: in-session repair (every other minute), health checks, the late end-of-day sweep.
REPAIR_EXPIRES_S = 110
HEALTH_EXPIRES_S = 120
EOD_SWEEP_EXPIRES_S = 3 * 3600


def process_queue(index: str) -> str:
    """Each index has its own queue so it can have its own workers, on any machine."""
    return f"process.{index}"


def queue_names(settings) -> list[str]:
    """Every queue optask uses: watched by health, exported as metrics, declared to Celery."""
    return [DEFAULT_QUEUE, MAINTENANCE_QUEUE, FALLBACK_QUEUE, *(process_queue(i) for i in settings.market.indices)]


def route_task(name, args, kwargs, options, task=None, **kw):
    """process_index to its index's queue; backfill and end of day to the maintenance queue (its own
    worker under `optask up`, so repairs never starve live minutes); everything else to the default queue."""
    if name == "tasks.process_index":
        index = args[0] if args else kwargs.get("index")
        return {"queue": process_queue(index)}
    if name in MAINTENANCE_TASKS:
        return {"queue": MAINTENANCE_QUEUE}
    return None


def live_process_queues(client, indices: list[str]) -> dict[str, str]:
    """Where each index's minute goes now: its own queue, or the shared fallback when no live worker consumes
    its own and one consumes the fallback (a node lost). Workers announce their queues every few seconds
    (`optask.infra.coordination.announce_consumer`); with no announcement at all, nothing is rerouted."""
    own = {i: process_queue(i) for i in indices}
    try:
        live = live_consumers(client, [*own.values(), FALLBACK_QUEUE])
    except Exception:  # noqa: BLE001 - no view of the workers: the index's own queue, as always
        return own
    return {i: q if live[q] or not live[FALLBACK_QUEUE] else FALLBACK_QUEUE for i, q in own.items()}


def queue_oldest_age(client, queue: str) -> float | None:
    """Age of the oldest waiting task (kombu pushes left, pops right), from the `sent_at` header optask stamps."""
    raw = client.lindex(queue, -1)
    if raw is None:
        return None
    try:
        sent = json.loads(raw)["headers"].get("sent_at")
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, time.time() - float(sent)) if sent else None
