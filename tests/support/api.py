"""A real `optask serve` for the API tests: its own Redis on a free port, the short session of tests/api_session.py
stored through the real pipeline, a token, and as many servers over the same stores as a test asks for."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pandas as pd

from optask.infra.procutil import free_port
from optask.infra.redis_server import RedisServer
from support import wait_until

ROOT = Path(__file__).resolve().parents[2]
SESSION = ROOT / "tests" / "api_session.py"
OPTASK = [sys.executable, "-m", "optask.cli"]
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


class Api:
    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.data = tmp / "data"
        self.env = {**os.environ, "BASE_DATA_DIR": str(self.data), "REDIS_URL": redis_url,
                    "OPTASK_INDICES": "NIFTY,BANKNIFTY", "OPTASK_PROVIDER": "simulated", "INFLUXDB_URL": "",
                    "PYTHONPATH": str(ROOT)}
        for var in ("CSV_DATA_ROOT", "JSON_SNAPSHOTS_ROOT", "REDIS_HOST"):
            self.env.pop(var, None)
        self.servers: list[subprocess.Popen] = []

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, env={**self.env, **env}, capture_output=True, text=True, timeout=300, cwd=ROOT)

    def session(self, *args: str) -> None:
        out = self.run(sys.executable, str(SESSION), *args)
        assert out.returncode == 0, out.stderr[-3000:]

    def token(self, name: str) -> str:
        out = self.run(*OPTASK, "api", "token", "create", name)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def serve(self, **env: str) -> str:
        port = free_port()
        log = (self.data.parent / f"serve-{port}.log").open("w")
        proc = subprocess.Popen([*OPTASK, "serve", "--port", str(port)], env={**self.env, **env}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.log = log.name
        self.servers.append(proc)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert proc.poll() is None, Path(proc.log).read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 30, every=0.2, what="optask serve answering /healthz")
        return url

    def stop(self, i: int, timeout: float = 15) -> int:
        """SIGTERM, as systemd and docker stop it: the exit status."""
        self.servers[i].terminate()
        return self.servers[i].wait(timeout)

    def server_log(self, i: int) -> str:
        return Path(self.servers[i].log).read_text()

    def parquet(self, table: str, index: str) -> pd.DataFrame:
        """The table as any reader sees it, minute files winning over day.parquet (the store's documented rule)."""
        parts = []
        for d in sorted((self.data / "parquet" / table / f"index={index}").glob("date=*")):
            day_file = d / "day.parquet"
            minutes = [pd.read_parquet(p) for p in sorted(d.glob("minute-*.parquet"))]
            if day_file.exists():
                whole = pd.read_parquet(day_file)
                taken = set(pd.concat(minutes)["ts"]) if minutes else set()
                parts.append(whole[~whole["ts"].isin(taken)])
            parts.extend(minutes)
        df = pd.concat(parts, ignore_index=True)
        keys = ["ts", "expiry", "strike", "side"] if table == "legs" else ["ts", "expiry"]
        return df.sort_values(keys).reset_index(drop=True)


class Listener:
    """An SSE subscriber in a thread: the frames it received, parsed, as they come; `ended` once the server ends
    the response (an `event: close` frame, when one came, is among the events)."""

    def __init__(self, url: str, headers: dict, **params) -> None:
        self.events: list[dict] = []
        self.frames: list[str] = []
        self.open = threading.Event()
        self.ended = threading.Event()
        self.stop = False
        self.status: int | None = None
        self.refusal = ""
        self.thread = threading.Thread(target=self._run, args=(url, headers, params), daemon=True)
        self.thread.start()
        assert self.open.wait(10), "the stream did not open"
        assert self.status == 200, f"the stream was refused: {self.status} {self.refusal}"

    def _run(self, url, headers, params) -> None:
        try:
            with httpx.stream("GET", f"{url}/v1/stream", params=params, headers=headers, timeout=60) as r:
                self.status = r.status_code
                if r.status_code != 200:
                    self.refusal = r.read().decode()
                    return
                assert r.headers["content-type"].startswith("text/event-stream")
                assert r.headers["x-accel-buffering"] == "no"
                self.open.set()
                self._read(r)
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()
            self.open.set()

    def _read(self, r) -> None:
        frame: dict = {}
        for line in r.iter_lines():
            if self.stop:
                return
            if not line:
                if "data" in frame:
                    self.frames.append(frame.get("event", "message"))
                    self.events.append({**orjson.loads(frame["data"]), "_id": frame.get("id"),
                                        "_event": frame.get("event"), "_at": time.time()})
                frame = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                frame[key] = value

    def wait_for(self, n: int, timeout: float = 60) -> list[dict]:
        wait_until(lambda: len(self.events) >= n, timeout, what=f"{n} events (got {len(self.events)})")
        return self.events

    def close(self) -> None:
        self.stop = True


def served(tmp: Path, **env: str):
    """A module's API: its own Redis, the short session stored, a token, `optask serve` with `env`; on teardown
    each server is stopped with SIGTERM, as systemd and docker stop it, and must exit 0."""
    redis = RedisServer(tmp / "redis").start()
    a = Api(tmp, redis.url)
    a.redis = redis
    a.session("build")
    a.tok = a.token("tests")
    a.url = a.serve(API_RATE_LIMIT="100000", **env)
    a.h = {"Authorization": f"Bearer {a.tok}"}
    yield a
    for i in range(len(a.servers)):
        assert a.stop(i) == 0, a.server_log(i)
    redis.stop()


def get(api: Api, path: str, headers: dict | None = None, **params) -> httpx.Response:
    return httpx.get(f"{api.url}{path}", params=params, headers={**api.h, **(headers or {})}, timeout=60)


