"""A month unattended: Redis keeps only LEDGER_RETENTION_DAYS of per-day keys, and every key optask writes
belongs to a bounded family, after several days played through the real pipeline and end of day."""

from __future__ import annotations

import datetime as dt
import json

import redis

from optask.core.config import get_settings
from optask.infra.retention import FAMILIES, day_of, family_of, prune, unbounded_keys

DAYS = [dt.date(2026, 11, 2) + dt.timedelta(days=i) for i in range(5)]  # Monday to Friday, short sessions


def play_days(data, monkeypatch, client, keep_days: int) -> tuple[list[dict], list[int]]:
    """Each day: a 4-minute session of two indices collected and stored minute by minute, read by an
    incremental reader, then closed by end of day, with the clock on that day (as a replayed month runs).
    Returns end of day's outputs and Redis's key count after each day."""
    from optask.core.calendar import get_calendar
    from optask.jobs.eod import end_of_day
    from optask.jobs.minute import mark_dispatched, plan_minute, store_minute
    from optask.storage.csv import CsvStore

    data.mkdir(parents=True, exist_ok=True)
    (data / "calendar_overrides.json").write_text(json.dumps(
        {"sessions": [{"date": d.isoformat(), "open": "18:00", "close": "18:04"} for d in DAYS]}))
    monkeypatch.setenv("OPTASK_INDICES", "NIFTY,SENSEX")
    monkeypatch.setenv("OPTASK_STRIKES_AROUND_ATM", "2")
    monkeypatch.setenv("LEDGER_RETENTION_DAYS", str(keep_days))
    outs, sizes = [], []
    for day in DAYS:
        monkeypatch.setenv("OPTASK_SIMULATED_SESSION_DAY", day.isoformat())
        get_settings.cache_clear()
        settings = get_settings()
        for minute in get_calendar(settings.data.calendar_overrides).session_minutes(day):
            plan = plan_minute(minute.isoformat(), settings)
            for index in plan.indices:
                store_minute(index, plan.ts, settings)
            mark_dispatched(plan.ts, settings)
        reader = CsvStore(settings.data.csv_root, client)
        assert reader.read_new("retention-test", "summary", "NIFTY", day).num_rows > 0
        assert reader.read_new("retention-test", "summary", "NIFTY", day).num_rows == 0  # its cursor moved
        outs.append(end_of_day(day.isoformat(), settings))
        sizes.append(client.dbsize() - len(list(client.scan_iter("optask:clock:*"))))  # a clock per day here, by TTL
    return outs, sizes


def per_day_keys(client) -> dict[dt.date, list[str]]:
    out: dict[dt.date, list[str]] = {}
    for raw in client.scan_iter("optask:*"):
        key = raw.decode()
        if family_of(key).by_day and (day := day_of(key)) is not None:
            out.setdefault(day, []).append(key)
    return out


def test_after_five_days_redis_holds_only_the_retained_days_and_every_key_is_bounded(
        isolated_settings, redis_url, monkeypatch):
    """And the key count is flat once the window is full: days 3, 4 and 5 each leave as many keys as day 2."""
    client = redis.Redis.from_url(redis_url)
    outs, sizes = play_days(isolated_settings, monkeypatch, client, keep_days=2)
    assert all(o["after"]["status"] == "PASS" for o in outs), outs
    assert unbounded_keys(client) == []
    kept = per_day_keys(client)
    assert sorted(kept) == DAYS[-2:], {d: v[:3] for d, v in kept.items()}  # Thursday and Friday, nothing older
    families = {family_of(k).pattern for keys in kept.values() for k in keys}
    assert {"stored:*:*", "cursor:*", "claim:*"} <= families, families
    assert sorted(f.decode() for f in client.hkeys("optask:eod")) == [d.isoformat() for d in DAYS[-2:]]
    assert sum(o["redis_retention"]["keys"] for o in outs) > 0
    # the ledger's days also expire by themselves, should end of day stop running
    assert 0 < client.ttl(f"optask:stored:NIFTY:{DAYS[-1]}") <= 3 * 86400


    assert sizes[1] > sizes[0] and sizes[1] == sizes[2] == sizes[3] == sizes[4], sizes


def test_every_family_is_documented_in_the_docs():
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "reference" / "redis-keys.md").read_text()
    missing = [f.pattern for f in FAMILIES if f"`{f.pattern}`" not in page]
    assert not missing, f"docs/reference/redis-keys.md lacks {missing}: run `make docs`"


def test_prune_keeps_today_and_the_days_before_it_and_nothing_else(redis_url):
    client = redis.Redis.from_url(redis_url)
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        client.hset(f"optask:stored:NIFTY:{day}", "x", 1)
        client.hset("optask:eod", day, "{}")
    client.hset("optask:metrics:stored", "NIFTY", 3)  # configured: never pruned
    assert prune(client, dt.date(2026, 11, 3), keep_days=2) == {"keys": 1, "fields": 1}
    assert sorted(k.decode() for k in client.scan_iter("optask:stored:*")) == [
        "optask:stored:NIFTY:2026-11-02", "optask:stored:NIFTY:2026-11-03"]
    assert client.hget("optask:metrics:stored", "NIFTY") == b"3"
    assert prune(client, dt.date(2026, 11, 3), keep_days=2) == {"keys": 0, "fields": 0}  # idempotent
