"""`optask demo` writes only under its own folder, whatever the operator's environment says."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        Recorder.requests.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_demo_ignores_the_operators_csv_raw_and_influx_settings(isolated_settings, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real_csv, real_raw = tmp_path / "real-csv", tmp_path / "real-raw"
    env = {**os.environ, "CSV_DATA_ROOT": str(real_csv), "JSON_SNAPSHOTS_ROOT": str(real_raw),
           "INFLUXDB_URL": f"http://127.0.0.1:{server.server_address[1]}", "INFLUXDB_TOKEN": "t",
           "OPTASK_STRIKES_AROUND_ATM": "2", "PROCESSING_MAX_WORKERS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "optask.cli", "demo", "--minutes", "2", "--indices", "NIFTY",
                               "--speed", "600"], env=env, capture_output=True, text=True, timeout=240)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert files_under(real_csv) == [] and files_under(real_raw) == [], "demo wrote into the operator's data"
    assert Recorder.requests == [], "demo wrote to the operator's InfluxDB"
    demo = isolated_settings / "demo"
    assert len(list((demo / "csv_data" / "NIFTY").rglob("legs.csv"))) == 1
    assert len(list((demo / "raw_snapshots" / "NIFTY").rglob("*.json.gz"))) == 2
    assert "stored / missed" in proc.stdout and "2 / 0" in proc.stdout


def test_demo_serve_keeps_the_page_up_on_what_it_collected_until_sigterm(isolated_settings, tmp_path):
    import signal
    import time

    import httpx
    import psutil

    from optask.infra.procutil import free_port

    port = free_port()
    env = {**os.environ, "API_PORT": str(port), "PROCESSING_MAX_WORKERS": "1", "OPTASK_STRIKES_AROUND_ATM": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "optask.cli", "demo", "--minutes", "2", "--indices", "NIFTY",
                             "--speed", "600", "--serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.time() + 240
    while not any(ln.startswith("Page:") for ln in lines) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    page = next((ln for ln in lines if ln.startswith("Page:")), None)
    assert page is not None, "".join(lines)
    assert f"http://127.0.0.1:{port}/" in page
    token = page.split("token (made for this demo): ")[1].strip()
    family = psutil.Process(proc.pid)
    for _ in range(100):
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/chain/NIFTY", params={"atm_window": 1},
                          headers={"Authorization": f"Bearer {token}"})
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    assert r.status_code == 200 and r.json()["index"] == "NIFTY", r.text
    assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    children = family.children(recursive=True)
    assert any("redis-server" in " ".join(c.cmdline()) for c in children)
    proc.send_signal(signal.SIGTERM)  # as systemd or docker stops it
    assert proc.wait(60) == 0, "".join(lines)
    assert psutil.wait_procs(children, timeout=15)[1] == [], "a child outlived the demo"
