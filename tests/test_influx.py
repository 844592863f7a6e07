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
    assert up.spool_size() == {"files": 0, "bytes": 0, "dead": 0}
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


class _RejectingInflux:
    """An HTTP server answering InfluxDB 2's write API as InfluxDB does for a malformed batch: 400 and its error JSON."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b'{"code":"invalid","message":"unable to parse \'garbage\': missing fields"}'
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_garbage_batch_in_the_spool_is_a_dead_letter_and_later_points_still_arrive(victoria_metrics, tmp_path):
    """Before: flush_spool stopped at the first batch that failed, so one unreadable file blocked the spool forever."""
    down = sink(f"http://127.0.0.1:{free_port()}", tmp_path)
    m1, m2 = minute(30, "SENSEX"), minute(31, "SENSEX")
    assert not down.write_minute(m1.legs, m1.summary)
    first = down.spooled()[0]
    garbage = first.with_name("00000000000000000001-1.lp.gz")  # sorts first: replayed before the good batch
    garbage.write_bytes(b"not gzip at all")
    up = sink(victoria_metrics.url, tmp_path)
    assert up.write_minute(m2.legs, m2.summary)
    assert up.spool_size() == {"files": 0, "bytes": 0, "dead": 1}
    got = ltp_points(victoria_metrics, "SENSEX")
    assert len(got) == m1.legs.num_rows + m2.legs.num_rows
    reason = (up.dead_dir / (garbage.name + ".reason.json")).read_text()
    assert "unreadable" in reason and (up.dead_dir / garbage.name).read_bytes() == b"not gzip at all"


def test_a_batch_influx_rejects_with_400_is_a_dead_letter_not_spooled_forever(tmp_path):
    import gzip

    rejecting = _RejectingInflux()
    try:
        s = sink(rejecting.url, tmp_path)
        m = minute(40, "SENSEX")
        assert not s.write_minute(m.legs, m.summary)
        assert s.spool_size()["files"] == 0 and s.spool_size()["dead"] == 1
        letter = s.dead_letters()[0]
        assert gzip.decompress(letter.read_bytes()).startswith(b"option_leg,index=SENSEX")  # the data is kept
        assert "400" in letter.with_name(letter.name + ".reason.json").read_text()
    finally:
        rejecting.server.shutdown()


def test_5xx_and_network_faults_still_spool(tmp_path):
    down = sink(f"http://127.0.0.1:{free_port()}", tmp_path)
    m = minute(41, "SENSEX")
    assert not down.write_minute(m.legs, m.summary)
    assert down.spool_size()["files"] == 1 and down.spool_size()["dead"] == 0


def test_a_claim_from_another_machine_is_taken_back_by_age(victoria_metrics, tmp_path):
    """A replayer in another container died holding a claim: its PID means nothing here, the claim's age does.
    (SENSEX at a minute of its own: the pipeline tests count NIFTY's and BANKNIFTY's points in the same server.)"""
    import os

    from optask.storage import influx

    down = sink(f"http://127.0.0.1:{free_port()}", tmp_path)
    m = minute(42, "SENSEX")
    assert not down.write_minute(m.legs, m.summary)
    batch = down.spooled()[0]
    claimed = batch.with_name(f"{batch.name}.sending-other-container-1")  # PID 1 lives here: a PID check would wait
    os.rename(batch, claimed)
    up = sink(victoria_metrics.url, tmp_path)
    assert up.flush_spool() == 0 and claimed.exists()  # fresh: its owner may still be sending it
    old = claimed.stat().st_mtime - influx.CLAIM_STALE_S - 1
    os.utime(claimed, (old, old))
    assert up.flush_spool() == 1 and not claimed.exists()
    stamp = int(MINUTES[42].timestamp())
    assert len([k for k in ltp_points(victoria_metrics, "SENSEX") if k[3] == stamp]) == m.legs.num_rows
