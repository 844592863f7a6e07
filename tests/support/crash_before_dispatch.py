"""optask's Celery app, with one fault planted: the first `collect_minute` kills its whole worker (SIGKILL to the
process group, as the OOM killer or a lost host would) after the minute's payloads are archived and before any
`process_index` is sent. The file named by OPTASK_TEST_CRASH_MARKER records that it happened, so the worker
started next runs the redelivery normally. Run as `celery -A crash_before_dispatch worker` with this folder
on PYTHONPATH."""

from __future__ import annotations

import os
import signal

import tasks.minute
from tasks import app

__all__ = ["app"]

_queues = tasks.minute.live_process_queues


def _die_once_before_dispatch(*args, **kwargs):
    marker = os.environ["OPTASK_TEST_CRASH_MARKER"]
    if not os.path.exists(marker):
        with open(marker, "x"):
            pass
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return _queues(*args, **kwargs)


tasks.minute.live_process_queues = _die_once_before_dispatch
