"""Replay from the raw archive, the seed's MockDataGenerator, and `optask collect`."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from optask.core.calendar import MarketCalendar
from optask.providers.base import TemporaryProviderError
from optask.providers.replay import ReplayProvider
from optask.providers.simulated import SimulatedProvider
from optask.storage.archive import write_raw
from optask.testkit.mock import MockDataGenerator

DAY = dt.date(2026, 11, 23)
MINUTES = [m.to_pydatetime() for m in MarketCalendar().session_minutes(DAY)]


def archive_minutes(root, n=3, index="NIFTY"):
    sim = SimulatedProvider()
    snaps = [sim.snapshot(index, ts) for ts in MINUTES[:n]]
    for s in snaps:
        write_raw(root, index, s.ts, s.provider, s.raw)
    return snaps


def test_replay_reproduces_archived_minutes(tmp_path):
    snaps = archive_minutes(tmp_path)
    replay = ReplayProvider(tmp_path)
    got = list(replay.history("NIFTY", DAY))
    assert [g.ts for g in got] == [s.ts for s in snaps]
    for g, s in zip(got, snaps, strict=True):
        assert g.raw == s.raw
        assert g.table.drop_columns(["source"]).equals(s.table.drop_columns(["source"]))
        assert set(g.table["source"].to_pylist()) == {"replay"}
    assert replay.universe("NIFTY", DAY).expiries


def test_replay_range_speed_and_missing(tmp_path):
    archive_minutes(tmp_path, n=3)
    fast = list(ReplayProvider(tmp_path).history("NIFTY", DAY, MINUTES[1:3]))
    assert [s.ts for s in fast] == MINUTES[1:3]
    start = time.perf_counter()
    list(ReplayProvider(tmp_path, speed=120).history("NIFTY", DAY))  # 2 gaps of 60 s at 120x = 1 s
    assert time.perf_counter() - start >= 0.9
    with pytest.raises(TemporaryProviderError):
        ReplayProvider(tmp_path).snapshot("NIFTY", MINUTES[10])


def test_replay_of_a_truncated_payload_keeps_going(tmp_path):
    snaps = archive_minutes(tmp_path, n=1)
    write_raw(tmp_path, "NIFTY", MINUTES[1], "simulated", snaps[0].raw[: len(snaps[0].raw) // 2])
    got = ReplayProvider(tmp_path).snapshot("NIFTY", MINUTES[1])
    assert got.table.num_rows == 0 and got.issues == {"malformed_payload": 1}


def test_mock_data_generator_seed_api():
    gen = MockDataGenerator(day=DAY)
    leg = gen.generate_option_leg()
    assert leg.index == "NIFTY" and leg.side in ("CE", "PE") and leg.strike > 0 and leg.ltp > 0
    assert gen.generate_option_leg() != leg
    chain = gen.generate_option_chain("NIFTY", "this_week")
    assert len(chain) > 40 and {c.expiry_kind for c in chain} == {"this_week"}
    bank = gen.generate_option_chain("BANKNIFTY", "this_week")  # no weeklies: the monthly, under this label
    assert bank and len({c.expiry for c in bank}) == 1
    result = MockDataGenerator.run_performance_test(lambda: sum(range(100)), iterations=200)
    assert result["iterations"] == 200 and result["iterations_per_second"] > 0


def optask(*args, env=None):
    return subprocess.run([sys.executable, "-m", "optask.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_collect_prints_a_plausible_chain_and_writes_it(tmp_path):
    out = tmp_path / "nifty.parquet"
    proc = optask("collect", "--index", "NIFTY", "--at", "2026-11-23T10:00+05:30", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "NIFTY at 2026-11-23 10:00 IST from simulated" in proc.stdout and "legs in" in proc.stdout
    table = pq.read_table(out)
    assert table.num_rows > 100 and set(table["side"].to_pylist()) == {"CE", "PE"}
    csv_out = tmp_path / "n.csv"
    assert optask("collect", "--index", "SENSEX", "--at", "2026-11-23T10:00+05:30", "--out", str(csv_out)).returncode == 0
    assert csv_out.read_text().splitlines()[1].startswith('"2026-11-23T10:00:00+05:30","SENSEX"')


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--index", "FOO"], "unknown index"), (["--index", "NIFTY", "--at", "soon"], "cannot parse"),
     (["--index", "NIFTY", "--at", "2026-11-22T10:00+05:30"], "outside a market session"),
     (["--index", "NIFTY", "--at", "2026-02-30T10:00+05:30"], "cannot parse"),
     (["--index", "NIFTY", "--out", "x.xlsx"], ".csv or .parquet"),
     (["--index", "NIFTY", "--provider", "yahoo"], "unknown provider")],
)
def test_collect_rejects_bad_arguments(args, message):
    proc = optask("collect", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
