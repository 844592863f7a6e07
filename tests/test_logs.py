"""A month unattended: the children's logs in data/logs/ are rotated by size and count while they write."""

from __future__ import annotations

import re
import sys
import time

from optask.core.config import get_settings
from optask.ops.stack import Stack

WRITER = """
import sys, time
for i in range(200_000):
    print(f"line {i:07d} " + "x" * 80, flush=True)
    if i % 2000 == 0:
        time.sleep(0.005)
"""


def test_a_childs_log_is_rotated_by_size_and_count_and_it_keeps_writing(isolated_settings, monkeypatch):
    monkeypatch.setenv("LOG_MAX_MB", "0.5")
    monkeypatch.setenv("LOG_BACKUPS", "3")
    get_settings.cache_clear()
    stack = Stack(get_settings(), "redis://unused", isolated_settings)
    child = stack._spawn("writer", [sys.executable, "-c", WRITER])  # its stdout opened as the stack opens every log
    rotations = 0
    while child.poll() is None:
        rotations += len(stack.rotate_logs())
        time.sleep(0.02)
    assert child.returncode == 0
    rotations += len(stack.rotate_logs())
    logs = sorted(p.name for p in stack.logs.iterdir())
    assert logs == ["writer.log", "writer.log.1", "writer.log.2", "writer.log.3"], logs  # the oldest dropped
    assert rotations >= 10
    limit = 0.5 * 1024 * 1024
    kept = []
    for name in ("writer.log.3", "writer.log.2", "writer.log.1", "writer.log"):
        text = (stack.logs / name).read_bytes()
        assert b"\0" not in text  # the child appends: no hole where the file was cut
        assert len(text) < 2 * limit, (name, len(text))
        kept += [int(n) for n in re.findall(rb"^line (\d{7}) ", text, re.M)]
    assert kept == sorted(kept) and kept[-1] == 199_999  # oldest to newest, in order, up to the last line
    # copytruncate's instant between the copy and the cut loses a few lines of a child writing 100,000 a second
    # (one a second is the stack's usual rate); nothing more
    assert len(kept) / (kept[-1] - kept[0] + 1) > 0.99, "lines lost within the kept files"
