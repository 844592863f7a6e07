"""`optask backfill` from the shell: restores deleted minutes with or without a worker, a second run does
nothing, and requests it cannot serve are refused with nothing enqueued."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis
from test_verify import DAY, _day_file, build, session  # noqa: F401 - the fixture is used by name

from optask.core.config import load_settings


def backfill(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optask.cli", "backfill", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "160"})


def delete_minutes(settings, first: int, n: int) -> list[str]:
    """Take n minutes out of NIFTY's Parquet legs (the ledger still says they are stored)."""
    path = _day_file(settings)
    t = pq.read_table(path)
    gone = pc.unique(t["ts"]).slice(first, n)
    pq.write_table(t.filter(pc.invert(pc.is_in(t["ts"], value_set=gone))), path)
    return [m.isoformat() for m in gone.to_pylist()]


def parquet_minutes(settings) -> int:
    from optask.storage.parquet import ParquetStore

    return len(ParquetStore(settings.data.parquet_root).minutes("legs", "NIFTY", DAY))


@pytest.mark.parametrize("with_worker", [False, True], ids=["no worker: runs here", "a maintenance worker"])
def test_only_missing_wait_restores_deleted_minutes_then_does_nothing(session, redis_url, isolated_settings,  # noqa: F811
                                                                      with_worker):
    from optask.ops.stack import Stack

    build(session, redis_url)
    delete_minutes(session, 4, 10)
    assert parquet_minutes(session) == 20
    stack = Stack(load_settings(), redis_url, isolated_settings)
    try:
        if with_worker:
            from optask.infra.celery_client import celery_client
            from optask.ops.stack import wait_for_workers

            stack.start_worker("worker-maintenance", concurrency=1, queues=["maintenance"])
            client = celery_client(load_settings(), redis_url)
            wait_for_workers(client)
            client.close()
        first = backfill("--index", "NIFTY", "--from", DAY.isoformat(), "--to", DAY.isoformat(), "--only-missing",
                         "--wait")
        assert first.returncode == 0, first.stdout + first.stderr
        if with_worker:
            assert "no worker consumes" not in first.stdout
        else:
            assert "no worker consumes the maintenance queue" in first.stdout and "running the backfill in this process" in first.stdout
        assert "stored 10 minutes" in first.stdout and "PASS" in first.stdout
        assert parquet_minutes(session) == 30
        assert [p.name for p in _day_file(session).parent.iterdir()] == ["day.parquet"]  # compacted again
        second = backfill("--index", "NIFTY", "--from", DAY.isoformat(), "--to", DAY.isoformat(), "--only-missing",
                          "--wait")
        assert second.returncode == 0 and "nothing to do" in second.stdout, second.stdout + second.stderr
        assert redis.Redis.from_url(redis_url).llen("maintenance") == 0
    finally:
        stack.stop()


def test_every_minute_backfill_skips_what_the_stores_hold(session, redis_url):  # noqa: F811
    build(session, redis_url)
    delete_minutes(session, 0, 3)
    out = backfill("--index", "NIFTY,SENSEX", "--from", DAY.isoformat(), "--to", DAY.isoformat(), "--here")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stored 3 minutes" in out.stdout  # 60 asked, 57 already everywhere: only 3 fetched and written


@pytest.mark.parametrize("args, message", [
    (["--from", "2099-01-05", "--to", "2099-01-05"], "is in the future"),
    (["--from", "2026-11-24", "--to", "2026-11-24"], "no market session"),
    (["--from", "2026-11-21", "--to", "2026-11-22"], "no market session"),
    (["--from", "2026-11-20", "--to", "2026-11-19"], "is before --from"),
    (["--from", "yesterday", "--to", "2026-11-19"], "is not a date"),
])
def test_requests_it_cannot_serve_are_refused_with_nothing_enqueued(session, redis_url, args, message):  # noqa: F811
    out = backfill("--index", "NIFTY", *args)
    assert out.returncode == 2 and message in out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert redis.Redis.from_url(redis_url).llen("maintenance") == 0


def test_unknown_index_is_refused(session, redis_url):  # noqa: F811
    out = backfill("--index", "NIFTI", "--from", DAY.isoformat(), "--to", DAY.isoformat())
    assert out.returncode == 2 and "unknown index NIFTI" in out.stderr
