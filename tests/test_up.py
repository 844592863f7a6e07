"""`optask up`: the whole stack in one command, Flower behind auth, a line per minute, clean Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from optask.services import free_port


def get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_up_runs_the_stack_and_stops_cleanly(isolated_settings, redis_url):
    port = free_port()
    env = {**os.environ, "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": "ops:s3cret-pw", "OPTASK_INDICES": "NIFTY,SENSEX",
           "OPTASK_STRIKES_AROUND_ATM": "3", "PROCESSING_MAX_WORKERS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "optask.cli", "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "indices" in line and "legs" in line:
                break
        out = "".join(lines)
        assert "2/2 indices" in out, out
        assert f"http://127.0.0.1:{port}" in out and "s3cret-pw" not in out
        # Flower: behind auth, tasks and per-index queues visible
        for _ in range(50):
            code, _ = get(f"http://127.0.0.1:{port}/api/workers")
            if code in (401, 200):
                break
            time.sleep(0.2)
        assert code == 401
        workers = {}
        for _ in range(50):
            code, body = get(f"http://127.0.0.1:{port}/api/workers?refresh=1", "ops:s3cret-pw")
            workers = json.loads(body or b"{}") if code == 200 else {}
            if workers and any(w.get("active_queues") for w in workers.values()):
                break
            time.sleep(0.3)
        queues = {q["name"] for w in workers.values() for q in (w.get("active_queues") or [])}
        assert {"process.NIFTY", "process.SENSEX", "optask"} <= queues
        code, body = get(f"http://127.0.0.1:{port}/api/tasks", "ops:s3cret-pw")
        names = {t.get("name") for t in json.loads(body).values()}
        assert "tasks.process_index" in names
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, rest
    assert "Stopped." in rest
