"""Minute and day tasks: a few lines each, calling `optask.jobs` with primitive arguments."""

from __future__ import annotations

import logging

from celery.signals import task_revoked

from optask.core.config import get_settings
from optask.infra import deliveries
from optask.infra.ledger import ledger_for
from optask.infra.queues import (
    EOD_HARD_LIMIT_S,
    EOD_SOFT_LIMIT_S,
    MINUTE_EXPIRES_S,
    REPAIR_EXPIRES_S,
    live_process_queues,
)
from optask.jobs import RETRYABLE, batch, eod, minute, repair
from optask.jobs.arguments import InvalidTaskArgument
from tasks.application import app

log = logging.getLogger(__name__)


@app.task(name="tasks.collect_minute", bind=True, ignore_result=True, autoretry_for=RETRYABLE, retry_backoff=1,
          retry_backoff_max=5, retry_jitter=False, retry_kwargs={"max_retries": 3})
def collect_minute(self, ts: str) -> dict:
    """Fan a session minute out to one process_index per index; claimed once even if beat runs twice, and
    finished by a redelivery or retry of this task if it dies or fails before the fan-out is done."""
    plan = minute.plan_minute(ts, owner=self.request.id)
    minute.fetch_minute(ts, plan.indices)  # Kite: the whole minute in the fewest calls, archived first
    queues = live_process_queues(ledger_for(get_settings()).redis, plan.indices)
    for index in plan.indices:
        process_index.apply_async((index, ts), queue=queues[index], expires=MINUTE_EXPIRES_S)
    if plan.indices:
        minute.mark_dispatched(ts)
    day = minute.should_close_day(ts)
    if day:
        # Give the session's last minute time to land before the day is closed (90 s of the session's clock).
        end_of_day.apply_async((day,), countdown=minute.close_delay_s())
    return plan.as_dict()


class ParkedTask(app.Task):
    """Counts each delivery of an attempt; one that was delivered MAX_DELIVERIES times without finishing
    (its process killed every time) is parked with an alert instead of being run again."""

    def __call__(self, *args, **kwargs):
        request = self.request
        if request.id and not request.is_eager:
            client = ledger_for(get_settings()).redis
            n = deliveries.count_delivery(client, request.id, request.retries or 0)
            if n > deliveries.MAX_DELIVERIES:
                entry = deliveries.park(client, self.name, request.id, list(args), kwargs, n)
                log.error("parked %s %s after %d deliveries that never finished: %s", self.name, request.id, n - 1,
                          entry["args"])
                return {"parked": True, "deliveries": n}
        return super().__call__(*args, **kwargs)


class ProcessIndexTask(ParkedTask):
    def on_retry(self, exc, task_id, args, kwargs, einfo):
        minute.record_fault(exc, "retries")

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """Retries exhausted or a permanent fault: the minute is recorded for backfill, never silently lost."""
        minute.record_fault(exc, "failures")
        if isinstance(exc, InvalidTaskArgument):
            return  # not a minute optask sent: nothing to repair
        index, ts = (list(args) + [kwargs.get("index"), kwargs.get("ts") or kwargs.get("minutes")])[:2]
        for one in ts if isinstance(ts, list) else [ts]:
            minute.record_missed(index, one, f"{type(exc).__name__}: {exc}")


@app.task(
    name="tasks.process_index", base=ProcessIndexTask, ignore_result=True,
    autoretry_for=RETRYABLE, retry_backoff=2, retry_backoff_max=30, retry_jitter=True,
    retry_kwargs={"max_retries": 6},
)
def process_index(index: str, ts: str) -> dict:
    """Snapshot -> raw archive -> process -> Parquet, CSV, InfluxDB -> heartbeat; idempotent per (index, ts)."""
    return minute.store_minute(index, ts).as_dict()


@app.task(
    name="tasks.backfill_minutes", base=ProcessIndexTask, ignore_result=False,  # `optask backfill --wait` reads it
    autoretry_for=RETRYABLE, retry_backoff=2, retry_backoff_max=30, retry_jitter=True,
    retry_kwargs={"max_retries": 6}, soft_time_limit=EOD_SOFT_LIMIT_S, time_limit=EOD_HARD_LIMIT_S,
)
def backfill_minutes(index: str, minutes: list[str], provider: str | None = None) -> dict:
    """A batch of one index's minutes of one day from the source's history (backfill, replay)."""
    return batch.store_minutes(index, minutes, provider)


@app.task(name="tasks.end_of_day", base=ParkedTask, soft_time_limit=EOD_SOFT_LIMIT_S, time_limit=EOD_HARD_LIMIT_S)
def end_of_day(day: str, repair: bool = True) -> dict:  # noqa: F811 - the argument shadows the module here only
    """Compaction, verification, repair of what is missing, verification again, the report."""
    return eod.end_of_day(day, repair=repair)


@app.task(name="tasks.repair_missed", ignore_result=True, soft_time_limit=EOD_SOFT_LIMIT_S,
          time_limit=EOD_HARD_LIMIT_S, expires=REPAIR_EXPIRES_S)
def repair_missed(ts: str) -> dict:
    """In session: minutes not stored a few minutes after their time are rebuilt, a bounded number of times."""
    return repair.repair_missed(ts)


@task_revoked.connect
def _record_expired(request=None, expired=False, **_):
    """An expired minute (stale behind a backlog) is left for backfill: record it, don't lose it."""
    if expired and request is not None and request.task == "tasks.process_index":
        index, ts = request.args[:2]
        minute.record_missed(index, ts, "expired in queue")
