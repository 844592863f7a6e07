"""InfluxDB sink against a real VictoriaMetrics (influxdb-client's /api/v2/write), with the disk spool."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from optask.core.calendar import MarketCalendar
from optask.infra.procutil import free_port
from optask.pipeline import process_snapshot
from optask.providers.simulated import SimulatedProvider
from optask.storage.influx import LEG_FIELDS, LEG_TAGS, InfluxSink, to_line_protocol

DAY = dt.date(2026, 11, 23)
MINUTES = [m.to_pydatetime() for m in MarketCalendar().session_minutes(DAY)]


def minute(i: int, index="NIFTY"):
    return process_snapshot(SimulatedProvider(strikes_around_atm=3).snapshot(index, MINUTES[i]), 0.065, 0.0)


def sink(url, tmp_path):
    return InfluxSink(url, "optask", "options", "secret-token", tmp_path / "spool")


def ltp_points(vm, index):
    series = vm.export(f'{{__name__="option_leg_ltp",index="{index}"}}')
    return {(s["metric"]["strike"], s["metric"]["side"], s["metric"]["expiry"], t // 1000): v
            for s in series for v, t in zip(s["values"], s["timestamps"], strict=True)}


def test_line_protocol_shape():
    t = pa.table({"ts": pa.array([MINUTES[0]] * 2, pa.timestamp("ns", tz="UTC")), "index": ["NI FTY", "X"],
                  "expiry": pa.array([DAY, DAY], pa.date32()), "strike": [24500.0, 12.5], "side": ["CE", "PE"],
                  "ltp": [10.5, float("nan")], "oi": pa.array([7, None], pa.int64())})
    lines = to_line_protocol(t, "option_leg", LEG_TAGS, LEG_FIELDS).decode().splitlines()
    secs = int(MINUTES[0].timestamp())
    assert lines == [f"option_leg,index=NI\\ FTY,expiry=2026-11-23,strike=24500,side=CE ltp=10.5,oi=7i {secs}"]


def test_minute_lands_in_victoria_metrics(victoria_metrics, tmp_path):
    m = minute(0, "BANKEX")
    s = sink(victoria_metrics.url, tmp_path)
    assert s.write_minute(m.legs, m.summary)
    got = ltp_points(victoria_metrics, "BANKEX")
    assert len(got) == m.legs.num_rows
    row = m.legs.to_pylist()[0]
    key = (f"{row['strike']:g}", row["side"], row["expiry"].isoformat(), int(MINUTES[0].timestamp()))
    assert got[key] == row["ltp"]
    summ = victoria_metrics.export('{__name__="chain_summary_max_pain",index="BANKEX"}')
    assert sum(len(x["values"]) for x in summ) == m.summary.num_rows
    assert "secret-token" not in repr(s)


def test_outage_spools_then_replays_in_order(victoria_metrics, tmp_path):
    down = sink(f"http://127.0.0.1:{free_port()}", tmp_path)
    m1, m2 = minute(1, "FINNIFTY"), minute(2, "FINNIFTY")
    assert not down.write_minute(m1.legs, m1.summary)
    assert not down.write_minute(m2.legs, m2.summary)
    assert down.spool_size()["files"] == 2 and down.spool_size()["bytes"] > 0
    up = sink(victoria_metrics.url, tmp_path)  # InfluxDB answers again: the next write flushes the spool first
    m3 = minute(3, "FINNIFTY")
    assert up.write_minute(m3.legs, m3.summary)
    assert up.spool_size() == {"files": 0, "bytes": 0}
    got = ltp_points(victoria_metrics, "FINNIFTY")
    assert len(got) == m1.legs.num_rows + m2.legs.num_rows + m3.legs.num_rows
    stamps = sorted({k[3] for k in got})
    assert stamps == [int(MINUTES[i].timestamp()) for i in (1, 2, 3)]


def test_disabled_without_url():
    from optask.core.config import load_settings

    assert InfluxSink.from_settings(load_settings()) is None


def test_workers_replaying_one_spool_at_once_send_each_batch_once(victoria_metrics, tmp_path):
    """Two pool processes flush when InfluxDB returns: each batch is claimed by a rename, so none is sent twice
    (a store without deduplication, like VictoriaMetrics, would count it twice). A claim left by a dead
    process is taken back."""
    import os
    import subprocess
    import sys

    down = sink(f"http://127.0.0.1:{free_port()}", tmp_path)
    minutes = [minute(i, "MIDCPNIFTY") for i in range(10, 22)]
    for m in minutes:
        assert not down.write_minute(m.legs, m.summary)
    dead = down.spooled()[-1]
    os.rename(dead, dead.with_name(f"{dead.name}.sending-{2 ** 22 + 1}"))  # claimed by a pid that does not exist
    code = ("import sys; from optask.storage.influx import InfluxSink; from pathlib import Path; "
            "s = InfluxSink(sys.argv[1], 'optask', 'options', 't', Path(sys.argv[2])); print(s.flush_spool())")
    procs = [subprocess.Popen([sys.executable, "-c", code, victoria_metrics.url, str(tmp_path / "spool")],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    sent = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(sent) == len(minutes) and down.spool_size()["files"] == 0, sent
    series = victoria_metrics.export('{__name__="option_leg_ltp",index="MIDCPNIFTY"}')
    assert sum(len(s["values"]) for s in series) == sum(m.legs.num_rows for m in minutes)
