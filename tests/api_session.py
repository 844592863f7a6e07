"""A short simulated session stored through the real pipeline, for the API tests (run as a script, in the
environment the test gives it: its own data root and Redis).

    python tests/api_session.py build        Fri 2026-11-20 15:25-15:29 (then compacted and verified) and
                                             Mon 2026-11-23 09:15-09:26; NIFTY's 09:20 comes from a repair
    python tests/api_session.py minute HH:MM one more live minute of 2026-11-23, every index
    python tests/api_session.py minutes HH:MM N   N live minutes of 2026-11-23 from HH:MM, every index
    python tests/api_session.py repair HH:MM [DAY]  NIFTY's minute HH:MM of 2026-11-23 (or DAY) stored by a repair
                                             (not live), as in-session repair or a backfill stores it
    python tests/api_session.py compact      fold 2026-11-23 into day.parquet
"""

from __future__ import annotations

import datetime as dt
import sys

from optask.core.config import get_settings
from optask.core.timeutils import IST
from optask.jobs.batch import store_minutes
from optask.jobs.minute import store_minute
from optask.quality.verify import DayVerifier
from optask.storage.sinks import compact_day

DAY1, DAY2 = dt.date(2026, 11, 20), dt.date(2026, 11, 23)
DAY1_MINUTES = [dt.datetime.combine(DAY1, dt.time(15, m), IST) for m in range(25, 30)]
DAY2_MINUTES = [dt.datetime.combine(DAY2, dt.time(9, 15), IST) + dt.timedelta(minutes=i) for i in range(12)]
REPAIRED = DAY2_MINUTES[5]  # 09:20, NIFTY


def build() -> None:
    settings = get_settings()
    for ts in DAY1_MINUTES + DAY2_MINUTES:
        for index in settings.market.indices:
            if not (index == "NIFTY" and ts == REPAIRED):
                store_minute(index, ts.isoformat())
    store_minutes("NIFTY", [REPAIRED.isoformat()])  # what in-session repair runs
    for index in settings.market.indices:
        compact_day(index, DAY1, settings)
    verifier = DayVerifier(settings)
    verifier.save(verifier.verify(DAY1))


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "build":
        build()
    elif what in ("minute", "minutes", "repair"):
        hh, mm = (int(x) for x in sys.argv[2].split(":"))
        day = dt.date.fromisoformat(sys.argv[3]) if what == "repair" and len(sys.argv) > 3 else DAY2
        first = dt.datetime.combine(day, dt.time(hh, mm), IST)
        if what == "repair":
            store_minutes("NIFTY", [first.isoformat()])
        for i in range(int(sys.argv[3]) if what == "minutes" else 1 if what == "minute" else 0):
            for index in get_settings().market.indices:
                store_minute(index, (first + dt.timedelta(minutes=i)).isoformat())
    elif what == "compact":
        for index in get_settings().market.indices:
            compact_day(index, DAY2, get_settings())
