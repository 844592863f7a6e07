"""Health: is optask working right now, and if not, what is wrong and what is being done about it.

Pure checks (`checks`), the one measuring pass that does I/O (`measure`), and the monitor that runs them,
keeps the report, heals and alerts (`monitor`).
"""

from optask.ops.health.checks import CRIT, OK, RANK, WARN, CheckResult, worst
from optask.ops.health.measure import Measurements, last_eod, measure
from optask.ops.health.monitor import HealthMonitor, HealthReport, evaluate, last_report, record_action

__all__ = ["CRIT", "OK", "RANK", "WARN", "CheckResult", "HealthMonitor", "HealthReport", "Measurements", "evaluate",
           "last_eod", "last_report", "measure", "record_action", "worst"]
