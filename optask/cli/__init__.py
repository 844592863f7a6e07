"""The `optask` command: one verb per job; each verb parses, calls one library function, renders.

One module per group of verbs (`system`, `data`, `health`, `run`, `drills`, `api`, `docs`); importing this
package registers them all on `app`. Heavy imports live inside the verbs so `optask --help` stays fast.
"""

from __future__ import annotations

import sys

from optask.cli import api, data, docs, drills, health, run, system  # noqa: F401 - each registers its verbs on `app`
from optask.cli.app import app, err
from optask.cli.health import run_health
from optask.core.config import SettingsError

__all__ = ["app", "main", "run_health"]


def main() -> None:
    try:
        app()
    except SettingsError as exc:  # settings read lazily inside a verb
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)

