"""Helpers the test modules share: a test module never imports another, it imports these.

    wait_until   the one polling loop of the suite: a condition, a timeout, a message that says what never came
    api          a real `optask serve` on a free port over stores written by the real pipeline (tests/api_session.py)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 30.0, every: float = 0.05, what: str = "") -> T:
    """Call `condition` until it returns something true and return that; after `timeout` s, fail saying what never
    came (and what the condition last returned)."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'the condition'} not within {timeout} s (last: {got!r})")
        time.sleep(every)
