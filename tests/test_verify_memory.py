"""End of day in bounded memory: verification holds one index's tables of each store at a time, so its peak
does not grow with the number of indices (the soak of 2026-11-25 saw 949 MB for a full-universe day when every
index's whole-day tables were read at once)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
import redis

from optask.core.config import get_settings

DAY = dt.date(2026, 11, 23)
PROBE = """
import json, sys, datetime as dt
from optask.core.config import get_settings
from optask.quality.verify import verify_day

def hwm():
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))

settings = get_settings()
base = hwm()
r = verify_day(dt.date(2026, 11, 23), sys.argv[1].split(","), settings)
print(json.dumps({"base": base, "peak": hwm(), "score": r.summary.data_quality_score,
                  "rows": sum(sum(i.legs_per_minute.values()) for i in r.indices.values())}))
"""


def probe(env: dict, indices: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, indices], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_verification_peak_memory_does_not_grow_with_the_indices(isolated_settings, redis_url, monkeypatch):
    import os

    from optask.core.calendar import MarketCalendar
    from optask.jobs.batch import store_minutes
    from optask.storage.sinks import compact_day

    monkeypatch.setenv("OPTASK_INDICES", "NIFTY,SENSEX,BANKEX")
    monkeypatch.setenv("OPTASK_STRIKES_AROUND_ATM", "50")  # the full universe's width: ~240,000 legs a day
    get_settings.cache_clear()
    settings = get_settings()
    minutes = [m.isoformat() for m in MarketCalendar().session_minutes(DAY)]
    client = redis.Redis.from_url(redis_url)
    for index in settings.market.indices:
        store_minutes(index, minutes, settings=settings)
        compact_day(index, DAY, settings, client)
    one, three = probe(dict(os.environ), "NIFTY"), probe(dict(os.environ), "NIFTY,SENSEX,BANKEX")
    assert one["score"] == three["score"] == 100.0
    assert three["rows"] > 2.5 * one["rows"] > 500_000
    # reading every index's whole-day tables at once (four threads) took ~150 MB more per index; one index of
    # each store at a time, the peak is that of one index
    assert three["peak"] - one["peak"] < 40, (one, three)
    assert three["peak"] - three["base"] < 200, three  # about 170 MB over the imports' 145 on this machine
