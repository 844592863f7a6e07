"""Market calendar: exchange sessions, Muhurat, and the operator override file."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from optask.core.calendar import CalendarError, MarketCalendar, get_calendar
from optask.core.timeutils import IST, UTC


def test_republic_day_is_closed():
    cal = MarketCalendar()
    assert not cal.is_trading_day(dt.date(2026, 1, 26))
    assert cal.session(dt.date(2026, 1, 26)) is None
    assert len(cal.session_minutes(dt.date(2026, 1, 26))) == 0


def test_normal_weekday_has_375_minutes_from_0915():
    cal = MarketCalendar()
    minutes = cal.session_minutes(dt.date(2026, 11, 23))
    assert len(minutes) == 375
    assert minutes[0] == dt.datetime(2026, 11, 23, 9, 15, tzinfo=IST)
    assert minutes[-1] == dt.datetime(2026, 11, 23, 15, 29, tzinfo=IST)
    assert str(minutes.tz) == "UTC"
    assert cal.in_session(dt.datetime(2026, 11, 23, 9, 15, tzinfo=IST))
    assert not cal.in_session(dt.datetime(2026, 11, 23, 15, 30, tzinfo=IST))


def test_weekend_closed():
    assert not MarketCalendar().is_trading_day(dt.date(2026, 11, 22))


def test_muhurat_2025():
    s = MarketCalendar().session(dt.date(2025, 10, 21))
    assert (s.open.time(), s.close.time()) == (dt.time(13, 45), dt.time(14, 45))
    assert s.special and s.minutes == 60
    assert len(MarketCalendar().session_minutes(dt.date(2025, 10, 21))) == 60


def write_overrides(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "holidays": ["2026-12-02"],
        "sessions": [{"date": "2026-11-08", "open": "18:00", "close": "19:15"}],
    }))


def test_override_adds_sunday_session_and_holiday(isolated_settings):
    path = isolated_settings / "calendar_overrides.json"
    write_overrides(path)
    cal = get_calendar()
    sunday = cal.session(dt.date(2026, 11, 8))
    assert sunday and sunday.special and sunday.minutes == 75
    assert cal.session_minutes(dt.date(2026, 11, 8))[0] == dt.datetime(2026, 11, 8, 12, 30, tzinfo=UTC)
    assert MarketCalendar().is_trading_day(dt.date(2026, 12, 2))
    assert not cal.is_trading_day(dt.date(2026, 12, 2))
    assert cal.trading_day_on_or_before(dt.date(2026, 12, 2)) == dt.date(2026, 12, 1)


def test_cli_lists_overrides(isolated_settings):
    write_overrides(isolated_settings / "calendar_overrides.json")
    proc = subprocess.run([sys.executable, "-m", "optask.cli", "calendar", "--from", "2026-11-06", "--to", "2026-12-03"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "2026-11-08" in proc.stdout and "Sun" in proc.stdout and "18:00" in proc.stdout
    assert "2026-12-01" in proc.stdout and "2026-12-02" not in proc.stdout


@pytest.mark.parametrize("args", [["--from", "2026-02-30", "--to", "2026-03-01"], ["--from", "2026-03-02", "--to", "2026-03-01"]])
def test_cli_rejects_bad_days(args):
    proc = subprocess.run([sys.executable, "-m", "optask.cli", "calendar", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--" in proc.stderr


@pytest.mark.parametrize("doc", ['{"holidays": ["tomorrow"]}', '{"sessions": [{"date": "2026-11-08", "open": "19:00", "close": "18:00"}]}', "{nope"])
def test_bad_override_file_is_named(tmp_path, doc):
    path = tmp_path / "o.json"
    path.write_text(doc)
    with pytest.raises(CalendarError) as exc:
        MarketCalendar(path)
    assert str(path) in str(exc.value)


def test_the_last_closed_session_is_one_answer_for_every_caller():
    """`optask up`, `optask collect`, the demo and health all ask this one question of the calendar."""
    cal = MarketCalendar()
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    monday = dt.date(2026, 11, 23)
    assert cal.last_closed_session(dt.datetime(2026, 11, 23, 15, 30, tzinfo=ist)) == monday  # just closed
    assert cal.last_closed_session(dt.datetime(2026, 11, 23, 15, 29, tzinfo=ist)) == dt.date(2026, 11, 20)  # open
    assert cal.last_closed_session(dt.datetime(2026, 11, 23, 8, 0, tzinfo=ist)) == dt.date(2026, 11, 20)  # before
    assert cal.last_closed_session(dt.datetime(2026, 11, 22, 12, 0, tzinfo=ist)) == dt.date(2026, 11, 20)  # Sunday


# --- the replay clock over several calendar days ------------------------------------------------------

def test_a_multi_day_replay_plays_each_session_then_its_close_then_the_next_day():
    """Fri 2026-11-20 to Wed 2026-11-25: the weekend and the NSE holiday of the 24th are days off."""
    import datetime as dt

    from optask.core.clock import AFTER_CLOSE_MINUTES, DAY_OFF_MINUTES, SessionReplayClock
    from optask.core.timeutils import IST

    cal = MarketCalendar()
    clock = SessionReplayClock(dt.date(2026, 11, 20), cal, speed=60.0, anchor=0.0, days=6)
    segs = clock.segments()
    assert [(s.day.isoformat(), s.session is not None) for s in segs] == [
        ("2026-11-20", True), ("2026-11-21", False), ("2026-11-22", False), ("2026-11-23", True),
        ("2026-11-24", False), ("2026-11-25", True)]
    assert [s.length for s in segs] == [375 + AFTER_CLOSE_MINUTES, DAY_OFF_MINUTES, DAY_OFF_MINUTES,
                                        375 + AFTER_CLOSE_MINUTES, DAY_OFF_MINUTES, 375 + AFTER_CLOSE_MINUTES]

    def at(pos: int) -> str:
        return clock._stretch_now(pos).astimezone(IST).strftime("%a %d %H:%M")

    assert at(0) == "Fri 20 09:15" and at(374) == "Fri 20 15:29" and at(375) == "Fri 20 15:30"
    assert at(375 + AFTER_CLOSE_MINUTES) == "Sat 21 12:00"
    monday = clock.position_of(dt.date(2026, 11, 23))
    assert at(monday) == "Mon 23 09:15" and at(monday - 1) == "Sun 22 12:09"
    assert at(clock.position_of(dt.date(2026, 11, 25), 374)) == "Wed 25 15:29"
    assert at(clock.total_minutes() + 30) == "Wed 25 17:00"  # the last day goes on past its close
