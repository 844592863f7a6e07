"""The health task: a Celery deployment that runs no monitor process of its own (compose) monitors itself.

The one task that reaches above `optask.jobs`: health lives in `optask.ops` (import-linter's contract for
`tasks` names this exception). `optask up` runs a monitor process instead and leaves this task out.
"""

from __future__ import annotations

from optask.infra.queues import HEALTH_EXPIRES_S
from optask.ops.health.monitor import HealthMonitor
from tasks.application import app


@app.task(name="tasks.health_check", ignore_result=True, expires=HEALTH_EXPIRES_S)
def health_check() -> dict:
    """Checks, alerts and self-healing actions."""
    report = HealthMonitor().run_once()
    return {"status": report.status, "actions": len(report.actions)}
